"""Durable runs: the manifest, the per-round CSV and the per-run checkpoints.

A run's ``--out`` folder holds:

* ``run.json`` (`write_manifest`): the full configuration, the alfx, JAX
  and Python versions, the start time, and whether the run finished;
* ``results.csv`` (`append_rows`): one row per dataset, strategy, seed and
  round, appended and flushed to disk (``fsync``) as each round finishes;
* ``learning_curves.png`` (`PLOT`), written by the report;
* ``checkpoints/<dataset>__<strategy>.npz`` (`save_checkpoint`): the loop
  state after the last finished round (the labelled masks and the PRNG key
  data of every seed) and the timings so far, replaced atomically (a
  temporary file and ``os.replace``) after each round's rows are on disk.

``--resume`` reads them back: a checkpoint says which rounds finished, rows
the checkpoints do not cover (a round cut off between its rows and its
checkpoint) are dropped (`rows_covered`, `keep_finished_rows`), and the run
continues from the saved state, so the resumed CSV equals an uninterrupted
run's. `prepare` readies ``--out`` for a new or a resumed run.

May import: numpy and the standard library.
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import csv
import datetime
import io
import json
import os
import platform
import re
import signal
import sys
import tempfile
from typing import Any

import numpy as np

MANIFEST = "run.json"
RESULTS = "results.csv"
CHECKPOINTS = "checkpoints"
PLOT = "learning_curves.png"


def _fsync_dir(path: str) -> None:
  """Makes a rename in ``path`` durable (best effort: not every OS can)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` all or nothing (temp file, fsync, replace).

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment.durable import write_atomic
    >>> path = os.path.join(tempfile.mkdtemp(), "x.txt")
    >>> write_atomic(path, b"hello")
    >>> open(path, "rb").read()
    b'hello'
  """
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
  try:
    # mkstemp's file is private (0600); give it an ordinary file's mode.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  _fsync_dir(folder)


def versions() -> dict[str, str]:
  """The alfx, JAX and Python versions, for the manifest.

  Example:
    >>> from alfx.experiment.durable import versions
    >>> versions()["jax"] == jax.__version__
    True
  """
  import alfx

  try:
    import jax

    jax_version = jax.__version__
  except ImportError:  # pragma: no cover - the experiment needs JAX
    jax_version = "not installed"
  return {
    "alfx": getattr(alfx, "__version__", "unknown"),
    "jax": jax_version,
    "python": platform.python_version(),
  }


def write_manifest(out: str, manifest: Mapping[str, Any]) -> None:
  """Writes ``manifest`` as ``out/run.json`` (atomically).

  Example:
    >>> import tempfile
    >>> from alfx.experiment import durable
    >>> out = tempfile.mkdtemp()
    >>> durable.write_manifest(out, durable.new_manifest({"seeds": 3}))
    >>> durable.read_manifest(out)["config"]
    {'seeds': 3}
  """
  text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
  write_atomic(os.path.join(out, MANIFEST), text.encode())


def new_manifest(config: Mapping[str, Any]) -> dict[str, Any]:
  """A manifest for a run of ``config`` starting now (not yet finished).

  Example:
    >>> from alfx.experiment.durable import new_manifest
    >>> m = new_manifest({"rounds": 2})
    >>> m["config"], m["finished"], sorted(m["versions"])
    ({'rounds': 2}, False, ['alfx', 'jax', 'python'])
  """
  now = datetime.datetime.now(datetime.timezone.utc)
  return {
    "config": json.loads(json.dumps(dict(config))),
    "versions": versions(),
    "started": now.isoformat(timespec="seconds"),
    "finished": False,
  }


def read_manifest(out: str) -> dict[str, Any] | None:
  """``out/run.json``, or None when there is none (see `write_manifest`).

  Example:
    >>> import tempfile
    >>> from alfx.experiment.durable import read_manifest
    >>> read_manifest(tempfile.mkdtemp()) is None
    True
  """
  path = os.path.join(out, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
        f"{path} is not valid JSON ({e}); it is not a run this version"
        " can resume: start afresh with --overwrite."
      ) from e
  if not isinstance(manifest, dict) or "config" not in manifest:
    raise ValueError(f"{path} has no 'config': start afresh with --overwrite.")
  return manifest


def config_differences(
  old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[str]:
  """``key: old -> new`` for every key whose value differs (or is missing).

  Example:
    >>> from alfx.experiment.durable import config_differences
    >>> config_differences({"rounds": 2, "seed": 0}, {"rounds": 3, "seed": 0})
    ['rounds: 2 -> 3']
  """
  new = json.loads(json.dumps(dict(new)))  # tuples -> lists, as stored
  missing = object()
  lines = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, missing), new.get(key, missing)
    if a != b:
      show = lambda v: "(not set)" if v is missing else json.dumps(v)
      lines.append(f"{key}: {show(a)} -> {show(b)}")
  return lines


def _csv_text(rows: Sequence[Mapping[str, Any]], columns, header: bool) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
  if header:
    writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def append_rows(
  path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
  """Appends ``rows`` to the CSV at ``path`` and flushes them to disk.

  The header is written when the file is new. The rows go out in one
  ``write`` call on an unbuffered descriptor, then ``fsync``: an interrupt
  (Ctrl-C) lands before or after them, never inside.

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment.durable import append_rows, read_rows
    >>> path = os.path.join(tempfile.mkdtemp(), "r.csv")
    >>> append_rows(path, [{"a": 1, "b": 0.5}], ("a", "b"))
    >>> append_rows(path, [{"a": 2, "b": ""}], ("a", "b"))
    >>> read_rows(path)
    [{'a': '1', 'b': '0.5'}, {'a': '2', 'b': ''}]
  """
  new = not os.path.exists(path) or os.path.getsize(path) == 0
  data = _csv_text(rows, list(columns), header=new).encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    written = os.write(fd, data)
    while written < len(data):  # rare: a short write on a full device
      written += os.write(fd, data[written:])
    os.fsync(fd)
  finally:
    os.close(fd)


def read_rows(path: str) -> list[dict[str, str]]:
  """The rows of the CSV at ``path`` (strings); a torn last line is dropped.

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment.durable import read_rows
    >>> path = os.path.join(tempfile.mkdtemp(), "r.csv")
    >>> _ = open(path, "w").write("a,b\\n1,2\\n3,")  # cut off mid-row
    >>> read_rows(path)
    [{'a': '1', 'b': '2'}]
  """
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    text = f.read()
  if text and not text.endswith("\n"):
    text = text[: text.rfind("\n") + 1]  # a row cut off mid-write
  return list(csv.DictReader(io.StringIO(text)))


def rewrite_rows(
  path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
  """Replaces the CSV at ``path`` by ``rows`` (atomically).

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment.durable import read_rows, rewrite_rows
    >>> path = os.path.join(tempfile.mkdtemp(), "r.csv")
    >>> rewrite_rows(path, [{"a": 1}], ("a",))
    >>> read_rows(path)
    [{'a': '1'}]
  """
  write_atomic(path, _csv_text(rows, list(columns), header=True).encode())


def checkpoint_path(out: str, dataset: str, strategy: str) -> str:
  """``out/checkpoints/<dataset>__<strategy>.npz`` (names made file-safe).

  Example:
    >>> from alfx.experiment.durable import checkpoint_path
    >>> checkpoint_path("runs", "my data", "kbald-2")
    'runs/checkpoints/my_data__kbald-2.npz'
  """
  safe = lambda s: re.sub(r"[^A-Za-z0-9._-]", "_", s)
  return os.path.join(
    out, CHECKPOINTS, f"{safe(dataset)}__{safe(strategy)}.npz"
  )


def save_checkpoint(path: str, **arrays: Any) -> None:
  """Saves ``arrays`` as an ``.npz`` at ``path``, all or nothing (a crash
  leaves the previous checkpoint whole); see `load_checkpoint`.

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment.durable import save_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
    >>> save_checkpoint(path, next_round=1)
    >>> os.path.exists(path)
    True
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buffer = io.BytesIO()
  values: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
  np.savez(buffer, **values)
  write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str) -> dict[str, np.ndarray] | None:
  """The arrays saved at ``path``, or None when there is no checkpoint.

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment.durable import load_checkpoint, save_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "c", "a.npz")
    >>> save_checkpoint(path, next_round=3, labeled=np.eye(2, dtype=bool))
    >>> ckpt = load_checkpoint(path)
    >>> int(ckpt["next_round"]), ckpt["labeled"].tolist()
    (3, [[True, False], [False, True]])
  """
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def rows_covered(
  rows: Sequence[Mapping[str, str]], done: Mapping[tuple[str, str], int]
) -> list[Mapping[str, str]]:
  """The ``rows`` whose round is finished by the checkpoints ``done``.

  ``done[(dataset, strategy)]`` is the number of rounds whose rows and state
  were both saved; rows of later rounds (cut off before their checkpoint)
  and of runs without a checkpoint are dropped: the resumed run writes them
  again, identically.

  Example:
    >>> from alfx.experiment.durable import rows_covered
    >>> rows = [{"dataset": "d", "strategy": "s", "round": str(r)}
    ...         for r in range(3)]
    >>> [r["round"] for r in rows_covered(rows, {("d", "s"): 2})]
    ['0', '1']
  """
  return [
    r
    for r in rows
    if int(r["round"]) < done.get((r["dataset"], r["strategy"]), 0)
  ]


def clear(out: str, names: Sequence[str]) -> None:
  """Removes the run files ``names`` (and the checkpoints) from ``out``.

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment import durable
    >>> out = tempfile.mkdtemp()
    >>> durable.save_checkpoint(durable.checkpoint_path(out, "d", "s"), r=1)
    >>> durable.clear(out, (durable.RESULTS,))
    >>> os.listdir(out)
    []
  """
  for name in names:
    path = os.path.join(out, name)
    if os.path.isfile(path):
      os.unlink(path)
  folder = os.path.join(out, CHECKPOINTS)
  if os.path.isdir(folder):
    for name in os.listdir(folder):
      if name.endswith(".npz") or name.startswith(".tmp-"):
        os.unlink(os.path.join(folder, name))
    try:
      os.rmdir(folder)
    except OSError:
      pass  # something else lives there: leave it


def _now() -> str:
  now = datetime.datetime.now(datetime.timezone.utc)
  return now.isoformat(timespec="seconds")


def mark_finished(out: str) -> None:
  """Records in ``out/run.json`` that the run finished (and when).

  Example:
    >>> import tempfile
    >>> from alfx.experiment import durable
    >>> out = tempfile.mkdtemp()
    >>> durable.write_manifest(out, durable.new_manifest({}))
    >>> durable.mark_finished(out)
    >>> bool(durable.read_manifest(out)["finished"])
    True
  """
  manifest = read_manifest(out) or {}
  write_manifest(out, {**manifest, "finished": _now()})


def keep_finished_rows(
  out: str,
  dataset_names: Sequence[str],
  strategies: Sequence[str],
  seeds: int,
  columns: Sequence[str],
) -> str | None:
  """Cuts ``out/results.csv`` back to the rounds the checkpoints cover.

  A round whose rows were written but whose checkpoint was not runs again
  (its rows go), and so does a torn last line. Returns an error message
  when the CSV lacks rows a checkpoint covers (edited or lost), else None.

  Example:
    >>> import tempfile, os
    >>> from alfx.experiment import durable
    >>> out = tempfile.mkdtemp()
    >>> rows = [{"dataset": "d", "strategy": "s", "round": r} for r in (0, 1)]
    >>> durable.append_rows(os.path.join(out, durable.RESULTS), rows,
    ...                     ("dataset", "strategy", "round"))
    >>> durable.save_checkpoint(durable.checkpoint_path(out, "d", "s"),
    ...                         next_round=1)  # round 1's state was lost
    >>> durable.keep_finished_rows(out, ["d"], ["s"], 1,
    ...                            ("dataset", "strategy", "round"))
    >>> [r["round"] for r in durable.read_rows(os.path.join(out, "results.csv"))]
    ['0']
  """
  done = {}
  for d in dataset_names:
    for s in strategies:
      ckpt = load_checkpoint(checkpoint_path(out, d, s))
      if ckpt is not None:
        done[(d, s)] = int(ckpt["next_round"])
  path = os.path.join(out, RESULTS)
  rows = rows_covered(read_rows(path), done)
  for (d, s), n in done.items():
    have = sum(1 for r in rows if r["dataset"] == d and r["strategy"] == s)
    if have != n * seeds:
      return (
        f"--resume: {path} holds {have} rows of {d}/{s} but its checkpoint"
        f" covers {n} rounds of {seeds} seeds ({n * seeds} rows); the CSV"
        " was edited or lost: start afresh with --overwrite."
      )
  rewrite_rows(path, rows, columns)
  return None


def prepare(
  out: str,
  config: Mapping[str, Any],
  *,
  resume: bool,
  overwrite: bool,
  dataset_names: Sequence[str],
  strategies: Sequence[str],
  seeds: int,
  columns: Sequence[str],
) -> str | None:
  """Readies ``out`` for a run of ``config``; returns an error message or
  None.

  * ``resume`` and a run in ``out``: refused (naming the keys that differ)
    unless its configuration equals ``config``; else the CSV is cut back to
    the checkpoints (`keep_finished_rows`) and the resume is recorded.
  * an unfinished run in ``out`` and neither flag: refused (nothing is
    deleted without ``overwrite``).
  * otherwise a new run: the old files go, a new manifest is written.

  Example:
    >>> import tempfile
    >>> from alfx.experiment import durable
    >>> out, kw = tempfile.mkdtemp(), dict(dataset_names=["d"],
    ...   strategies=["s"], seeds=1, columns=("dataset",))
    >>> durable.prepare(out, {"rounds": 2}, resume=False, overwrite=False,
    ...                 **kw) is None  # a new run
    True
    >>> print(durable.prepare(out, {"rounds": 3}, resume=True,
    ...                       overwrite=False, **kw))
    --resume: ... a different configuration (rounds: 2 -> 3); ...
  """
  os.makedirs(out, exist_ok=True)
  old = read_manifest(out)
  if old is not None and resume:
    diffs = config_differences(old["config"], config)
    if diffs:
      return (
        f"--resume: {out} holds a run with a different configuration"
        f" ({'; '.join(diffs)}); rerun with its flags to continue it, or"
        " choose another --out (or --overwrite to replace it)."
      )
    error = keep_finished_rows(out, dataset_names, strategies, seeds, columns)
    if error:
      return error
    print(
      f"resuming the run started {old.get('started', '?')} in {out}",
      file=sys.stderr,
    )
    resumed = old.get("resumed", []) + [_now()]
    write_manifest(out, {**old, "finished": False, "resumed": resumed})
    return None
  if old is not None and not old.get("finished") and not overwrite:
    return (
      f"{out} holds an unfinished run (started {old.get('started', '?')}):"
      " add --resume to continue it, or --overwrite to delete it and start"
      " afresh."
    )
  if resume:
    print(f"--resume: no run in {out}; starting one", file=sys.stderr)
  clear(out, (RESULTS, PLOT, MANIFEST))
  write_manifest(out, new_manifest(config))
  return None


def interrupt_on_sigterm() -> Callable[[], Any]:
  """Makes SIGTERM raise KeyboardInterrupt (a batch scheduler's time limit
  then stops a run like Ctrl-C, with its report); returns the undo.

  Off the main thread, where handlers cannot be set, it does nothing.

  Example:
    >>> import signal
    >>> from alfx.experiment.durable import interrupt_on_sigterm
    >>> before = signal.getsignal(signal.SIGTERM)
    >>> undo = interrupt_on_sigterm()
    >>> _ = undo()
    >>> signal.getsignal(signal.SIGTERM) == before
    True
  """

  def handler(signum, frame):
    raise KeyboardInterrupt

  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread
    return lambda: None
  return lambda: signal.signal(signal.SIGTERM, previous)

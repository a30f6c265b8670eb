"""One set of properties, run over every acquisition and registry strategy.

In the spirit of distrax's equivalence harness and optax's common optimizer
tests: the table is `tests/conformance_cases.py` (one row per acquisition,
one per registry strategy, one shape: N = 203 with duplicated rows) and
every property below runs over every row:

* picks in range, unique, never masked or labelled; ``valid`` all True with
  enough selectable points on concrete input (a valid prefix for the
  dynamic-size rows); ``valid=False`` under ``jit`` when too few are
  selectable;
* ``jax.jit(jax.vmap(f))`` over a leading axis equals eager calls item by
  item (jit and vmap in one program, so each row compiles it once);
* float64 in gives float64 scores out (under ``jax.enable_x64``);
* new values, masks, labelled sets and keys never recompile, eager and
  under jit (a compile log from ``jax.monitoring``, no allowance);
* ties go to the lower index (deterministic rows);
* every bad input of the contract raises its ``ValueError``; NaN under
  ``jit`` gives ``valid=False`` or NaN scores, never plausible picks;
* 4 forced devices and 2 processes x 2 devices give the single-device
  picks: one subprocess per layout runs every row once
  (`tests/conformance_worker.py`, plus the sharded checks of
  `tests/sharded_public.py`), started with this module's first test and
  read by its last tests; the reference is this process's eager run.

A registry strategy that wraps a direct row (``Row.twin``) runs the
properties that compile under jit in ``-m slow`` only. The family files
keep their own reference tests (float64 brute force).
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from tests import conformance_cases as cases
from tests import sharded_public
from tests.helpers import compile_log

ROWS = cases.all_rows()
B = cases.B
row_params = pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])


def _rows(pred=lambda r: True, *, heavy=False):
  """Parametrizes over the rows where ``pred``. ``heavy``: the property
  compiles a program of its own (the row's jit(vmap) program, or the row in
  a device layout), which for a strategy with a twin row runs under
  ``-m slow`` only: its twin runs by default."""
  chosen = [r for r in ROWS if pred(r)]
  params = [
    pytest.param(r, marks=pytest.mark.slow) if heavy and r.twin else r
    for r in chosen
  ]
  return pytest.mark.parametrize("row", params, ids=[r.name for r in chosen])


# --------------------------------------------------------------------------
# Helpers.


def _inputs(row, tag, **kw):
  """Device arrays of ``row`` from a seed derived from the row and ``tag``."""
  a = cases.make_inputs(row, cases.seed(row.name, tag), **kw)
  return {k: jnp.asarray(v) for k, v in a.items()}


def _key(row, tag):
  return jax.random.key(cases.seed(row.name, tag, "key"))


_EAGER = {}


def _picks_inputs(row):
  """The "picks" inputs of ``row`` (what the worker subprocesses build)."""
  return _inputs(row, "picks")


def _reference(row):
  """``(inputs, key, selection)`` of the eager run on the "picks" inputs:
  shared by several properties and the reference of the device layouts."""
  if row.name not in _EAGER:
    a, key = _picks_inputs(row), _key(row, "picks")
    _EAGER[row.name] = (a, key, row.call(a, B, key))
  return _EAGER[row.name]


_PROGRAMS = {}


def _program(row):
  """``jax.jit(jax.vmap(call))`` over 2 stacked items: ONE compiled program
  per row, shared by every property under jit and vmap (jit vs eager, vmap
  vs a loop, too few selectable, NaN, recompilation)."""
  if row.name not in _PROGRAMS:
    _PROGRAMS[row.name] = jax.jit(jax.vmap(lambda a, key: row.call(a, B, key)))
  return _PROGRAMS[row.name]


def _under_jit(row, items, keys):
  """The program's outputs for each of the 2 ``(items, keys)``."""
  out = _program(row)(
    jax.tree.map(lambda *x: jnp.stack(x), *items), jnp.stack(keys)
  )
  return [jax.tree.map(lambda x, i=i: x[i], out) for i in range(len(items))]


def _host(sel):
  return tuple(np.asarray(x) for x in (sel.indices, sel.valid, sel.scores))


def _check_picks(row, a, sel, *, concrete=True, selectable_count=None):
  """In range, unique, selectable; ``valid`` semantics."""
  indices, valid, scores = _host(sel)
  n = a["mask"].shape[0]
  assert indices.shape == valid.shape == scores.shape == (B,), (
    indices.shape,
    valid.shape,
    scores.shape,
  )
  assert jnp.issubdtype(indices.dtype, jnp.integer), indices.dtype
  assert valid.dtype == np.bool_, valid.dtype
  picks = indices[valid]
  assert np.all((picks >= 0) & (picks < n)), indices
  assert len(set(picks.tolist())) == len(picks), f"repeated picks {indices}"
  ok = cases.selectable(a)
  assert ok[picks].all(), (
    f"picked masked or labelled points {picks[~ok[picks]].tolist()}"
    f" (mask {np.asarray(a['mask'])[picks]}, labeled"
    f" {np.asarray(a['labeled'])[picks]})"
  )
  count = int(valid.sum())
  # The valid picks come first (indices[~valid] carry no meaning).
  np.testing.assert_array_equal(
    valid, np.arange(B) < count, err_msg="valid is not a prefix"
  )
  if selectable_count is None:
    if row.dynamic:
      assert count >= 1, valid
    else:
      assert count == B, f"valid={valid} with {ok.sum()} selectable points"
  else:
    assert count <= selectable_count, valid
    if not row.dynamic:
      assert count == selectable_count, (
        f"valid={valid}: {selectable_count} points were selectable"
      )
  assert np.all(np.isfinite(scores[valid])) or not concrete, scores


def _assert_same(got, want, what, rtol=1e-4):
  gi, gv, gs = _host(got)
  wi, wv, ws = _host(want)
  np.testing.assert_array_equal(gv, wv, err_msg=f"{what}: valid")
  np.testing.assert_array_equal(gi[gv], wi[wv], err_msg=f"{what}: indices")
  if wv.any():
    scale = max(float(np.max(np.abs(ws[wv]))), 1e-6)
    np.testing.assert_allclose(
      gs[gv], ws[wv], rtol=rtol, atol=rtol * scale, err_msg=f"{what}: scores"
    )


# --------------------------------------------------------------------------
# The table itself.


#: The public acquisitions; each must be called by a row.
ACQUISITIONS = (
  "top_b",
  "topk_bald",
  "batchbald",
  "kbald",
  "kbald_dynamic",
  "conservative_bald",
  "stochastic_batch",
  "random_batch",
  "badge",
  "coreset",
  "typiclust",
  "bait",
  "batch_epig",
  "kepig",
)


def test_table_covers_every_acquisition_and_strategy():
  called = set()
  for row in cases.ROWS:
    called |= set(row.call.__code__.co_names)
    for cell in row.call.__closure__ or ():
      fn = cell.cell_contents
      called |= set(getattr(getattr(fn, "__code__", None), "co_names", ()))
  assert set(ACQUISITIONS) <= set(alfx.__all__)
  assert set(ACQUISITIONS) <= called, set(ACQUISITIONS) - called
  missing = set(alfx.strategy_names()) - set(cases.STRATEGY_TRAITS)
  assert not missing, (
    f"strategies {sorted(missing)} have no entry in"
    " conformance_cases.STRATEGY_TRAITS"
  )
  stale = set(cases.STRATEGY_TRAITS) - set(alfx.strategy_names())
  assert not stale, f"STRATEGY_TRAITS names unregistered {sorted(stale)}"
  assert {r.name for r in ROWS} >= {
    f"strategy:{n}" for n in alfx.strategy_names()
  }


# --------------------------------------------------------------------------
# Picks and valid.


@row_params
def test_picks_selectable_unique_valid(row):
  a, _, sel = _reference(row)
  _check_picks(row, a, sel)


@_rows(heavy=True)
def test_too_few_selectable_under_jit(row):
  """Under jit the value checks cannot run: picks without a selectable point
  left come back valid=False (eagerly the same input raises, see
  test_bad_inputs_raise)."""
  a, key, want = _reference(row)
  few = _inputs(row, "few", selectable=B - 2)
  got_few, got = _under_jit(row, [few, a], [_key(row, "few"), key])
  _check_picks(row, few, got_few, concrete=False, selectable_count=B - 2)
  _assert_same(got, want, "the other item of the vmapped batch")


@_rows(heavy=True)
def test_jit_vmap_equals_eager_loop(row):
  """jax.jit(jax.vmap(f)) over a leading axis equals eager calls of f, item
  by item (one program for jit and vmap: it compiles once)."""
  a, key, want = _reference(row)
  b, key_b = _inputs(row, "vmap"), _key(row, "vmap")
  got_a, got_b = _under_jit(row, [a, b], [key, key_b])
  _assert_same(got_a, want, "jit(vmap) item 0 vs eager")
  _assert_same(got_b, row.call(b, B, key_b), "jit(vmap) item 1 vs eager")


@_rows(lambda r: r.reads_values)
def test_float64_in_float64_out(row):
  """Under jax.enable_x64, float64 inputs give float64 scores: read from the
  traced output types (jax.eval_shape), nothing to compile. (Not
  random_batch: it reads no values, its pool may be a mask.)"""
  with jax.enable_x64(True):
    a = _inputs(row, "x64", dtype=np.float64)
    assert a[row.needs[0]].dtype == jnp.float64
    out = jax.eval_shape(
      lambda a, key: row.call(a, B, key), a, _key(row, "x64")
    )
  assert out.scores.dtype == jnp.float64, out.scores.dtype
  assert jnp.issubdtype(out.indices.dtype, jnp.integer), out.indices.dtype
  assert out.valid.dtype == jnp.bool_, out.valid.dtype


@row_params
def test_new_values_masks_keys_never_recompile_eager(row):
  """After one call, eager calls with new values, masks, labelled sets and
  keys compile nothing (no allowance)."""
  _reference(row)  # compiled (if not yet)
  items = [_inputs(row, f"compile{i}") for i in range(2)]
  keys = [_key(row, f"compile{i}") for i in range(2)]
  with compile_log() as log:
    for a, key in zip(items, keys):
      jax.block_until_ready(row.call(a, B, key))
  assert not log.names, f"new values compiled {log.names}"


@_rows(heavy=True)
def test_new_values_masks_keys_never_recompile_under_jit(row):
  """The same under jit(vmap)."""
  a, key, _ = _reference(row)
  items = [_inputs(row, f"compile{i}") for i in range(3)]
  keys = [_key(row, f"compile{i}") for i in range(3)]
  _under_jit(row, [a, items[0]], [key, keys[0]])  # compiled (if not yet)
  with compile_log() as log:
    jax.block_until_ready(_under_jit(row, items[1:], keys[1:]))
  assert not log.names, f"new values compiled {log.names}"


@_rows(lambda r: not r.random)
def test_ties_go_to_the_lower_index(row):
  """Rows N//2 + i duplicate rows i exactly (`conformance_cases.twin`): a
  pick of the higher twin needs the lower twin, when selectable, picked
  before it."""
  a, _, sel = _reference(row)
  indices, valid, _ = _host(sel)
  picks = indices[valid].tolist()
  ok = cases.selectable(a)
  for pos, j in enumerate(picks):
    i = cases.twin(j)
    if i is not None and ok[i]:
      assert i in picks[:pos], (
        f"picked {j} (a copy of {i}) before or instead of {i}: {picks}"
      )


# --------------------------------------------------------------------------
# Bad inputs.


def _wrong_rank(x):
  # One axis too many (one too few can be legal: predictive_entropy, margin
  # and least_confidence take [N, C] as one sample).
  return x[..., None]


def _bad_cases(row):
  """``(name, corrupt(a) -> (a, batch_size), match, traced)`` for the
  contract's bad inputs that apply to ``row``. ``traced``: a shape error,
  which must also raise while tracing (checked under ``jax.eval_shape``,
  which compiles nothing); the others are value errors of concrete input."""
  first = row.needs[0]
  out = []
  if row.reads_values:
    out.append(
      (
        "wrong_rank",
        lambda a: ({**a, first: _wrong_rank(a[first])}, B),
        first,
        True,
      )
    )
    out.append(
      (
        "nan",
        lambda a: ({**a, first: a[first].at[2].set(jnp.nan)}, B),
        "NaN",
        False,
      )
    )
  else:
    out.append(
      (
        "scalar_pool",
        lambda a: ({**a, first: a[first].reshape(-1)[0]}, B),
        first,
        True,
      )
    )
  out.append(
    (
      "int_mask",
      lambda a: ({**a, "mask": a["mask"].astype(jnp.int32)}, B),
      "mask",
      True,
    )
  )
  out.append(
    ("short_mask", lambda a: ({**a, "mask": a["mask"][:-1]}, B), "mask", True)
  )
  out.append(("batch_size_zero", lambda a: (a, 0), "batch_size", True))
  out.append(("batch_size_float", lambda a: (a, float(B)), "batch_size", True))
  out.append(
    (
      "batch_size_above_selectable",
      lambda a: (a, int(cases.selectable(a).sum()) + 1),
      "batch_size",
      False,
    )
  )
  if "log_probs" in row.needs and row.reads_values:
    out.append(
      (
        "probabilities_as_log_probs",
        lambda a: ({**a, "log_probs": jnp.exp(a["log_probs"])}, B),
        r"(?i)probabilit",
        False,
      )
    )
  if "probs" in row.needs:
    out.append(
      (
        "unnormalised_probs",
        lambda a: ({**a, "probs": 2 * a["probs"]}, B),
        "probs",
        False,
      )
    )
  if row.labeled:
    out.append(
      (
        "int_labeled",
        lambda a: ({**a, "labeled": a["labeled"].astype(jnp.int32)}, B),
        "labeled",
        True,
      )
    )
  if "log_probs" in row.needs and row.reads_values:
    # [K, N, C] where [N, K, C] is expected: the pool axis disagrees with
    # the mask's length.
    out.append(
      (
        "knc_layout",
        lambda a: ({**a, "log_probs": jnp.swapaxes(a["log_probs"], 0, 1)}, B),
        r"log_probs|mask",
        True,
      )
    )
  if row.labeled:
    out.append(
      (
        "labeled_empties_pool",
        lambda a: ({**a, "labeled": a["labeled"] | a["mask"]}, B),
        "labeled",
        False,
      )
    )
  return out


_BAD = [(row, *case) for row in ROWS for case in _bad_cases(row)]


# The [K, N, C] case also warns (test_knc_layout_warns checks the warning).
@pytest.mark.filterwarnings("ignore:log_probs has shape")
@pytest.mark.parametrize(
  "row,case,corrupt,match,traced",
  _BAD,
  ids=[f"{r.name}-{c[0]}" for r, *c in _BAD],
)
def test_bad_inputs_raise(row, case, corrupt, match, traced):
  del case
  a, batch_size = corrupt(_picks_inputs(row))
  key = _key(row, "picks")
  with pytest.raises(ValueError, match=match):
    if traced:
      jax.eval_shape(lambda a, key: row.call(a, batch_size, key), a, key)
    else:
      row.call(a, batch_size, key)


@_rows(lambda r: r.random)
def test_missing_key_raises(row):
  """Randomness only from an explicit key: key=None is a ValueError naming
  it (checked while tracing: nothing to compile)."""
  a = _picks_inputs(row)
  with pytest.raises(ValueError, match="key"):
    jax.eval_shape(lambda a: row.call(a, B, None), a)


@_rows(lambda r: "log_probs" in r.needs and r.reads_values)
def test_knc_layout_warns(row):
  """A [K, N, C] array with K > N (read as [N, K, C] it has more samples
  than points): a warning that says how to transpose. Checked while
  tracing (jax.eval_shape: a shape rule, nothing to compile)."""
  a = _picks_inputs(row)
  n = cases.K  # the K samples read as the pool
  swapped = {k: v[:n] for k, v in a.items()}
  swapped["log_probs"] = jnp.swapaxes(a["log_probs"], 0, 1)
  swapped["mask"] = jnp.ones(n, bool)
  swapped["labeled"] = jnp.zeros(n, bool)
  with pytest.warns(Warning, match=r"(?i)transpose|swapaxes|\[K, N, C\]"):
    try:
      jax.eval_shape(
        lambda a, key: row.call(a, B, key), swapped, _key(row, "picks")
      )
    except ValueError:
      pass  # an error of the odd shape after the warning is fine


@_rows(lambda r: r.reads_values, heavy=True)
def test_nan_under_jit_is_never_plausible(row):
  """NaN in one selectable row, under jit (no value checks): valid=False or
  NaN scores, never plausible picks; the other item of the vmapped batch
  keeps its picks."""
  a, key, want = _reference(row)
  first = row.needs[0]
  i = int(np.flatnonzero(cases.selectable(a))[0])
  bad = {**a, first: a[first].at[i].set(jnp.nan)}
  got_bad, got = _under_jit(row, [bad, a], [key, key])
  _, valid, scores = _host(got_bad)
  assert not valid.all() or np.isnan(scores).any(), (valid, scores)
  _assert_same(got, want, "the other item of the vmapped batch")


# --------------------------------------------------------------------------
# Device layouts: one subprocess per layout runs every row once.

#: The worker runs as ``python -m tests.conformance_worker`` from the
#: directory above ``tests/`` (so it imports the installed alfx).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds for each layout's run (all rows), then its processes are killed.
_TIMEOUT = float(os.environ.get("ALFX_CONFORMANCE_TIMEOUT", "480"))
#: The layouts compared with this process's eager run (one device); the
#: worker's "single" mode reproduces that run in a subprocess, for debugging.
_MODES = ("devices4", "multiprocess")


#: Worker processes alive now: killed at exit too (an interrupted session
#: leaves no worker behind; the runs' own threads are daemons).
_LIVE = set()


def _kill(p):
  if p.poll() is None:
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    p.wait(timeout=30)
  _LIVE.discard(p)


atexit.register(lambda: [_kill(p) for p in list(_LIVE)])


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_layout(mode, out, *, rows="all", extras="all", timeout=_TIMEOUT):
  """Runs the worker in ``mode`` (2 processes for ``multiprocess``) on
  ``rows`` and the ``extras`` checks of sharded_public (names or "all").

  Each process runs in its own process group; on a timeout or any failure
  every group is killed. Returns ``(returncodes, log text)``.
  """
  os.makedirs(out, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  join = lambda x: x if isinstance(x, str) else ",".join(sorted(x))
  base = [
    sys.executable,
    "-m",
    "tests.conformance_worker",
    mode,
    out,
    "--rows",
    join(rows),
    "--extras",
    join(extras),
  ]
  if mode == "multiprocess":
    port = _free_port()
    cmds = [
      base + ["--process-id", str(i), "--port", str(port)] for i in range(2)
    ]
  else:
    cmds = [base]
  procs, logs = [], []
  try:
    for i, cmd in enumerate(cmds):
      log = open(os.path.join(out, f"log{i}.txt"), "w")
      logs.append(log)
      procs.append(
        subprocess.Popen(
          cmd,
          stdout=log,
          stderr=subprocess.STDOUT,
          env=env,
          cwd=_ROOT,
          start_new_session=True,
        )
      )
      _LIVE.add(procs[-1])
    # Wait for all; a process that fails leaves its peer blocked in a
    # collective, so the first failure (or the deadline) ends the run.
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        break
      if time.monotonic() > deadline:
        break
      time.sleep(0.2)
    codes = [
      p.poll()
      if p.poll() is not None
      else ("timeout" if time.monotonic() > deadline else "killed")
      for p in procs
    ]
  finally:
    for p in procs:
      _kill(p)
    for log in logs:
      log.close()
  text = ""
  for i in range(len(cmds)):
    with open(os.path.join(out, f"log{i}.txt")) as fh:
      text += f"--- process {i}:\n{fh.read()[-4000:]}\n"
  return codes, text


class _Layouts:
  """The layout runs, started in background threads: each runs the rows and
  checks that the selected tests read (so ``-k``/``-m`` selections run
  less)."""

  def __init__(self):
    self.dir = tempfile.mkdtemp(prefix="alfx_conformance_")
    self.threads, self.results, self.plan = {}, {}, {}

  def start(self, plan):
    for mode, (rows, extras) in plan.items():
      if mode not in self.threads and (rows or extras):
        self.plan[mode] = (rows, extras)
        t = threading.Thread(
          target=self._run, args=(mode, rows, extras), daemon=True
        )
        self.threads[mode] = t
        t.start()

  def _run(self, mode, rows, extras):
    try:
      self.results[mode] = run_layout(
        mode, os.path.join(self.dir, mode), rows=rows, extras=extras
      )
    except Exception as e:  # pylint: disable=broad-except
      self.results[mode] = ([repr(e)], "")

  def get(self, mode):
    if mode not in self.threads:
      pytest.fail(f"the {mode} run was not planned for this selection")
    self.threads[mode].join()
    codes, text = self.results[mode]
    out = os.path.join(self.dir, mode)
    if not os.path.exists(os.path.join(out, "done")):
      pytest.fail(f"the {mode} run did not finish ({codes}):\n{text}")
    assert all(c == 0 for c in codes), (codes, text)
    return out

  def cleanup(self):
    for t in self.threads.values():
      t.join()
    shutil.rmtree(self.dir, ignore_errors=True)


#: Tests reading a sharded_public check: (mode or None for the test's
#: ``mode`` parameter, check name).
_CHECK_TESTS = {
  "test_sharded_shard_pool_pads_and_places": ("devices4", "shard_pool"),
  "test_sharded_gather_detector_and_padding_controls": ("devices4", "controls"),
  "test_sharded_bait_scan_state_stays_split": ("devices4", "bait_state"),
  "test_sharded_flax_helpers_predict_each_devices_rows": (None, "flax"),
  "test_sharded_kernels_equal_single_device": (None, "kernels"),
}
_ROW_TESTS = {
  "test_devices4_picks_equal_single_device": "devices4",
  "test_multiprocess_picks_equal_single_process": "multiprocess",
}


def _plan(items):
  """``{mode: (rows, checks)}`` that the selected ``items`` read."""
  plan = {mode: (set(), set()) for mode in _MODES}
  for item in items:
    name = getattr(item, "originalname", item.name)
    params = getattr(getattr(item, "callspec", None), "params", {})
    if name in _ROW_TESTS:
      plan[_ROW_TESTS[name]][0].add(params["row"].name)
    elif name in _CHECK_TESTS:
      mode, check = _CHECK_TESTS[name]
      plan[mode or params["mode"]][1].add(check)
  return plan


@pytest.fixture(scope="module")
def layouts():
  runs = _Layouts()
  yield runs
  runs.cleanup()


@pytest.fixture(scope="module", autouse=True)
def _start_layouts_early(request, layouts):
  """Starts the subprocesses with this module's first test (they run beside
  the in-process properties) for what the selected tests read."""
  layouts.start(
    _plan(
      item for item in request.session.items if item.module is request.module
    )
  )


def _load(out, row):
  path = os.path.join(out, row.name)
  if os.path.exists(path + ".error"):
    with open(path + ".error") as fh:
      pytest.fail(f"{row.name} raised:\n{fh.read()[-3000:]}")
  with np.load(path + ".npz") as f:
    sel = alfx.Selection(f["indices"], f["scores"], f["valid"])
  with open(path + ".json") as fh:
    return sel, json.load(fh)


@_rows(heavy=True)
def test_devices4_picks_equal_single_device(row, layouts):
  """4 forced devices, the pool padded 203 -> 204 by alfx.shard_pool: the
  single-device picks, the padding never picked, no all-gather of a
  pool-sized operand (softrank gathers only its [N] utilities)."""
  got, meta = _load(layouts.get("devices4"), row)
  _assert_same(got, _reference(row)[2], "4 devices vs 1")
  assert not np.any(np.asarray(got.indices)[np.asarray(got.valid)] >= cases.N)
  if row.name.startswith("strategy:"):
    # Strategies run their defaults: CoreSet's and TypiClust's gathered
    # blocks (block_size=256 rows a device) hold the whole 204-row pool
    # here, which the detector cannot tell from a gather of the pool; their
    # direct rows (block_size=8) are checked.
    return
  for line in meta["pool_gathers"]:
    assert "softrank" in row.name and "f32[204]{0} all-gather(" in line, line
  # Each direct row compiles its own sharded program (strategies may reuse
  # one), with collectives: the gather check above saw the program.
  assert meta["programs"] >= 1 and meta["collectives"] >= 1, meta
  if "softrank" in row.name:
    assert meta["pool_gathers"], "softrank's [N] utilities are gathered"


@_rows(heavy=True)
def test_multiprocess_picks_equal_single_process(row, layouts):
  """2 processes x 2 devices on 127.0.0.1 (gloo), global arrays from
  jax.make_array_from_process_local_data as in the README's recipe."""
  got, _ = _load(layouts.get("multiprocess"), row)
  _assert_same(got, _reference(row)[2], "2 processes vs 1")


def _extras(layouts, mode, name):
  with open(os.path.join(layouts.get(mode), "extras.json")) as fh:
    out = json.load(fh)[name]
  if "error" in out:
    pytest.fail(out["error"])
  return out


def test_sharded_shard_pool_pads_and_places(layouts):
  out = _extras(layouts, "devices4", "shard_pool")
  assert out["n"] == 203 and out["n_pad"] == 204
  assert len(out["specs"]) == 6
  for spec in out["specs"]:  # split over the pool axis, nothing else
    assert spec[0] == "pool" and not any(spec[1:]), out["specs"]
  assert out["in_pool"] == [True] * 203 + [False]
  assert out["prefix_equal"]
  assert out["pad_float_is_last_row"]
  assert out["pad_bool_false"]
  assert out["shard_rows"] == [51] * 4 and out["devices"] == 4


def test_sharded_gather_detector_and_padding_controls(layouts):
  """The checks above can fail: a resharding to replicated shows up as a
  gather of the pool, and ``mask=None`` on a padded pool does pick the
  padding (which is why ``in_pool`` / padded masks must be passed)."""
  out = _extras(layouts, "devices4", "controls")
  assert out["detector_finds_gather"]
  assert out["mask_none_picks_padding"]


@pytest.mark.slow
def test_sharded_bait_scan_state_stays_split(layouts):
  """BAIT's per-point U_n, W_n live split over the devices (P('pool'), 51
  rows each) and equal the single-device state, on the dense and the
  structured paths; F (with the padding row weighted 0 through in_pool)
  equals the unpadded pool's F: the blocks replicated, structured topc's
  per-point V_n^T F V_n split like the pool. (Slow: six more BAIT
  compilations, ~27 s; by default the BAIT rows' sharded programs are
  checked free of pool-sized all-gathers, which a replicated state would
  need.)"""
  states = _extras(layouts, "devices4", "bait_state")
  assert set(states) == {"full_dense", "full_structured", "topc_structured"}
  for name, out in states.items():
    assert out["fisher_diff"] < 1e-5, (name, out["fisher_diff"])
    if out["fisher_field"] == "quad":
      assert out["fisher_spec"] == ["pool", None, None], name
    else:
      assert out["fisher_spec"] == [None, None, None], name  # replicated
    assert out["specs"] == {
      k: ["pool", None, None] for k in ("u", "w", "u0", "w0")
    }, name
    assert out["shard_rows"] == [51] * 4, name
    # Structured topc forms W_n by cancelling terms: its float32 W differs
    # from float64 by 1.3e-4 on one device already (measured), so it gets
    # that precision's tolerance.
    w_tol = 1e-3 if name == "topc_structured" else 1e-4
    assert out["u_diff"] < 1e-4 and out["w_diff"] < w_tol, (name, out)


@pytest.mark.parametrize("mode", _MODES)
def test_sharded_flax_helpers_predict_each_devices_rows(layouts, mode):
  """Each device predicts its own rows: outputs sharded P('pool'), equal to
  the single-device predictions (MC dropout included), same picks; on 4
  devices of one process and on 2 processes (global inputs)."""
  for name, out in _extras(layouts, mode, "flax").items():
    assert out["specs"] == [
      ["pool", None, None],
      ["pool", None],
      ["pool", None],
    ], name
    assert out["diff"] < 1e-5, (name, out["diff"])


@pytest.mark.parametrize("mode", _MODES)
def test_sharded_kernels_equal_single_device(layouts, mode):
  """entropy and bald called directly on the sharded pool (4 devices; 2
  processes): the single-device values, split P('pool'). (The uncertainty
  scores run sharded in their strategy rows.)"""
  out = _extras(layouts, mode, "kernels")
  assert set(out) == set(sharded_public.KERNELS)
  for name, o in out.items():
    assert o["spec"] == ["pool"], (name, o)
    assert o["diff"] < 1e-5, (name, o)

"""The ``alfx-select`` command line: flags, strategy, one acquisition, output.

`main` checks the strategy and its ``--option`` values
(`alfx.select.strategies`), reads the predictions and the other arrays
(`alfx.select.inputs`, `alfx.select.arrays`), makes one acquisition and
writes the valid picks in pick order with their scores (CSV, JSON or
``.npy``). Every input error ends the command with
``alfx-select: error: ...`` on stderr and exit status 2.

May import: `alfx` (the public API: `alfx.StrategyContext`), the other
`alfx.select` modules, jax, numpy.
"""

import argparse
from collections.abc import Sequence
import json
import os
import sys
import warnings

import numpy as np

from alfx.select import arrays
from alfx.select import inputs
from alfx.select import strategies

PROG = "alfx-select"

_KNC_WARNING = "more posterior samples than pool points"


def build_parser() -> argparse.ArgumentParser:
  """The flags of ``alfx-select``.

  Example:
    >>> args = build_parser().parse_args(
    ...   ["--log-probs", "lp.npy", "--strategy", "bald", "--batch-size", "5"])
    >>> args.strategy, args.batch_size, args.layout
    ('bald', 5, 'NKC')
  """
  p = argparse.ArgumentParser(
    prog=PROG,
    description="One batch active-learning acquisition from predictions"
    " saved by any framework (.npy/.npz): prints the picked pool indices in"
    " pick order with their scores.",
    epilog="example: alfx-select --log-probs preds.npy --labeled"
    " labeled.npy --strategy batchbald --batch-size 10 --out picks.csv",
  )
  g = p.add_argument_group("predictions (exactly one)")
  kinds = g.add_mutually_exclusive_group()
  for kind, text in (
    ("log-probs", "natural-log probabilities (log_softmax)"),
    ("probs", "probabilities (softmax)"),
    ("logits", "logits (log_softmax is applied)"),
  ):
    kinds.add_argument(
      f"--{kind}",
      metavar="FILE",
      help=f"{text}, [N, K, C] (K posterior samples) or [N, C]; .npy"
      " (memory-mapped) or .npz",
    )
  g.add_argument(
    "--array",
    metavar="NAME",
    help="the array of the predictions' .npz to use (any file also takes"
    " FILE.npz:NAME)",
  )
  g.add_argument(
    "--layout",
    choices=("NKC", "KNC"),
    default="NKC",
    help="axis order of 3-d predictions: NKC (default) or KNC (samples first)",
  )
  g = p.add_argument_group("other inputs")
  g.add_argument(
    "--embeddings",
    metavar="FILE",
    help="[N, D] last-layer inputs, for BAIT, BADGE, CoreSet, TypiClust",
  )
  g.add_argument(
    "--embedding-probs",
    metavar="FILE",
    help="[N, C] class probabilities of the network that gave the"
    " embeddings (BAIT, BADGE; default: the predictions' mean over K)",
  )
  g.add_argument(
    "--labeled",
    metavar="FILE",
    action="append",
    default=[],
    help="labelled points, never picked: bool mask [N] (.npy) or indices"
    " (.npy ints, or a text/CSV file of integers, e.g. earlier picks);"
    " repeatable (the union)",
  )
  g.add_argument(
    "--mask",
    metavar="FILE",
    help="the selectable points (default all), as --labeled",
  )
  g.add_argument(
    "--targets",
    metavar="FILE",
    help="[M, K, C] predictions of target inputs for the EPIG strategies,"
    " same kind and layout as the pool's (default: drawn from the pool)",
  )
  g = p.add_argument_group("acquisition")
  g.add_argument("--strategy", metavar="NAME", help="a name from --list")
  g.add_argument(
    "--option",
    metavar="KEY=VALUE",
    action="append",
    default=[],
    help="a strategy option (repeatable), e.g. num_configurations=1000",
  )
  g.add_argument(
    "--batch-size", type=_positive_int, metavar="B", help="points to pick"
  )
  g.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
  g.add_argument(
    "--list", action="store_true", help="list the strategies and exit"
  )
  g = p.add_argument_group("output")
  g.add_argument("--out", metavar="FILE", help="write here instead of stdout")
  g.add_argument(
    "--format",
    choices=("csv", "json", "npy"),
    help="csv (rank,index,score), json, or npy (the indices, int64;"
    " needs --out); default from --out's extension, else csv",
  )
  return p


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def _output_format(args) -> str:
  if args.format:
    fmt = args.format
  elif args.out and args.out.lower().endswith((".json", ".npy")):
    fmt = os.path.splitext(args.out)[1][1:].lower()
  else:
    fmt = "csv"
  if fmt == "npy" and not args.out:
    raise strategies.UsageError(
      "--format npy writes a binary file: give --out FILE.npy."
    )
  if args.out:
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
      raise strategies.UsageError(f"--out: directory {parent} does not exist.")
  return fmt


def _write(args, fmt, indices, scores) -> None:
  if fmt == "npy":
    np.save(args.out, indices.astype(np.int64))
    return
  if fmt == "json":
    text = json.dumps(
      {
        "strategy": args.strategy,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "indices": indices.tolist(),
        "scores": [float(s) if np.isfinite(s) else None for s in scores],
      },
      indent=2,
    )
  else:
    text = "rank,index,score\n" + "".join(
      f"{r},{i},{float(s):.9g}\n"
      for r, (i, s) in enumerate(zip(indices, scores))
    )
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text if text.endswith("\n") else text + "\n")
  else:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _predictions(args):
  kind = next(k for k in ("log_probs", "probs", "logits") if getattr(args, k))
  flag = "--" + kind.replace("_", "-")
  raw = inputs.load_array(getattr(args, kind), flag, args.array)
  log_probs = arrays.to_log_probs(raw, flag[2:], flag, args.layout)
  n, k, c = log_probs.shape
  if raw.ndim == 3 and k > n:
    other = "KNC" if args.layout == "NKC" else "NKC"
    _warn(
      f"{flag}: shape {list(raw.shape)} read as [N={n}, K={k}, C={c}]"
      f" (--layout {args.layout}): more posterior samples than pool points."
      f" If the axes are the other way round, pass --layout {other}."
    )
  if k == 1 and (
    "bald" in args.strategy
    or strategies.is_epig(args.strategy)
    or args.strategy in ("mean-std", "variation-ratios")
  ):
    _warn(
      f"{flag}: one posterior sample (K=1): {args.strategy!r} scores"
      " disagreement between samples, which is 0 for a single model;"
      " save K > 1 samples (an ensemble or MC-dropout passes) or use an"
      " uncertainty strategy (entropy, margin, least-confidence)."
    )
  return raw, kind, flag, log_probs


def _warn(message: str) -> None:
  print(f"{PROG}: warning: {message}", file=sys.stderr)


def _select(args) -> int:
  import jax
  import jax.numpy as jnp

  import alfx

  name = args.strategy
  if args.embedding_probs and not args.embeddings:
    raise strategies.UsageError("--embedding-probs needs --embeddings.")
  make_strategy = strategies.make_strategy(
    name,
    strategies.parse_options(args.option),
    with_targets=bool(args.targets),
  )
  if strategies.needs_embeddings(name) and not args.embeddings:
    raise strategies.UsageError(
      f"strategy {name!r} needs --embeddings FILE ([N, D], the last"
      " layer's inputs of one network)."
    )
  fmt = _output_format(args)

  raw, kind, flag, log_probs = _predictions(args)
  del raw  # the memory map: the data now live in log_probs
  n, k, c = log_probs.shape
  targets = None
  if args.targets:
    targets = arrays.to_log_probs(
      inputs.load_array(args.targets, "--targets"),
      flag[2:],
      "--targets",
      args.layout,
    )
    if targets.shape[1:] != (k, c):
      raise strategies.UsageError(
        f"--targets: [M={targets.shape[0]}, K={targets.shape[1]},"
        f" C={targets.shape[2]}] but the pool's predictions have K={k}"
        f" samples and C={c} classes; both must come from the same"
        " posterior samples and classes."
      )
  if args.embeddings:
    embeddings = arrays.to_matrix(
      inputs.load_array(args.embeddings, "--embeddings"), "--embeddings", n
    )
    if args.embedding_probs:
      probs = arrays.to_matrix(
        inputs.load_array(args.embedding_probs, "--embedding-probs"),
        "--embedding-probs",
        n,
        probs=True,
      )
      if probs.shape[1] != c:
        raise strategies.UsageError(
          f"--embedding-probs: C={probs.shape[1]} classes but the"
          f" predictions have C={c}."
        )
    else:
      probs = jax.jit(lambda lp: jnp.mean(jnp.exp(lp), axis=1))(log_probs)
  else:  # not read by the strategies that run without embeddings
    embeddings = jnp.zeros((n, 0), log_probs.dtype)
    probs = jnp.zeros((n, 0), log_probs.dtype)
  labeled = np.zeros(n, bool)
  for spec in args.labeled:
    labeled |= inputs.read_points(spec, "--labeled", n)
  selectable = np.ones(n, bool)
  if args.mask:
    selectable = inputs.read_points(args.mask, "--mask", n)
  free = int((selectable & ~labeled).sum())
  if args.batch_size > free:
    raise strategies.UsageError(
      f"--batch-size {args.batch_size} but only {free} of N={n} points can"
      f" be picked ({int(labeled.sum())} labelled"
      + (f", {int((~selectable).sum())} outside --mask" if args.mask else "")
      + ")."
    )

  context = alfx.StrategyContext(
    log_probs=log_probs,
    embeddings=embeddings,
    probs=probs,
    labeled=jnp.asarray(labeled),
  )
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      sel = make_strategy(targets)(
        context,
        args.batch_size,
        key=jax.random.key(args.seed),
        mask=jnp.asarray(selectable & ~labeled),
      )
      indices, scores, valid = (np.asarray(a) for a in sel)
    except (ValueError, TypeError) as e:
      raise strategies.UsageError(f"strategy {name!r}: {e}") from None
  for w in caught:
    if _KNC_WARNING not in str(w.message):  # said above in the CLI's terms
      _warn(str(w.message))
  indices, scores = indices[valid], scores[valid]
  if len(indices) < args.batch_size:
    print(
      f"{PROG}: note: {name!r} returned {len(indices)} valid picks of"
      f" --batch-size {args.batch_size} (a dynamic-size strategy may end"
      " its batch early); writing those.",
      file=sys.stderr,
    )
  _write(args, fmt, indices, scores)
  if args.out:
    print(
      f"{PROG}: wrote {len(indices)} picks ({name}, N={n}, K={k}, C={c})"
      f" to {args.out}",
      file=sys.stderr,
    )
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``alfx-select`` with ``argv`` (default ``sys.argv[1:]``).

  Returns:
    The exit status: 0, or 2 after a one-line ``alfx-select: error: ...``
    on stderr (argparse's own errors exit with 2 too).

  Example:
    >>> status = main(["--list"])
    badge ...
    >>> status
    0
  """
  p = build_parser()
  args = p.parse_args(argv)
  if args.list:
    print("\n".join(strategies.list_strategies()))
    return 0
  if not (args.log_probs or args.probs or args.logits):
    p.error("give the predictions: --log-probs, --probs or --logits FILE.")
  if not args.strategy:
    p.error("give --strategy NAME (--list shows the names).")
  if args.batch_size is None:
    p.error("give --batch-size B.")
  try:
    return _select(args)
  except (strategies.UsageError, inputs.InputError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2

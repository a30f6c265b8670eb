"""The ``alfx-experiment`` command line: flags, checks, the whole job.

`main` parses the flags, loads the datasets (`alfx.experiment.datasets`),
runs every strategy on each (`alfx.experiment.run`) and writes the report
(`alfx.experiment.report`) to ``--out``.

May import: `alfx` (the public API), the other `alfx.experiment` modules.
"""

import argparse
from collections.abc import Sequence
import os
import sys
import time

from alfx.experiment import datasets as _datasets
from alfx.experiment import report
from alfx.experiment import run

#: The default comparison (names in the strategy registry).
DEFAULT_STRATEGIES = (
  "random",
  "bald",
  "batchbald",
  "kbald-2",
  "bait-full",
  "bait-binary",
)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="alfx-experiment",
    description="Run a batch active-learning experiment and report it"
    " (CSV, learning-curve PNG, summary table).",
  )
  p.add_argument(
    "--datasets",
    default=",".join(_datasets.DEFAULT_DATASETS),
    help="comma-separated: digits, repeated-digits (default: both)",
  )
  p.add_argument(
    "--data",
    metavar="FILE.npz",
    help="your own data instead: arrays x [N, ...] and y [N],"
    " optionally x_test and y_test",
  )
  p.add_argument(
    "--test-fraction",
    type=float,
    default=0.2,
    help="held out for testing when FILE.npz has no x_test",
  )
  p.add_argument(
    "--strategies",
    default=None,
    help="comma-separated registry names (default: "
    + ",".join(DEFAULT_STRATEGIES)
    + ")",
  )
  p.add_argument(
    "--list",
    action="store_true",
    help="list the registered strategies and exit",
  )
  p.add_argument(
    "--batch-size",
    type=int,
    default=10,
    help="points acquired per round (default 10)",
  )
  p.add_argument(
    "--rounds", type=int, default=15, help="acquisition rounds (default 15)"
  )
  p.add_argument(
    "--initial",
    type=int,
    default=20,
    help="initially labelled points, balanced over classes when"
    " possible (default 20)",
  )
  model = p.add_mutually_exclusive_group()
  model.add_argument(
    "--ensemble",
    type=int,
    default=8,
    metavar="K",
    help="deep ensemble of K members (default 8)",
  )
  model.add_argument(
    "--mc-dropout",
    type=int,
    default=None,
    metavar="K",
    help="MC dropout with K samples instead of an ensemble"
    " (needs --model mlp and --dropout > 0)",
  )
  p.add_argument(
    "--dropout",
    type=float,
    default=0.3,
    help="dropout rate with --mc-dropout (default 0.3)",
  )
  p.add_argument(
    "--model",
    choices=("mlp", "linear"),
    default="mlp",
    help="mlp (hidden layers, --hidden) or linear (a last layer"
    " on fixed features)",
  )
  p.add_argument(
    "--hidden",
    type=int,
    nargs="+",
    default=[64],
    help="MLP hidden widths (default 64)",
  )
  p.add_argument(
    "--train-steps",
    type=int,
    default=100,
    help="optimizer steps per round (default 100)",
  )
  p.add_argument("--train-batch-size", type=int, default=64)
  p.add_argument(
    "--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)"
  )
  p.add_argument(
    "--num-configurations",
    type=int,
    default=1000,
    help="BatchBALD: sampled label configurations of the joint"
    " entropy when exact enumeration is too large"
    " (default 1000)",
  )
  p.add_argument(
    "--chunk-size",
    type=int,
    default=None,
    help="the most pool rows predicted at once (default 1024)",
  )
  p.add_argument(
    "--seeds",
    type=int,
    default=3,
    help="repetitions, run together with jax.vmap (default 3)",
  )
  p.add_argument(
    "--seeds-per-batch",
    type=int,
    default=None,
    help="run the seeds in groups of this many inside the"
    " compiled program (jax.lax.map) instead of all at once"
    " (jax.vmap, the default)",
  )
  p.add_argument("--seed", type=int, default=0, help="first seed")
  p.add_argument(
    "--out",
    default=os.path.join("runs", "experiment"),
    help="output folder (default runs/experiment)",
  )
  p.add_argument("--no-plot", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  return p


def _check_args(p, args):
  if args.seeds_per_batch is not None and args.seeds_per_batch < 1:
    p.error("--seeds-per-batch must be >= 1.")
  if args.chunk_size is not None and args.chunk_size < 1:
    p.error("--chunk-size must be >= 1.")
  for name in (
    "batch_size",
    "initial",
    "seeds",
    "train_steps",
    "train_batch_size",
    "num_configurations",
  ):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1.")
  if args.rounds < 0:
    p.error("--rounds must be >= 0.")
  if args.mc_dropout is None and args.ensemble < 1:
    p.error("--ensemble must be >= 1.")
  if args.mc_dropout is not None and args.mc_dropout < 1:
    p.error("--mc-dropout must be >= 1.")
  if not 0 <= args.dropout < 1:
    p.error("--dropout must be in [0, 1).")
  if args.mc_dropout is not None:
    # The MLP puts dropout after its hidden layers only: without them, or at
    # rate 0, the K "samples" would be K identical predictions (BALD = 0).
    if args.model == "linear":
      p.error(
        f"--mc-dropout {args.mc_dropout} with --model linear: MC"
        " dropout needs a model with dropout, and the linear model"
        " has no dropout layer (its K samples would be identical); use"
        " --model mlp, or --ensemble K for a linear model."
      )
    if args.dropout == 0:
      p.error(
        f"--mc-dropout {args.mc_dropout} with --dropout 0: MC dropout"
        " needs a model with dropout (its K samples would be"
        " identical); set --dropout > 0, or use --ensemble K."
      )
  if args.model == "linear":
    args.hidden = []


def main(argv: Sequence[str] | None = None) -> int:
  p = build_parser()
  args = p.parse_args(argv)
  _check_args(p, args)
  import alfx
  import alfx.loop  # strategy_descriptions is not in the flat API

  if args.list:
    for name, text in alfx.loop.strategy_descriptions().items():
      print(f"{name:16s} {text}")
    return 0
  if args.strategies is None:
    strategies = [s for s in DEFAULT_STRATEGIES if s in alfx.strategy_names()]
    missing = [s for s in DEFAULT_STRATEGIES if s not in strategies]
    if missing:
      print(
        f"note: not available in this build: {', '.join(missing)}",
        file=sys.stderr,
      )
  else:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
  if not strategies:
    p.error("no strategies to run.")

  try:
    for s in strategies:  # an unknown name raises
      alfx.get_strategy(s, **run.strategy_options(s, args))
    if args.data:
      datasets = [_datasets.load_npz_data(args.data, args.test_fraction)]
    else:
      names = [d.strip() for d in args.datasets.split(",") if d.strip()]
      datasets = [_datasets.load_dataset(n) for n in names]
    for d in datasets:
      _datasets.check_budget(d, args.initial, args.rounds, args.batch_size)
  except ValueError as e:
    print(f"alfx-experiment: error: {e}", file=sys.stderr)
    return 2

  os.makedirs(args.out, exist_ok=True)
  posterior = (
    f"MC dropout K={args.mc_dropout} (rate {args.dropout})"
    if args.mc_dropout
    else f"ensemble K={args.ensemble}"
  )
  config = (
    f"{args.model} {args.hidden or ''} {posterior}; B={args.batch_size},"
    f" {args.rounds} rounds from {args.initial} labels;"
    f" {args.seeds} seeds; {args.train_steps} Adam steps"
    f" (lr {args.lr}, batch {args.train_batch_size})"
  )
  print(f"alfx-experiment: {config}")
  for d in datasets:
    print(
      f"  {d.name}: pool {len(d.pool_y)}, test {len(d.test_y)},"
      f" {d.pool_x.shape[1]} features, {d.num_classes} classes"
    )
  print(f"  strategies: {', '.join(strategies)}")

  start = time.perf_counter()
  progress = run.progress_bar(
    len(datasets) * len(strategies) * (args.rounds + 1), not args.no_progress
  )
  rows, summary, compiles = [], [], []
  try:
    for d in datasets:
      r, s, c = run.run_dataset(d, strategies, args, progress)
      rows += r
      summary += s
      compiles.append(c)
  finally:
    progress.close()
  total = time.perf_counter() - start

  csv_path = os.path.join(args.out, "results.csv")
  report.write_csv(rows, csv_path)
  outputs = [csv_path]
  if not args.no_plot:
    png_path = os.path.join(args.out, "learning_curves.png")
    report.plot(rows, png_path, title=config)
    outputs.append(png_path)
  print()
  print(report.summary_table(rows, summary))
  print(
    f"\nAULC: mean test accuracy over the label range (area under the"
    f" learning curve / labels); ± is the std over {args.seeds} seeds;"
    f" acq./train s/round: one acquisition / training and prediction for"
    f" all seeds together (vmapped); compile: the acquisition's (training"
    f" compiled once per dataset: {', '.join(f'{c:.1f}' for c in compiles)}"
    f" s)."
  )
  print(f"total {total:.1f} s; wrote {', '.join(outputs)}")
  return 0

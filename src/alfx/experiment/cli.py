"""The ``alfx-experiment`` command line: flags, checks, the whole job.

`main` parses the flags, loads the datasets (`alfx.experiment.datasets`),
runs every strategy on each (`alfx.experiment.run`) and writes the report
(`alfx.experiment.report`) to ``--out``.

May import: `alfx` (the public API), the other `alfx.experiment` modules.
"""

import argparse
from collections.abc import Sequence
import json
import os
import sys
import time
from typing import Any

from alfx.experiment import datasets as _datasets
from alfx.experiment import durable
from alfx.experiment import models as _models
from alfx.experiment import presets as _presets
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
    " (CSV, learning-curve PNG, summary table). Every finished round is"
    " on disk at once: an interrupted run continues with --resume.",
    # Abbreviated flags would make "which flags were given" (a preset's
    # values yield to them; --data excludes --datasets) ambiguous.
    allow_abbrev=False,
  )
  p.add_argument(
    "--preset",
    choices=_presets.preset_names(),
    default=None,
    help="a paper's experiment: sets its documented flags (explicit flags"
    " still win). "
    + "; ".join(
      f"{name}: {_presets.get_preset(name).description}"
      for name in _presets.preset_names()
    ),
  )
  p.add_argument(
    "--datasets",
    default=None,
    help="comma-separated built-in datasets (default: "
    + ",".join(_datasets.DEFAULT_DATASETS)
    + "); not with --data",
  )
  p.add_argument(
    "--data",
    metavar="FILE.npz",
    help="your own data instead of --datasets: arrays x [N, ...] and y"
    " [N], optionally x_test and y_test",
  )
  p.add_argument(
    "--data-dir",
    metavar="DIR",
    default=None,
    help="where the image datasets' files are (mnist, fashion-mnist,"
    " cifar10, repeated-mnist; one folder each); default $ALFX_DATA_DIR,"
    " else the user's cache (~/.cache/alfx/datasets)",
  )
  p.add_argument(
    "--download",
    action="store_true",
    help="fetch missing image-dataset files from their canonical sources"
    " and check their SHA-256 (off by default: nothing is fetched)",
  )
  p.add_argument(
    "--pool-size",
    type=int,
    default=None,
    metavar="N",
    help="keep N training images of each built-in dataset (drawn once,"
    " fixed seed; before repeated-* datasets repeat them); default all",
  )
  p.add_argument(
    "--test-size",
    type=int,
    default=None,
    metavar="N",
    help="keep N test images of each built-in dataset; default all",
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
    "--strategy-option",
    action="append",
    default=[],
    metavar="NAME:KEY=VALUE",
    help="an option of one strategy, e.g. kbald-dynamic:tolerance=0.1"
    " (repeatable; VALUE is read as JSON: a number, true/false, null, else"
    " a string); --list shows each strategy's options",
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
    choices=_models.MODEL_NAMES,
    default="mlp",
    help="mlp (hidden layers, --hidden), linear (a last layer on fixed"
    " features), cnn (the BatchBALD paper's MNIST CNN) or cifar-cnn (a"
    " small CNN for 32x32x3 images); the CNNs need images (default mlp)",
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
  p.add_argument(
    "--train-batch-size",
    type=int,
    default=64,
    help="labelled points per optimizer step (default 64)",
  )
  p.add_argument(
    "--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)"
  )
  p.add_argument(
    "--epig-targets",
    choices=("pool", "test"),
    default="pool",
    help="EPIG strategies: draw the target inputs from the unlabelled"
    " pool (default) or from the test inputs, predicted under the pool's"
    " posterior samples",
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
    help="output folder (default runs/experiment): results.csv (one row"
    " per round, written as it finishes), run.json (the configuration),"
    " checkpoints/, learning_curves.png",
  )
  resume = p.add_mutually_exclusive_group()
  resume.add_argument(
    "--resume",
    action="store_true",
    help="continue the interrupted run in --out without repeating finished"
    " rounds (refused when the flags differ from its run.json); starts"
    " afresh when --out holds no run",
  )
  resume.add_argument(
    "--overwrite",
    action="store_true",
    help="start afresh even when --out holds an unfinished run (its"
    " results are deleted)",
  )
  p.add_argument(
    "--no-plot", action="store_true", help="do not write the PNG plot"
  )
  p.add_argument(
    "--no-progress",
    action="store_true",
    help="no progress on stderr (default: a bar on a terminal, one line"
    " per round otherwise)",
  )
  return p


def _given(argv, flag):
  """Whether ``flag`` was given in ``argv`` (as ``--flag`` or ``--flag=``)."""
  return any(a == flag or a.startswith(flag + "=") for a in argv)


def _preset_name(argv):
  """The ``--preset`` value in ``argv`` (None without one); the parser
  checks it properly later."""
  pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  pre.add_argument("--preset", default=None)
  known, _ = pre.parse_known_args(argv)
  return known.preset


def _parse_value(text):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def _strategy_options(p, items):
  """``["name:key=value", ...]`` as ``{name: {key: value}}``."""
  options = {}
  for item in items:
    name, sep, pair = item.partition(":")
    key, eq, value = pair.partition("=")
    if not (sep and eq and name.strip() and key.strip()):
      p.error(
        f"--strategy-option {item!r}: expected NAME:KEY=VALUE, e.g."
        " kbald-dynamic:tolerance=0.1."
      )
    options.setdefault(name.strip(), {})[key.strip()] = _parse_value(
      value.strip()
    )
  return options


def _check_args(p, args, argv=()):
  if args.data and _given(argv, "--datasets"):
    p.error(
      "--data and --datasets both given: --data FILE.npz runs on your own"
      " data instead of the built-in datasets; give one of them."
    )
  if args.datasets is None:
    args.datasets = ",".join(_datasets.DEFAULT_DATASETS)
  args.strategy_options = _strategy_options(p, args.strategy_option)
  for name in ("pool_size", "test_size"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1.")
  if args.data and (args.pool_size or args.test_size):
    p.error(
      "--pool-size and --test-size apply to the built-in datasets; with"
      " --data FILE.npz subsample the file yourself."
    )
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


#: Flags that do not change the results: left out of run.json's
#: configuration, so a resumed run may change them.
NOT_CONFIG = (
  "out",
  "resume",
  "overwrite",
  "no_plot",
  "no_progress",
  "list",
  "data_dir",
  "download",
  "strategy_option",  # parsed into strategy_options
)


def run_config(
  args: argparse.Namespace, strategies: Sequence[str]
) -> dict[str, Any]:
  """The configuration a run's results depend on (``run.json``'s
  ``config``): every flag but `NOT_CONFIG`, with the strategies resolved
  and ``--data`` as an absolute path.

  Example:
    >>> from alfx.experiment import cli
    >>> args = cli.build_parser().parse_args(["--rounds", "4", "--out", "x"])
    >>> config = cli.run_config(args, ["random", "bald"])
    >>> config["rounds"], config["strategies"], "out" in config
    (4, ['random', 'bald'], False)
  """
  config = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
  config["strategies"] = list(strategies)
  if args.data:
    config["data"] = os.path.abspath(args.data)
    config["datasets"] = None
  return config


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = build_parser()
  preset = _preset_name(argv)
  if preset is not None:
    try:
      # A preset's values are the parser's defaults: explicit flags win.
      p.set_defaults(**_presets.get_preset(preset).values)
    except ValueError as e:
      p.error(str(e))
  args = p.parse_args(argv)
  _check_args(p, args, argv)
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
  extra = sorted(set(args.strategy_options) - set(strategies))
  if extra:
    p.error(
      f"--strategy-option for {', '.join(extra)}, which"
      f" {'is' if len(extra) == 1 else 'are'} not among the strategies run"
      f" ({', '.join(strategies)})."
    )
  if (
    preset is not None
    and _presets.get_preset(preset).needs_data
    and not args.data
    and not _given(argv, "--datasets")
  ):
    p.error(
      f"--preset {preset} runs on precomputed features: give them with"
      " --data FILE.npz (arrays x [N, D] and y [N]), or --datasets digits"
      " to try it on raw pixels."
    )

  try:
    for s in strategies:  # an unknown name or option raises
      try:
        alfx.get_strategy(s, **run.strategy_options(s, args))
      except (TypeError, ValueError) as e:
        given = args.strategy_options.get(s)
        raise ValueError(
          f"--strategy-option {s}:"
          + ",".join(f"{k}={v}" for k, v in given.items())
          + f": {e}"
          if given
          else str(e)
        ) from e
    if args.data:
      datasets = [_datasets.load_npz_data(args.data, args.test_fraction)]
    else:
      names = [d.strip() for d in args.datasets.split(",") if d.strip()]
      datasets = [
        _datasets.load_dataset(
          n,
          data_dir=args.data_dir,
          download=args.download,
          subsample=args.pool_size,
          test_subsample=args.test_size,
        )
        for n in names
      ]
    for d in datasets:
      _datasets.check_budget(d, args.initial, args.rounds, args.batch_size)
      if args.model in _models.IMAGE_MODELS and d.image_shape is None:
        raise ValueError(
          f"--model {args.model} needs images, and {d.name} holds flat"
          f" features {list(d.pool_x.shape[1:])}: give x as images [N, H,"
          " W(, C)], or use --model mlp or linear."
        )
    config = run_config(args, strategies)
    error = durable.prepare(
      args.out,
      config,
      resume=args.resume,
      overwrite=args.overwrite,
      dataset_names=[d.name for d in datasets],
      strategies=strategies,
      seeds=args.seeds,
      columns=report.CSV_COLUMNS,
    )
  except ValueError as e:
    print(f"alfx-experiment: error: {e}", file=sys.stderr)
    return 2
  if error:
    print(f"alfx-experiment: error: {error}", file=sys.stderr)
    return 2

  posterior = (
    f"MC dropout K={args.mc_dropout} (rate {args.dropout})"
    if args.mc_dropout
    else f"ensemble K={args.ensemble}"
  )
  title = (
    (f"{preset}: " if preset else "")
    + f"{args.model}{f' {args.hidden}' if args.model == 'mlp' else ''}"
    f" {posterior}; B={args.batch_size},"
    f" {args.rounds} rounds from {args.initial} labels;"
    f" {args.seeds} seeds; {args.train_steps} Adam steps"
    f" (lr {args.lr}, batch {args.train_batch_size})"
  )
  print(f"alfx-experiment: {title}")
  for d in datasets:
    print(
      f"  {d.name}: pool {len(d.pool_y)}, test {len(d.test_y)},"
      f" inputs {list(d.input_shape)}, {d.num_classes} classes"
    )
  print(f"  strategies: {', '.join(strategies)}")
  for s, options in args.strategy_options.items():
    print(f"  {s} options: {options}")

  start = time.perf_counter()
  progress = run.progress_bar(
    len(datasets) * len(strategies) * (args.rounds + 1), not args.no_progress
  )
  summary, compiles, interrupted = [], [], False
  # A batch scheduler's SIGTERM (a job's time limit) stops the run like
  # Ctrl-C: the report of what finished is written before the exit.
  on_term = durable.interrupt_on_sigterm()
  try:
    for d in datasets:
      _, s, c = run.run_dataset(d, strategies, args, progress, out=args.out)
      summary += s
      compiles.append(c)
  except KeyboardInterrupt:
    interrupted = True
  finally:
    progress.close()
    on_term()
  total = time.perf_counter() - start

  # The report is read back from the CSV: a resumed run reports every round,
  # an interrupted one what finished.
  csv_path = os.path.join(args.out, durable.RESULTS)
  rows = report.parse_rows(durable.read_rows(csv_path))
  if not interrupted:
    durable.mark_finished(args.out)
  outputs = [csv_path, os.path.join(args.out, durable.MANIFEST)]
  if not args.no_plot and rows:
    png_path = os.path.join(args.out, durable.PLOT)
    report.plot(rows, png_path, title=title)
    outputs.append(png_path)
  print()
  if rows:
    print(report.summary_table(rows, summary))
    print(
      f"\nAULC: mean test accuracy over the label range (area under the"
      f" learning curve / labels); ± is the std over {args.seeds} seeds;"
      " ΔAULC: the paired difference from random and from the best"
      " strategy (mean over seeds, [95% bootstrap interval over seeds]);"
      " acq./train s/round: one acquisition / training and prediction for"
      " all seeds together (vmapped); compile: the acquisition's (training"
      " compiled once per dataset:"
      f" {', '.join(f'{c:.1f}' for c in compiles) or '-'} s)."
    )
  if interrupted:
    print(
      f"\ninterrupted after {total:.1f} s: the finished rounds are in"
      f" {', '.join(outputs)}; continue with the same flags and --resume.",
    )
    return 130
  print(f"total {total:.1f} s; wrote {', '.join(outputs)}")
  return 0

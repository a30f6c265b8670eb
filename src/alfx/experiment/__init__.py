"""The main job: an active-learning experiment on real data, reported.

Run ``alfx-experiment`` (or ``python -m alfx.experiment``) with no flags for
the default comparison: scikit-learn's bundled handwritten digits and their
"repeated" variant (each pool image three times with Gaussian noise, the
Repeated-MNIST setting of the BatchBALD paper in miniature), strategies
random, top-k BALD, BatchBALD, 2-BALD, BAIT (full) and BAIT (binary), three
seeds. Every seed runs in the same compiled program (``jax.vmap``), every
round reuses the program compiled for the first. Outputs, in ``--out``:

* ``results.csv``: one row per dataset, strategy, seed and round: labels,
  test accuracy, training loss, acquisition seconds;
* ``learning_curves.png``: test accuracy against labels, mean and spread
  (min to max) over seeds, one line per strategy, one panel per dataset;
* a summary table on stdout: final accuracy, area under the learning curve,
  mean acquisition time per round.

Data: ``--data FILE.npz`` runs on your own arrays instead: ``x`` (features
``[N, D]`` or images ``[N, H, W(, C)]``, flattened) and integer ``y``
``[N]``; optional ``x_test``/``y_test`` (else ``--test-fraction`` of the
points is held out). Precomputed embeddings of a frozen backbone with
``--model linear`` is the Fast-Fishing setting (train only the last layer).

The scientific libraries the report needs (matplotlib; tqdm for the progress
bar) are imported only here, never by the core library.
"""

import argparse
import csv
import dataclasses
import os
import sys
import time

import numpy as np

#: The default comparison (names in the strategy registry).
DEFAULT_STRATEGIES = ("random", "bald", "batchbald", "kbald-2", "bait-full",
                      "bait-binary")
DEFAULT_DATASETS = ("digits", "repeated-digits")
#: Fixed data split seed: every experiment seed sees the same pool and test set.
DATA_SEED = 0
DIGITS_TEST_SIZE = 500
REPEATS = 3
REPEAT_NOISE = 0.1  # in units of the (globally standardised) pixel scale


@dataclasses.dataclass
class Dataset:
  name: str
  pool_x: np.ndarray  # float32 [N, D]
  pool_y: np.ndarray  # int32 [N]
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int


# ----------------------------------------------------------------------------
# Data.


def _standardise(pool_x, test_x):
  """One global mean and scale from the pool (keeps images' pixel geometry)."""
  mean, std = float(pool_x.mean()), float(pool_x.std())
  std = std if std > 0 else 1.0
  return ((pool_x - mean) / std).astype(np.float32), \
         ((test_x - mean) / std).astype(np.float32)


def load_digits_data(repeated: bool = False) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images, 10 classes, no download).

  500 images are the test set, the other 1297 the pool. ``repeated``: the
  pool holds every image ``REPEATS`` times, each copy with independent
  Gaussian noise of standard deviation ``REPEAT_NOISE`` (after global
  standardisation, as Repeated-MNIST adds N(0, 0.1) to normalised MNIST):
  a batch of near-copies teaches little more than one of them.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(DATA_SEED)
  perm = rng.permutation(len(x))
  test, pool = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
  pool_x, test_x = _standardise(x[pool].astype(np.float32),
                                x[test].astype(np.float32))
  pool_y = y[pool].astype(np.int32)
  if repeated:
    pool_x = np.concatenate([
        pool_x + REPEAT_NOISE * rng.standard_normal(pool_x.shape)
        for _ in range(REPEATS)]).astype(np.float32)
    pool_y = np.concatenate([pool_y] * REPEATS)
  return Dataset("repeated-digits" if repeated else "digits", pool_x, pool_y,
                 test_x, y[test].astype(np.int32), 10)


def _first_key(arrays, names, path):
  for name in names:
    if name in arrays:
      return name
  raise ValueError(
      f"{path}: no array named {' or '.join(repr(n) for n in names)}; the"
      f" file holds {sorted(arrays) or 'no arrays'}. Expected x (features"
      " [N, D] or images [N, H, W(, C)]) and y (integer labels [N]),"
      " optionally x_test and y_test.")


def _labels(y, name, path):
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"{path}: {name} must be labels of shape [N], got shape"
                     f" {list(y.shape)}.")
  if not np.issubdtype(y.dtype, np.integer):
    if not np.issubdtype(y.dtype, np.floating) or \
        not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      raise ValueError(f"{path}: {name} must hold integer class labels, got"
                       f" dtype {y.dtype} with non-integer values.")
  y = y.astype(np.int64)
  if y.size and y.min() < 0:
    raise ValueError(f"{path}: {name} must be class indices >= 0, got"
                     f" {int(y.min())}.")
  return y.astype(np.int32)


def _features(x, name, path):
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"{path}: {name} must be features [N, D] or images"
                     f" [N, H, W(, C)], got shape {list(x.shape)}.")
  if not (np.issubdtype(x.dtype, np.floating) or
          np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{path}: {name} must be numeric, got dtype {x.dtype}.")
  x = x.reshape(x.shape[0], -1).astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{path}: {name} contains NaN or infinite values.")
  return x


def load_npz_data(path: str, test_fraction: float = 0.2) -> Dataset:
  """A user dataset from an ``.npz`` (see the module docstring)."""
  if not os.path.exists(path):
    raise ValueError(f"--data {path}: no such file.")
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  x_key = _first_key(arrays, ("x", "features", "images", "X"), path)
  y_key = _first_key(arrays, ("y", "labels", "Y"), path)
  x = _features(arrays[x_key], x_key, path)
  y = _labels(arrays[y_key], y_key, path)
  if len(x) != len(y):
    raise ValueError(f"{path}: {x_key} has {len(x)} points but {y_key} has"
                     f" {len(y)} labels; they must match one to one.")
  has_test = ("x_test" in arrays, "y_test" in arrays)
  if any(has_test) and not all(has_test):
    raise ValueError(f"{path}: give both x_test and y_test, or neither (then"
                     " --test-fraction of the points is held out).")
  if all(has_test):
    test_x = _features(arrays["x_test"], "x_test", path)
    test_y = _labels(arrays["y_test"], "y_test", path)
    if len(test_x) != len(test_y):
      raise ValueError(f"{path}: x_test has {len(test_x)} points but y_test"
                       f" has {len(test_y)} labels.")
    if test_x.shape[1:] != x.shape[1:]:
      raise ValueError(f"{path}: x_test points have {test_x.shape[1]}"
                       f" features, x points {x.shape[1]}.")
    pool_x, pool_y = x, y
  else:
    if not 0 < test_fraction < 1:
      raise ValueError(f"--test-fraction must be in (0, 1), got"
                       f" {test_fraction}.")
    perm = np.random.default_rng(DATA_SEED).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    test_x, test_y = x[perm[:n_test]], y[perm[:n_test]]
    pool_x, pool_y = x[perm[n_test:]], y[perm[n_test:]]
  if len(pool_x) == 0 or len(test_x) == 0:
    raise ValueError(f"{path}: need at least one pool point and one test"
                     " point.")
  num_classes = int(max(pool_y.max(), test_y.max())) + 1
  if num_classes < 2:
    raise ValueError(f"{path}: the labels hold a single class.")
  pool_x, test_x = _standardise(pool_x, test_x)
  name = os.path.splitext(os.path.basename(path))[0]
  return Dataset(name, pool_x, pool_y, test_x, test_y, num_classes)


def load_dataset(name: str) -> Dataset:
  if name == "digits":
    return load_digits_data(repeated=False)
  if name == "repeated-digits":
    return load_digits_data(repeated=True)
  raise ValueError(f"unknown dataset {name!r}; valid: digits,"
                   " repeated-digits (or --data FILE.npz).")


def check_budget(dataset: Dataset, initial: int, rounds: int, batch_size: int):
  need = initial + rounds * batch_size
  if need > len(dataset.pool_y):
    raise ValueError(
        f"{dataset.name}: the pool has {len(dataset.pool_y)} points but the"
        f" budget needs {need} (--initial {initial} + --rounds {rounds} x"
        f" --batch-size {batch_size}); lower the budget or use more data.")


# ----------------------------------------------------------------------------
# Model.


def make_model(num_classes: int, hidden: tuple[int, ...], dropout: float):
  """A Linen MLP; ``hidden=()`` is a linear model (a last layer only)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class MLP(nn.Module):
    """Dense-ReLU(-Dropout) blocks and a linear head named ``head``."""
    widths: tuple[int, ...]
    classes: int
    rate: float

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = x.reshape(x.shape[0], -1)
      for width in self.widths:
        x = nn.relu(nn.Dense(width)(x))
        if self.rate > 0:
          x = nn.Dropout(self.rate, deterministic=not train)(x)
      return nn.Dense(self.classes, name="head")(x)

  return MLP(tuple(hidden), num_classes, dropout)


# ----------------------------------------------------------------------------
# Running.


def strategy_options(name: str, args) -> dict:
  if name == "batchbald":
    return {"num_configurations": args.num_configurations}
  return {}


def _progress(total: int, enabled: bool):
  """A tqdm bar when tqdm is installed and wanted, else a no-op stand-in."""
  if enabled:
    try:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      return tqdm(total=total, unit="round", file=sys.stderr,
                  dynamic_ncols=True)
    except ImportError:
      pass

  class _Quiet:
    def update(self, n=1):
      pass

    def set_description(self, text):
      pass

    def close(self):
      pass

  return _Quiet()


def run_dataset(dataset: Dataset, strategies, args, progress):
  """Runs every strategy on one dataset, all seeds vmapped; returns rows."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import alfx  # pylint: disable=g-import-not-at-top

  check_budget(dataset, args.initial, args.rounds, args.batch_size)
  mc = args.mc_dropout
  model = make_model(dataset.num_classes, tuple(args.hidden),
                     args.dropout if mc else 0.0)
  forward = alfx.linen_forward(model, train_kwargs={"train": True},
                               eval_kwargs={"train": False})
  optimizer = optax.adam(args.lr)
  data = alfx.Data(jnp.asarray(dataset.pool_x), jnp.asarray(dataset.pool_y),
                   jnp.asarray(dataset.test_x), jnp.asarray(dataset.test_y))
  seeds = [args.seed + s for s in range(args.seeds)]
  per_class = (args.initial % dataset.num_classes == 0 and
               np.bincount(dataset.pool_y, minlength=dataset.num_classes)
               .min() >= args.initial // dataset.num_classes)
  init = lambda k: model.init(k, data.pool_inputs[:1])
  params, states = [], []
  for seed in seeds:
    init_key, state_key = jax.random.split(jax.random.key(seed))
    params.append(init(init_key) if mc else
                  alfx.init_ensemble(init, args.ensemble, key=init_key))
    states.append(alfx.initial_state(data.pool_labels, args.initial,
                                     key=state_key, per_class=per_class))
  stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  params, state0 = stack(params), stack(states)

  def loop_for(strategy):
    loop = alfx.make_loop(
        forward, optimizer, strategy, batch_size=args.batch_size,
        num_steps=args.train_steps, train_batch_size=args.train_batch_size,
        mc_dropout_samples=mc, chunk_size=args.chunk_size,
        strategy_options=strategy_options(strategy, args))
    return alfx.vmap_loop(loop, seeds_per_batch=args.seeds_per_batch)

  # Training and prediction do not depend on the strategy: compile them once
  # per dataset; only the acquisition compiles per strategy.
  t0 = time.perf_counter()
  base = loop_for("random")
  train_and_predict = base.train_and_predict.lower(params, state0,
                                                   data).compile()
  predictions_shape = jax.eval_shape(base.train_and_predict, params, state0,
                                     data)[0]
  shared_compile = time.perf_counter() - t0

  rows, summary = [], []
  for name in strategies:
    progress.set_description(f"{dataset.name}/{name}")
    t0 = time.perf_counter()
    acquire = loop_for(name).acquire.lower(predictions_shape,
                                           state0).compile()
    compile_seconds = time.perf_counter() - t0
    state = state0
    acq_times, train_times, start = [], [], time.perf_counter()
    for r in range(args.rounds + 1):
      if r < args.rounds:
        t = time.perf_counter()
        predictions, accuracy, loss = train_and_predict(params, state, data)
        jax.block_until_ready(predictions)
        train_times.append(time.perf_counter() - t)
        labeled_before = np.asarray(state.labeled).sum(-1)
        t = time.perf_counter()
        state, selection = acquire(predictions, state)
        jax.block_until_ready(state)
        acq_times.append(time.perf_counter() - t)
      else:
        labeled_before = np.asarray(state.labeled).sum(-1)
        # The final evaluation reuses the compiled train-and-predict program
        # (one pool prediction more than needed, one compilation less).
        _, accuracy, _ = train_and_predict(params, state, data)
        loss = None
      accuracy = np.asarray(accuracy)
      for i, seed in enumerate(seeds):
        rows.append({
            "dataset": dataset.name, "strategy": name, "seed": seed,
            "round": r, "num_labeled": int(labeled_before[i]),
            "accuracy": float(accuracy[i]),
            "train_loss": "" if loss is None else float(np.asarray(loss)[i]),
            "acquisition_seconds": (f"{acq_times[-1]:.6f}"
                                    if r < args.rounds else ""),
        })
      progress.update(1)
    summary.append({"dataset": dataset.name, "strategy": name,
                    "compile_seconds": compile_seconds,
                    "run_seconds": time.perf_counter() - start,
                    "acquisition_seconds": float(np.mean(acq_times))
                                           if acq_times else float("nan"),
                    "train_seconds": float(np.mean(train_times))
                                     if train_times else float("nan")})
  return rows, summary, shared_compile


# ----------------------------------------------------------------------------
# Reporting.

CSV_COLUMNS = ("dataset", "strategy", "seed", "round", "num_labeled",
               "accuracy", "train_loss", "acquisition_seconds")


def write_csv(rows, path):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def curves(rows):
  """``{(dataset, strategy): (labels[R+1], accuracy[seeds, R+1])}``, in the
  order of the rows."""
  out = {}
  keys = list(dict.fromkeys((r["dataset"], r["strategy"]) for r in rows))
  for dataset, strategy in keys:
    sel = [r for r in rows if r["dataset"] == dataset and
           r["strategy"] == strategy]
    seeds = sorted({r["seed"] for r in sel})
    rounds = sorted({r["round"] for r in sel})
    acc = np.array([[next(r["accuracy"] for r in sel if r["seed"] == s and
                          r["round"] == t) for t in rounds] for s in seeds])
    # Equal across seeds except for dynamic-size strategies: their mean.
    labels = np.array([[next(r["num_labeled"] for r in sel if r["seed"] == s
                             and r["round"] == t) for t in rounds]
                       for s in seeds]).mean(0)
    out[(dataset, strategy)] = (labels, acc)
  return out


def area_under_curve(labels, accuracy):
  """Mean accuracy over the label range (trapezoid area / label span)."""
  if len(labels) < 2 or labels[-1] == labels[0]:
    return float(np.mean(accuracy))
  area = np.sum((accuracy[..., 1:] + accuracy[..., :-1]) / 2 *
                np.diff(labels), axis=-1)
  return area / (labels[-1] - labels[0])


def plot(rows, path, title=""):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  data = curves(rows)
  datasets = list(dict.fromkeys(d for d, _ in data))
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5),
                           squeeze=False)
  strategies = list(dict.fromkeys(s for _, s in data))
  colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(strategies)}
  for ax, dataset in zip(axes[0], datasets):
    for (d, strategy), (labels, acc) in data.items():
      if d != dataset:
        continue
      mean = acc.mean(0)
      ax.plot(labels, mean, label=strategy, color=colors[strategy], lw=1.8)
      ax.fill_between(labels, acc.min(0), acc.max(0), color=colors[strategy],
                      alpha=0.15, lw=0)
    ax.set_title(dataset)
    ax.set_xlabel("labelled points")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summary_table(rows, summary) -> str:
  data = curves(rows)
  timing = {(s["dataset"], s["strategy"]): s for s in summary}
  header = ("| dataset | strategy | labels | final acc. | AULC |"
            " acq. s/round | train s/round | compile s | run s |")
  lines = [header, "|" + "---|" * 9]
  for (dataset, strategy), (labels, acc) in data.items():
    aulc = area_under_curve(labels, acc)
    t = timing.get((dataset, strategy), {})
    lines.append(
        f"| {dataset} | {strategy} | {labels[0]:g}-{labels[-1]:g} |"
        f" {acc[:, -1].mean():.3f} ± {acc[:, -1].std():.3f} |"
        f" {np.mean(aulc):.3f} ± {np.std(aulc):.3f} |"
        f" {t.get('acquisition_seconds', float('nan')):.3f} |"
        f" {t.get('train_seconds', float('nan')):.3f} |"
        f" {t.get('compile_seconds', float('nan')):.1f} |"
        f" {t.get('run_seconds', float('nan')):.1f} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Command line.


def build_parser():
  p = argparse.ArgumentParser(
      prog="alfx-experiment",
      description="Run a batch active-learning experiment and report it"
                  " (CSV, learning-curve PNG, summary table).")
  p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                 help="comma-separated: digits, repeated-digits"
                      " (default: both)")
  p.add_argument("--data", metavar="FILE.npz",
                 help="your own data instead: arrays x [N, ...] and y [N],"
                      " optionally x_test and y_test")
  p.add_argument("--test-fraction", type=float, default=0.2,
                 help="held out for testing when FILE.npz has no x_test")
  p.add_argument("--strategies", default=None,
                 help="comma-separated registry names (default: "
                      + ",".join(DEFAULT_STRATEGIES) + ")")
  p.add_argument("--list", action="store_true",
                 help="list the registered strategies and exit")
  p.add_argument("--batch-size", type=int, default=10,
                 help="points acquired per round (default 10)")
  p.add_argument("--rounds", type=int, default=15,
                 help="acquisition rounds (default 15)")
  p.add_argument("--initial", type=int, default=20,
                 help="initially labelled points, balanced over classes when"
                      " possible (default 20)")
  model = p.add_mutually_exclusive_group()
  model.add_argument("--ensemble", type=int, default=8, metavar="K",
                     help="deep ensemble of K members (default 8)")
  model.add_argument("--mc-dropout", type=int, default=None, metavar="K",
                     help="MC dropout with K samples instead of an ensemble"
                          " (needs --model mlp and --dropout > 0)")
  p.add_argument("--dropout", type=float, default=0.3,
                 help="dropout rate with --mc-dropout (default 0.3)")
  p.add_argument("--model", choices=("mlp", "linear"), default="mlp",
                 help="mlp (hidden layers, --hidden) or linear (a last layer"
                      " on fixed features)")
  p.add_argument("--hidden", type=int, nargs="+", default=[64],
                 help="MLP hidden widths (default 64)")
  p.add_argument("--train-steps", type=int, default=100,
                 help="optimizer steps per round (default 100)")
  p.add_argument("--train-batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-2,
                 help="Adam learning rate (default 1e-2)")
  p.add_argument("--num-configurations", type=int, default=1000,
                 help="BatchBALD: sampled label configurations of the joint"
                      " entropy when exact enumeration is too large"
                      " (default 1000)")
  p.add_argument("--chunk-size", type=int, default=None,
                 help="the most pool rows predicted at once (default 1024)")
  p.add_argument("--seeds", type=int, default=3,
                 help="repetitions, run together with jax.vmap (default 3)")
  p.add_argument("--seeds-per-batch", type=int, default=None,
                 help="run the seeds in groups of this many inside the"
                      " compiled program (jax.lax.map) instead of all at once"
                      " (jax.vmap, the default)")
  p.add_argument("--seed", type=int, default=0, help="first seed")
  p.add_argument("--out", default=os.path.join("runs", "experiment"),
                 help="output folder (default runs/experiment)")
  p.add_argument("--no-plot", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  return p


def _check_args(p, args):
  if args.seeds_per_batch is not None and args.seeds_per_batch < 1:
    p.error("--seeds-per-batch must be >= 1.")
  if args.chunk_size is not None and args.chunk_size < 1:
    p.error("--chunk-size must be >= 1.")
  for name in ("batch_size", "initial", "seeds", "train_steps",
               "train_batch_size", "num_configurations"):
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
      p.error(f"--mc-dropout {args.mc_dropout} with --model linear: MC"
              " dropout needs a model with dropout, and the linear model"
              " has no dropout layer (its K samples would be identical); use"
              " --model mlp, or --ensemble K for a linear model.")
    if args.dropout == 0:
      p.error(f"--mc-dropout {args.mc_dropout} with --dropout 0: MC dropout"
              " needs a model with dropout (its K samples would be"
              " identical); set --dropout > 0, or use --ensemble K.")
  if args.model == "linear":
    args.hidden = []


def main(argv=None) -> int:
  p = build_parser()
  args = p.parse_args(argv)
  _check_args(p, args)
  import alfx  # pylint: disable=g-import-not-at-top

  if args.list:
    for name, text in alfx.loop.strategy_descriptions().items():
      print(f"{name:16s} {text}")
    return 0
  if args.strategies is None:
    strategies = [s for s in DEFAULT_STRATEGIES if s in alfx.strategy_names()]
    missing = [s for s in DEFAULT_STRATEGIES if s not in strategies]
    if missing:
      print(f"note: not available in this build: {', '.join(missing)}",
            file=sys.stderr)
  else:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
  if not strategies:
    p.error("no strategies to run.")

  try:
    for s in strategies:
      alfx.get_strategy(s, **strategy_options(s, args))  # unknown name raises
    if args.data:
      datasets = [load_npz_data(args.data, args.test_fraction)]
    else:
      names = [d.strip() for d in args.datasets.split(",") if d.strip()]
      datasets = [load_dataset(n) for n in names]
    for d in datasets:
      check_budget(d, args.initial, args.rounds, args.batch_size)
  except ValueError as e:
    print(f"alfx-experiment: error: {e}", file=sys.stderr)
    return 2

  os.makedirs(args.out, exist_ok=True)
  posterior = (f"MC dropout K={args.mc_dropout} (rate {args.dropout})"
               if args.mc_dropout else f"ensemble K={args.ensemble}")
  config = (f"{args.model} {args.hidden or ''} {posterior}; B={args.batch_size},"
            f" {args.rounds} rounds from {args.initial} labels;"
            f" {args.seeds} seeds; {args.train_steps} Adam steps"
            f" (lr {args.lr}, batch {args.train_batch_size})")
  print(f"alfx-experiment: {config}")
  for d in datasets:
    print(f"  {d.name}: pool {len(d.pool_y)}, test {len(d.test_y)},"
          f" {d.pool_x.shape[1]} features, {d.num_classes} classes")
  print(f"  strategies: {', '.join(strategies)}")

  start = time.perf_counter()
  progress = _progress(len(datasets) * len(strategies) * (args.rounds + 1),
                       not args.no_progress)
  rows, summary, compiles = [], [], []
  try:
    for d in datasets:
      r, s, c = run_dataset(d, strategies, args, progress)
      rows += r
      summary += s
      compiles.append(c)
  finally:
    progress.close()
  total = time.perf_counter() - start

  csv_path = os.path.join(args.out, "results.csv")
  write_csv(rows, csv_path)
  outputs = [csv_path]
  if not args.no_plot:
    png_path = os.path.join(args.out, "learning_curves.png")
    plot(rows, png_path, title=config)
    outputs.append(png_path)
  print()
  print(summary_table(rows, summary))
  print(f"\nAULC: mean test accuracy over the label range (area under the"
        f" learning curve / labels); ± is the std over {args.seeds} seeds;"
        f" acq./train s/round: one acquisition / training and prediction for"
        f" all seeds together (vmapped); compile: the acquisition's (training"
        f" compiled once per dataset: {', '.join(f'{c:.1f}' for c in compiles)}"
        f" s).")
  print(f"total {total:.1f} s; wrote {', '.join(outputs)}")
  return 0


"""Reporting the experiment: the CSV, the learning-curve plot, the summary.

* ``results.csv`` (`write_csv`): one row per dataset, strategy, seed and
  round (`CSV_COLUMNS`): labels, test accuracy, training loss, acquisition
  seconds;
* ``learning_curves.png`` (`plot`): test accuracy against labels, mean and
  spread (min to max) over seeds, one line per strategy, one panel per
  dataset;
* the summary table (`summary_table`): final accuracy, area under the
  learning curve (`area_under_curve`), its paired difference from random
  and from the best strategy with a 95% bootstrap interval over seeds
  (`paired_difference`), mean acquisition time per round.

May import: numpy, matplotlib (inside `figure` and `plot` only).
"""

from collections.abc import Mapping
from collections.abc import Sequence
import csv
import textwrap
from typing import Any
from typing import NamedTuple

import numpy as np

CSV_COLUMNS: tuple[str, ...] = (
  "dataset",
  "strategy",
  "seed",
  "round",
  "num_labeled",
  "accuracy",
  "train_loss",
  "acquisition_seconds",
)


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Writes ``rows`` (dicts keyed by `CSV_COLUMNS`) as a CSV to ``path``."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def parse_rows(rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
  """Rows read back from ``results.csv`` (strings) with their numbers typed.

  Example:
    >>> from alfx.experiment.report import parse_rows
    >>> row = {"dataset": "d", "strategy": "s", "seed": "0", "round": "1",
    ...        "num_labeled": "30", "accuracy": "0.5", "train_loss": "",
    ...        "acquisition_seconds": ""}
    >>> r = parse_rows([row])[0]
    >>> r["round"], r["accuracy"], r["train_loss"]
    (1, 0.5, '')
  """
  out = []
  for row in rows:
    r: dict[str, Any] = dict(row)
    for key in ("seed", "round", "num_labeled"):
      r[key] = int(r[key])
    r["accuracy"] = float(r["accuracy"])
    if r.get("train_loss", "") != "":
      r["train_loss"] = float(r["train_loss"])
    out.append(r)
  return out


def curves(
  rows: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
  """``{(dataset, strategy): (labels[R+1], accuracy[seeds, R+1])}``, in the
  order of the rows."""
  out = {}
  keys = list(dict.fromkeys((r["dataset"], r["strategy"]) for r in rows))
  for dataset, strategy in keys:
    sel = [
      r for r in rows if r["dataset"] == dataset and r["strategy"] == strategy
    ]
    seeds = sorted({r["seed"] for r in sel})
    rounds = sorted({r["round"] for r in sel})
    acc = np.array(
      [
        [
          next(r["accuracy"] for r in sel if r["seed"] == s and r["round"] == t)
          for t in rounds
        ]
        for s in seeds
      ]
    )
    # Equal across seeds except for dynamic-size strategies: their mean.
    labels = np.array(
      [
        [
          next(
            r["num_labeled"] for r in sel if r["seed"] == s and r["round"] == t
          )
          for t in rounds
        ]
        for s in seeds
      ]
    ).mean(0)
    out[(dataset, strategy)] = (labels, acc)
  return out


def area_under_curve(
  labels: np.ndarray, accuracy: np.ndarray
) -> float | np.ndarray:
  """Mean accuracy over the label range (trapezoid area / label span).

  Args:
    labels: ``[R + 1]`` labelled-set sizes, increasing.
    accuracy: ``[..., R + 1]`` test accuracy at each size.

  Returns:
    ``[...]`` the area under each curve divided by the label span (the mean
    accuracy when the span is empty).

  Example:
    >>> from alfx.experiment.report import area_under_curve
    >>> acc = np.array([0.5, 0.7, 0.8])
    >>> round(float(area_under_curve(np.array([10, 20, 30]), acc)), 3)
    0.675
  """
  if len(labels) < 2 or labels[-1] == labels[0]:
    return float(np.mean(accuracy))
  area = np.sum(
    (accuracy[..., 1:] + accuracy[..., :-1]) / 2 * np.diff(labels), axis=-1
  )
  return area / (labels[-1] - labels[0])


class Difference(NamedTuple):
  """A paired difference over seeds with its bootstrap interval.

  Attributes:
    mean: the mean over seeds of the per-seed differences.
    low: the lower end of the interval (the ``(1 - level) / 2`` quantile of
      the resampled means).
    high: the upper end.

  Example:
    >>> from alfx.experiment.report import Difference
    >>> Difference(0.02, -0.01, 0.05).low
    -0.01
  """

  mean: float
  low: float
  high: float


#: Resamples and seed of the bootstrap intervals (fixed: a report is
#: reproducible).
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def paired_difference(
  a: np.ndarray,
  b: np.ndarray,
  *,
  level: float = 0.95,
  num_resamples: int = BOOTSTRAP_RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
) -> Difference:
  """The mean of ``a - b`` over paired seeds, with a bootstrap interval.

  Seed ``s`` of both strategies starts from the same labelled set,
  initialisation and keys, so the per-seed differences ``d = a - b`` are
  what varies; the interval is the percentile bootstrap of their mean:
  ``num_resamples`` times, draw ``S`` seeds with replacement and average
  their ``d``; the interval runs between the ``(1 - level) / 2`` and ``(1 +
  level) / 2`` quantiles of those means. The draws come from
  ``np.random.default_rng(seed)`` (a fixed seed: the same report every
  time). With few seeds the interval is narrow and optimistic: with ``S``
  seeds there are only ``S**S`` resamples.

  Args:
    a: ``[S]`` one strategy's value per seed (e.g. its AULC).
    b: ``[S]`` the other's, same seeds in the same order.
    level: the interval's coverage.
    num_resamples: bootstrap resamples.
    seed: the bootstrap's random seed.

  Returns:
    A `Difference` (mean, low, high).

  Example:
    >>> from alfx.experiment.report import paired_difference
    >>> d = paired_difference(np.array([0.8, 0.7, 0.9]),
    ...                       np.array([0.7, 0.7, 0.8]))
    >>> round(d.mean, 3), d.low <= d.mean <= d.high
    (0.067, True)
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 1 or a.shape != b.shape or a.size == 0:
    raise ValueError(
      f"a and b must be [S] values of the same S seeds, paired; got shapes"
      f" {list(a.shape)} and {list(b.shape)}."
    )
  d = a - b
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, d.size, size=(num_resamples, d.size))
  means = d[picks].mean(axis=1)
  low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return Difference(float(d.mean()), float(low), float(high))


def figure(rows: Sequence[dict[str, Any]], title: str = "") -> Any:
  """The learning-curve figure of ``rows`` (one panel per dataset).

  The title is wrapped to the figure's width (and its font shrunk when a
  word alone is too wide), and the layout makes room for it: never clipped.

  Returns:
    A matplotlib ``Figure`` (close it with ``matplotlib.pyplot.close``).

  Example:
    >>> import matplotlib.pyplot as plt
    >>> from alfx.experiment.report import figure
    >>> rows = [{"dataset": "digits", "strategy": "bald", "seed": 0,
    ...          "round": r, "num_labeled": 10 * (r + 1), "accuracy": a}
    ...         for r, a in enumerate([0.5, 0.7])]
    >>> fig = figure(rows, title="a long title " * 20)
    >>> len(fig.axes), fig.get_suptitle().count("\\n") > 0  # wrapped
    (1, True)
    >>> plt.close(fig)
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  data = curves(rows)
  datasets = list(dict.fromkeys(d for d, _ in data))
  fig, axes = plt.subplots(
    1,
    len(datasets),
    figsize=(6 * len(datasets), 4.5),
    squeeze=False,
    layout="constrained",
  )
  strategies = list(dict.fromkeys(s for _, s in data))
  colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(strategies)}
  for ax, dataset in zip(axes[0], datasets):
    for (d, strategy), (labels, acc) in data.items():
      if d != dataset:
        continue
      mean = acc.mean(0)
      ax.plot(labels, mean, label=strategy, color=colors[strategy], lw=1.8)
      ax.fill_between(
        labels, acc.min(0), acc.max(0), color=colors[strategy], alpha=0.15, lw=0
      )
    ax.set_title(dataset)
    ax.set_xlabel("labelled points")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
  if title:
    width = fig.get_figwidth() * fig.dpi * 0.96  # pixels, a small margin
    fontsize = 10.0
    while True:
      # About 0.55 em per character; then measured, and shrunk if a long
      # word still overflows.
      chars = max(20, int(width / (0.55 * fontsize * fig.dpi / 72)))
      text = fig.suptitle(
        textwrap.fill(title, chars, break_long_words=True), fontsize=fontsize
      )
      extent = text.get_window_extent()
      if extent.width <= width or fontsize <= 5:
        break
      fontsize *= 0.85
  return fig


def plot(rows: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
  """Saves the learning curves of ``rows`` (one panel per dataset) to ``path``."""
  import matplotlib.pyplot as plt

  fig = figure(rows, title)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _difference(d: Difference | None) -> str:
  if d is None:
    return "n/a"
  return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def summary_table(
  rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]
) -> str:
  """The Markdown summary: final accuracy, AULC, the paired AULC differences
  from random and from the best strategy (`paired_difference`), timings.

  The differences pair the strategies' AULCs seed by seed; they need the
  same seeds and label range (a strategy cut off by an interrupt has
  fewer rounds: ``n/a``). "The best" is the strategy with the highest mean
  AULC on the dataset (its own difference is 0).
  """
  data = curves(rows)
  timing = {(s["dataset"], s["strategy"]): s for s in summary}
  seeds = {
    (r["dataset"], r["strategy"]): sorted({r["seed"] for r in rows})
    for r in rows
  }
  aulc = {key: area_under_curve(*value) for key, value in data.items()}

  def paired(key, ref):
    if ref is None or seeds[key] != seeds[ref]:
      return None
    if not np.array_equal(data[key][0], data[ref][0]):
      return None
    if key == ref:
      return Difference(0.0, 0.0, 0.0)
    return paired_difference(np.atleast_1d(aulc[key]), np.atleast_1d(aulc[ref]))

  best = {}
  for (dataset, strategy), value in aulc.items():
    full = len(data[(dataset, strategy)][0])
    # The best among the runs with the most rounds (finished ones).
    score = (full, float(np.mean(value)))
    if dataset not in best or score > best[dataset][0]:
      best[dataset] = (score, (dataset, strategy))
  header = (
    "| dataset | strategy | labels | final acc. | AULC |"
    " ΔAULC vs random | ΔAULC vs best |"
    " acq. s/round | train s/round | compile s | run s |"
  )
  lines = [header, "|" + "---|" * 11]
  for (dataset, strategy), (labels, acc) in data.items():
    value = aulc[(dataset, strategy)]
    t = timing.get((dataset, strategy), {})
    random_key = (dataset, "random") if (dataset, "random") in data else None
    lines.append(
      f"| {dataset} | {strategy} | {labels[0]:g}-{labels[-1]:g} |"
      f" {acc[:, -1].mean():.3f} ± {acc[:, -1].std():.3f} |"
      f" {np.mean(value):.3f} ± {np.std(value):.3f} |"
      f" {_difference(paired((dataset, strategy), random_key))} |"
      f" {_difference(paired((dataset, strategy), best[dataset][1]))} |"
      f" {t.get('acquisition_seconds', float('nan')):.3f} |"
      f" {t.get('train_seconds', float('nan')):.3f} |"
      f" {t.get('compile_seconds', float('nan')):.1f} |"
      f" {t.get('run_seconds', float('nan')):.1f} |"
    )
  best_names = ", ".join(
    f"{d}: {key[1]}" for d, (_, key) in sorted(best.items())
  )
  return "\n".join(lines) + f"\n\nbest by mean AULC: {best_names}"

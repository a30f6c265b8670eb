"""Reporting the experiment: the CSV, the learning-curve plot, the summary.

* ``results.csv`` (`write_csv`): one row per dataset, strategy, seed and
  round (`CSV_COLUMNS`): labels, test accuracy, training loss, acquisition
  seconds;
* ``learning_curves.png`` (`plot`): test accuracy against labels, mean and
  spread (min to max) over seeds, one line per strategy, one panel per
  dataset;
* the summary table (`summary_table`): final accuracy, area under the
  learning curve (`area_under_curve`), mean acquisition time per round.

May import: numpy, matplotlib (inside `plot` only).
"""

from collections.abc import Sequence
import csv
from typing import Any

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


def plot(rows: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
  """Saves the learning curves of ``rows`` (one panel per dataset) to ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  data = curves(rows)
  datasets = list(dict.fromkeys(d for d, _ in data))
  fig, axes = plt.subplots(
    1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False
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
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summary_table(
  rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]
) -> str:
  """The Markdown summary: final accuracy, AULC and timings per strategy."""
  data = curves(rows)
  timing = {(s["dataset"], s["strategy"]): s for s in summary}
  header = (
    "| dataset | strategy | labels | final acc. | AULC |"
    " acq. s/round | train s/round | compile s | run s |"
  )
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
      f" {t.get('run_seconds', float('nan')):.1f} |"
    )
  return "\n".join(lines)

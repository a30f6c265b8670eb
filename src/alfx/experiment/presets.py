"""The papers' experiments as ``--preset NAME``: their documented settings.

A preset is a set of flag values (`Preset.values`, keyed by the parser's
destination names) that become the parser's defaults: every flag given
explicitly still wins, so ``--preset batchbald-repeated-mnist --datasets
digits --rounds 2`` runs the preset's model and strategies in miniature.

* ``batchbald-repeated-mnist``: Kirsch, van Amersfoort and Gal, "BatchBALD:
  Efficient and Diverse Batch Acquisition for Deep Bayesian Active
  Learning", NeurIPS 2019 (arXiv:1906.08158), the Repeated-MNIST comparison
  (BALD, BatchBALD, random).
* ``kbald-mnist-b5`` and ``kbald-mnist-b10``: Kirsch, "Speeding Up
  BatchBALD: A k-BALD Family of Approximations for Active Learning"
  (arXiv:2301.12631), Figure 1 and Table 1: 2-BALD against BatchBALD on
  MNIST at acquisition sizes 5 and 10, with the BatchBALD paper's MNIST
  setting.
* ``fast-fishing``: Huseljic, Hahn, Herde, Rauch and Sick, "Fast Fishing:
  Approximating BAIT for Efficient and Scalable Deep Active Image
  Classification", ECML PKDD 2024 (arXiv:2404.08981): a linear head on
  precomputed features, BAIT (full, Exp with c = 2, Binary) against BADGE,
  margin and random; give the features with ``--data FILE.npz``.

Where a paper's setting has no flag here (early stopping, RAdam with a
cosine schedule, weight decay) `Preset.notes` says what stands in for it.

May import: the standard library only.
"""

from typing import Any
from typing import NamedTuple


class Preset(NamedTuple):
  """One paper's experiment.

  Attributes:
    description: one line, for ``--help``.
    reference: the paper (authors, title, venue, arXiv id).
    values: flag values by the parser's destination names (``batch_size``
      for ``--batch-size``); they become the parser's defaults.
    notes: what differs from the paper and why.
    needs_data: the preset runs on ``--data FILE.npz`` (precomputed
      features) unless ``--datasets`` names a built-in dataset.

  Example:
    >>> from alfx.experiment import presets
    >>> p = presets.get_preset("kbald-mnist-b5")
    >>> p.values["batch_size"], p.values["strategies"]
    (5, 'random,batchbald,kbald-2')
  """

  description: str
  reference: str
  values: dict[str, Any]
  notes: str = ""
  needs_data: bool = False


_BATCHBALD = (
  "Kirsch, van Amersfoort and Gal, BatchBALD: Efficient and Diverse Batch"
  " Acquisition for Deep Bayesian Active Learning, NeurIPS 2019"
  " (arXiv:1906.08158)"
)
_KBALD = (
  "Kirsch, Speeding Up BatchBALD: A k-BALD Family of Approximations for"
  " Active Learning (arXiv:2301.12631), Figure 1"
)
_FAST_FISHING = (
  "Huseljic, Hahn, Herde, Rauch and Sick, Fast Fishing: Approximating BAIT"
  " for Efficient and Scalable Deep Active Image Classification, ECML PKDD"
  " 2024 (arXiv:2404.08981)"
)
# The BatchBALD paper's MNIST training: its CNN with dropout 0.5, Adam,
# minibatches of 64, 20 balanced initial labels (2 per class), acquisition
# up to 300 labels. It trains with early stopping on a validation set
# (patience 3, epochs of 5056 samples, about 5 to 15 epochs); a fixed 500
# steps (about 6 such epochs) stands in.
_MNIST_TRAINING = {
  "model": "cnn",
  "dropout": 0.5,
  "lr": 1e-3,
  "train_batch_size": 64,
  "train_steps": 500,
  "initial": 20,
}
_MNIST_NOTES = (
  "The paper trains with early stopping on a validation set (patience 3);"
  " a fixed --train-steps 500 stands in. --seeds 5 is ours."
)

PRESETS: dict[str, Preset] = {
  "batchbald-repeated-mnist": Preset(
    description="BatchBALD paper, Repeated MNIST: BALD vs BatchBALD vs"
    " random, B=10, MC dropout K=10, 20 -> 300 labels",
    reference=_BATCHBALD,
    values={
      **_MNIST_TRAINING,
      "datasets": "repeated-mnist",
      "strategies": "random,bald,batchbald",
      "batch_size": 10,
      "rounds": 28,
      "mc_dropout": 10,
      "seeds": 5,
    },
    notes=_MNIST_NOTES,
  ),
  "kbald-mnist-b5": Preset(
    description="k-BALD note, Figure 1: 2-BALD vs BatchBALD on MNIST at"
    " B=5, MC dropout K=100, 20 -> 300 labels",
    reference=_KBALD,
    values={
      **_MNIST_TRAINING,
      "datasets": "mnist",
      "strategies": "random,batchbald,kbald-2",
      "batch_size": 5,
      "rounds": 56,
      "mc_dropout": 100,
      # MC dropout through the CNN holds ~250 KB per point and sample on
      # CPU: 128 points x 100 samples is ~3 GB (1024 would be ~25 GB).
      "chunk_size": 128,
      "seeds": 5,
    },
    notes=_MNIST_NOTES + " random is added as the reference of the paired"
    " AULC differences.",
  ),
  "kbald-mnist-b10": Preset(
    description="k-BALD note, Figure 1: 2-BALD vs BatchBALD on MNIST at"
    " B=10, MC dropout K=100, 20 -> 300 labels",
    reference=_KBALD,
    values={
      **_MNIST_TRAINING,
      "datasets": "mnist",
      "strategies": "random,batchbald,kbald-2",
      "batch_size": 10,
      "rounds": 28,
      "mc_dropout": 100,
      # MC dropout through the CNN holds ~250 KB per point and sample on
      # CPU: 128 points x 100 samples is ~3 GB (1024 would be ~25 GB).
      "chunk_size": 128,
      "seeds": 5,
    },
    notes=_MNIST_NOTES + " random is added as the reference of the paired"
    " AULC differences.",
  ),
  "fast-fishing": Preset(
    description="Fast Fishing: a linear head on precomputed features"
    " (--data FILE.npz), BAIT full/Exp/Binary vs BADGE, margin, random;"
    " B=10, 10 -> 210 labels",
    reference=_FAST_FISHING,
    values={
      "model": "linear",
      "ensemble": 1,
      "strategies": "random,margin,badge,bait-full,bait-topc,bait-binary",
      "strategy_option": ["bait-topc:top_c=2"],
      "batch_size": 10,
      "initial": 10,
      "rounds": 20,
      "train_batch_size": 128,
      "train_steps": 400,
      "lr": 1e-2,
      "seeds": 5,
    },
    notes="The paper trains the head for 200 epochs with RAdam (lr 0.2,"
    " weight decay 1e-4, cosine annealing) on DINOv2 ViT-S/14 features;"
    " here Adam at 1e-2 for 400 steps of 128 (the same number of passes"
    " over 210 labels) on the features you give. BAIT (Exp) uses c = 2 as"
    " in the paper. --seeds 5 is ours.",
    needs_data=True,
  ),
}


def preset_names() -> tuple[str, ...]:
  """The preset names, in the order of `PRESETS`.

  Example:
    >>> from alfx.experiment import presets
    >>> "fast-fishing" in presets.preset_names()
    True
  """
  return tuple(PRESETS)


def get_preset(name: str) -> Preset:
  """The preset called ``name``; an unknown name raises (listing the valid).

  Example:
    >>> from alfx.experiment import presets
    >>> presets.get_preset("batchbald-repeated-mnist").values["mc_dropout"]
    10
  """
  if name not in PRESETS:
    raise ValueError(
      f"unknown preset {name!r}; valid: {', '.join(preset_names())}."
    )
  return PRESETS[name]

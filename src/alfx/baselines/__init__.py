"""Baselines: uncertainty scores, random and stochastic batches, diversity.

Per-point scores (predictive entropy, margin, least confidence, variation
ratios, mean standard deviation), the random and stochastic (power,
softmax, soft-rank) batches, and the embedding-based BADGE, CoreSet and
TypiClust.

May import: `alfx._core`, `alfx.information`.
"""

from alfx._core.sampling import random_batch
from alfx._core.sampling import stochastic_batch
from alfx.baselines._badge import badge
from alfx.baselines._coreset import coreset
from alfx.baselines._typiclust import typiclust
from alfx.baselines._uncertainty import least_confidence
from alfx.baselines._uncertainty import margin
from alfx.baselines._uncertainty import mean_std
from alfx.baselines._uncertainty import predictive_entropy
from alfx.baselines._uncertainty import variation_ratios

__all__ = (
  "badge",
  "coreset",
  "least_confidence",
  "margin",
  "mean_std",
  "predictive_entropy",
  "random_batch",
  "stochastic_batch",
  "typiclust",
  "variation_ratios",
)

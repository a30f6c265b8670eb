"""BAIT: greedy Fisher-information batch selection and its approximations.

The Fisher factors and `pool_fisher` (the pool's Fisher, built once per
round), and `bait`, the greedy forward-backward selection on the full,
top-c, binary or diagonal Fisher, on a dense or structured path.

May import: `alfx._core`.
"""

from alfx.bait_family._bait import bait
from alfx.bait_family._checks import DENSE_MAX_DIM
from alfx.bait_family._factors import fisher_factors
from alfx.bait_family._factors import FisherFactors
from alfx.bait_family._pool_fisher import pool_fisher
from alfx.bait_family._pool_fisher import PoolFisher

__all__ = (
  "DENSE_MAX_DIM",
  "FisherFactors",
  "PoolFisher",
  "bait",
  "fisher_factors",
  "pool_fisher",
)

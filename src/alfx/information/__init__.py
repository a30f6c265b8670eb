"""Exact information-theoretic kernels over predictive samples.

Entropies, BALD scores, joint entropies and co-information of
``log_probs[N, K, C]`` (N points, K posterior samples, C classes), in nats.
The table kernel here (the joint distribution of a few points' labels) is
what the BALD family builds its batch acquisitions on.

May import: `alfx._core`.
"""

from alfx.information._kernels import bald
from alfx.information._kernels import co_information
from alfx.information._kernels import entropy
from alfx.information._kernels import joint_entropy
from alfx.information._kernels import MAX_CONFIGURATIONS
from alfx.information._kernels import mutual_information

__all__ = (
  "MAX_CONFIGURATIONS",
  "bald",
  "co_information",
  "entropy",
  "joint_entropy",
  "mutual_information",
)

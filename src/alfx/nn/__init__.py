"""Predictions and training for Flax models (needs the ``flax`` extra).

Adapters from Flax Linen and NNX models to a pure `Forward`, chunked
ensemble and MC-dropout predictions over a pool, ensemble initialisation,
and a jitted training step and fit over the labelled subset of a fixed-size
pool. Importing this package needs no Flax; calling a helper without the
extra raises ``ImportError`` naming it.

May import: `alfx._core`.
"""

from alfx.nn._flax import ensemble_predictions
from alfx.nn._flax import FitResult
from alfx.nn._flax import Forward
from alfx.nn._flax import init_ensemble
from alfx.nn._flax import linen_forward
from alfx.nn._flax import make_fit
from alfx.nn._flax import make_train_step
from alfx.nn._flax import mc_dropout_predictions
from alfx.nn._flax import nnx_forward
from alfx.nn._flax import Predictions
from alfx.nn._flax import sample_labeled

__all__ = (
    "FitResult",
    "Forward",
    "Predictions",
    "ensemble_predictions",
    "init_ensemble",
    "linen_forward",
    "make_fit",
    "make_train_step",
    "mc_dropout_predictions",
    "nnx_forward",
    "sample_labeled",
)

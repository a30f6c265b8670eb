"""Predictions and training for Flax models (needs the ``flax`` extra).

Adapters from Flax Linen and NNX models to a pure `Forward`, chunked
ensemble and MC-dropout predictions over a pool, ensemble initialisation,
and a jitted training step and fit over the labelled subset of a fixed-size
pool. Importing this package needs no Flax; calling a helper without the
extra raises ``ImportError`` naming it.

Modules: `_require` (the lazy Flax/optax import), `_forward` (Linen and NNX
adapters), `_predictions` (ensemble and MC-dropout predictions over a pool),
`_training` (ensemble initialisation, the train step and the fit).

May import: `alfx._core`.
"""

from alfx.nn._forward import Forward
from alfx.nn._forward import linen_forward
from alfx.nn._forward import nnx_forward
from alfx.nn._predictions import ensemble_predictions
from alfx.nn._predictions import mc_dropout_predictions
from alfx.nn._predictions import Predictions
from alfx.nn._training import FitResult
from alfx.nn._training import init_ensemble
from alfx.nn._training import make_fit
from alfx.nn._training import make_train_step
from alfx.nn._training import sample_labeled

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

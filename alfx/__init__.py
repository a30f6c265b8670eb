"""alfx: batch active-learning acquisition functions as pure, jitted JAX functions.

Conventions (the public contract):

* Predictive samples are ``log_probs[N, K, C]``: N pool points, K posterior
  samples (ensemble members or MC-dropout draws), C classes, natural log.
  Entropies and information are in nats.
* Selectable points are a boolean ``mask[N]`` over a fixed-size pool, so no
  shape depends on how many points are labelled and nothing recompiles
  between active-learning rounds.
* Every batch selection returns a `Selection` ``(indices, scores, valid)``.
* float32 by default; float64 in, float64 out when ``jax_enable_x64`` is on.
* Bad input raises ``ValueError`` naming the argument and its expected shape.
"""

from alfx._bald import batchbald
from alfx._diversity import badge
from alfx._diversity import coreset
from alfx._diversity import typiclust
from alfx._bait import bait
from alfx._bait import DENSE_MAX_DIM
from alfx._bait import fisher_factors
from alfx._bait import FisherFactors
from alfx._bait import pool_fisher
from alfx._bait import PoolFisher
from alfx._epig import batch_epig
from alfx._epig import epig
from alfx._epig import kepig
from alfx._epig import pool_targets
from alfx._flax import ensemble_predictions
from alfx._flax import FitResult
from alfx._flax import Forward
from alfx._flax import init_ensemble
from alfx._flax import linen_forward
from alfx._flax import make_fit
from alfx._flax import make_train_step
from alfx._flax import mc_dropout_predictions
from alfx._flax import nnx_forward
from alfx._flax import Predictions
from alfx._flax import sample_labeled
from alfx._information import bald
from alfx._information import co_information
from alfx._information import entropy
from alfx._information import joint_entropy
from alfx._information import MAX_CONFIGURATIONS
from alfx._information import mutual_information
from alfx._kbald import conservative_bald
from alfx._kbald import kbald
from alfx._kbald import kbald_dynamic
from alfx._kbald import topk_bald
from alfx._loop import Data
from alfx._loop import History
from alfx._loop import initial_state
from alfx._loop import Loop
from alfx._loop import LoopState
from alfx._loop import make_loop
from alfx._loop import RoundMetrics
from alfx._loop import run_loop
from alfx._loop import vmap_loop
from alfx._registry import get_strategy
from alfx._registry import register_strategy
from alfx._registry import Strategy
from alfx._registry import strategy_names
from alfx._registry import StrategyContext
from alfx._selection import Selection
from alfx._sharding import shard_pool
from alfx._sharding import ShardedPool
from alfx._selection import top_b
from alfx._uncertainty import least_confidence
from alfx._uncertainty import margin
from alfx._uncertainty import mean_std
from alfx._uncertainty import predictive_entropy
from alfx._uncertainty import random_batch
from alfx._uncertainty import stochastic_batch
from alfx._uncertainty import variation_ratios
from alfx._validation import checked

__version__ = "0.1.0"

__all__ = (
    "DENSE_MAX_DIM",
    "Data",
    "FisherFactors",
    "FitResult",
    "Forward",
    "History",
    "Loop",
    "LoopState",
    "MAX_CONFIGURATIONS",
    "PoolFisher",
    "Predictions",
    "RoundMetrics",
    "Selection",
    "ShardedPool",
    "Strategy",
    "StrategyContext",
    "badge",
    "bait",
    "bald",
    "batchbald",
    "batch_epig",
    "checked",
    "co_information",
    "conservative_bald",
    "coreset",
    "ensemble_predictions",
    "entropy",
    "epig",
    "fisher_factors",
    "get_strategy",
    "init_ensemble",
    "initial_state",
    "joint_entropy",
    "kepig",
    "kbald",
    "kbald_dynamic",
    "least_confidence",
    "linen_forward",
    "make_fit",
    "make_loop",
    "make_train_step",
    "margin",
    "mc_dropout_predictions",
    "mean_std",
    "mutual_information",
    "nnx_forward",
    "pool_fisher",
    "pool_targets",
    "predictive_entropy",
    "random_batch",
    "register_strategy",
    "run_loop",
    "sample_labeled",
    "shard_pool",
    "stochastic_batch",
    "strategy_names",
    "top_b",
    "topk_bald",
    "typiclust",
    "variation_ratios",
    "vmap_loop",
)

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

Every name here is also importable from its family package:
`alfx.information`, `alfx.bald_family`, `alfx.bait_family`, `alfx.baselines`,
`alfx.nn` (Flax), `alfx.loop`; `alfx.experiment` is the command-line
experiment.
"""

from alfx._core.checking import checked
from alfx._core.selection import Selection
from alfx._core.selection import top_b
from alfx._core.sharding import shard_pool
from alfx._core.sharding import ShardedPool
from alfx.bait_family import bait
from alfx.bait_family import DENSE_MAX_DIM
from alfx.bait_family import fisher_factors
from alfx.bait_family import FisherFactors
from alfx.bait_family import pool_fisher
from alfx.bait_family import PoolFisher
from alfx.bald_family import batch_epig
from alfx.bald_family import batchbald
from alfx.bald_family import conservative_bald
from alfx.bald_family import epig
from alfx.bald_family import kbald
from alfx.bald_family import kbald_dynamic
from alfx.bald_family import kepig
from alfx.bald_family import pool_targets
from alfx.bald_family import topk_bald
from alfx.baselines import badge
from alfx.baselines import coreset
from alfx.baselines import least_confidence
from alfx.baselines import margin
from alfx.baselines import mean_std
from alfx.baselines import predictive_entropy
from alfx.baselines import random_batch
from alfx.baselines import stochastic_batch
from alfx.baselines import typiclust
from alfx.baselines import variation_ratios
from alfx.information import bald
from alfx.information import co_information
from alfx.information import entropy
from alfx.information import joint_entropy
from alfx.information import MAX_CONFIGURATIONS
from alfx.information import mutual_information
from alfx.loop import Data
from alfx.loop import get_strategy
from alfx.loop import History
from alfx.loop import initial_state
from alfx.loop import Loop
from alfx.loop import LoopState
from alfx.loop import make_loop
from alfx.loop import register_strategy
from alfx.loop import RoundMetrics
from alfx.loop import run_loop
from alfx.loop import Strategy
from alfx.loop import strategy_names
from alfx.loop import StrategyContext
from alfx.loop import vmap_loop
from alfx.nn import ensemble_predictions
from alfx.nn import FitResult
from alfx.nn import Forward
from alfx.nn import init_ensemble
from alfx.nn import linen_forward
from alfx.nn import make_fit
from alfx.nn import make_train_step
from alfx.nn import mc_dropout_predictions
from alfx.nn import nnx_forward
from alfx.nn import Predictions
from alfx.nn import sample_labeled

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

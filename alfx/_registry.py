"""Acquisition strategies by name, behind one uniform call.

Every registered strategy is called as

  ``strategy(key, context, batch_size, mask) -> Selection``

with ``context`` a `StrategyContext` holding everything the model produced for
the pool (``log_probs[N, K, C]``, last-layer ``embeddings[N, D]`` and
``probs[N, C]``, and the ``labeled[N]`` mask), a static ``batch_size`` and the
``mask[N]`` of selectable points. Strategies ignore what they do not need, so
an experiment switches strategy by changing one string. All of them run under
``jit`` and ``vmap``: the active-learning round calls them inside its own
compiled program.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from alfx import _diversity
from alfx import _information
from alfx import _pool
from alfx import _selection
from alfx import _uncertainty


class StrategyContext(NamedTuple):
  """What the model says about the pool, for any strategy.

  Attributes:
    log_probs: ``float[N, K, C]`` predictive samples.
    embeddings: ``float[N, D]`` last-layer inputs (one network, see
      `alfx.ensemble_predictions`).
    probs: ``float[N, C]`` that network's class probabilities.
    labeled: ``bool[N]`` True for points already labelled.
  """

  log_probs: jax.Array
  embeddings: jax.Array
  probs: jax.Array
  labeled: jax.Array


#: ``strategy(key, context, batch_size, mask) -> Selection``
Strategy = Callable[[jax.Array, StrategyContext, int, jax.Array],
                    _selection.Selection]

_FACTORIES: dict[str, Callable[..., Strategy]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_strategy(name: str, factory: Callable[..., Strategy], *,
                      description: str = "", overwrite: bool = False) -> None:
  """Registers ``factory(**options) -> Strategy`` under ``name``.

  Args:
    name: the string experiments use.
    factory: called by `get_strategy` with the user's options; returns a
      `Strategy`.
    description: one line for listings (``alfx-experiment --list``).
    overwrite: replace an existing entry instead of raising.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty string, got {name!r}.")
  if name in _FACTORIES and not overwrite:
    raise ValueError(f"a strategy named {name!r} is already registered; pass"
                     " overwrite=True to replace it.")
  _FACTORIES[name] = factory
  _DESCRIPTIONS[name] = description


def strategy_names() -> tuple[str, ...]:
  """The registered names, sorted."""
  return tuple(sorted(_FACTORIES))


def strategy_descriptions() -> dict[str, str]:
  return {name: _DESCRIPTIONS[name] for name in strategy_names()}


def get_strategy(name: str, **options) -> Strategy:
  """The strategy registered as ``name``, configured by ``options``.

  Args:
    name: one of `strategy_names`.
    **options: forwarded to the strategy's factory (e.g. ``num_samples`` for
      ``"batchbald"``); an option the strategy does not take raises.

  Returns:
    ``strategy(key, context, batch_size, mask) -> Selection``.

  Raises:
    ValueError: unknown ``name`` (the message lists the valid names) or an
      option the strategy does not accept.
  """
  if name not in _FACTORIES:
    raise ValueError(f"unknown strategy {name!r}; valid names:"
                     f" {', '.join(strategy_names())}.")
  try:
    return _FACTORIES[name](**options)
  except TypeError as e:
    raise ValueError(f"strategy {name!r} does not accept options"
                     f" {sorted(options)}: {e}") from e


# ----------------------------------------------------------------------------
# Built-in strategies. Each factory takes the strategy's options and returns
# the uniform call; the public functions do the work (their shape checks run
# under the caller's trace, their value checks are skipped there).


def _topk_bald():

  def strategy(key, context, batch_size, mask):
    del key
    return _selection.top_b(_information.bald(context.log_probs), batch_size,
                            mask=mask)

  return strategy


def _random():

  def strategy(key, context, batch_size, mask):
    del context
    return _uncertainty.random_batch(batch_size, key=key, mask=mask)

  return strategy


def _top_score(score):

  def factory():

    def strategy(key, context, batch_size, mask):
      del key
      return _selection.top_b(score(context.log_probs), batch_size, mask=mask)

    return strategy

  return factory


def _stochastic(score, mode):

  def factory(beta=1.0):

    def strategy(key, context, batch_size, mask):
      return _uncertainty.stochastic_batch(score(context.log_probs),
                                           batch_size, key=key, mode=mode,
                                           beta=beta, mask=mask)

    return strategy

  return factory


def _badge():

  def strategy(key, context, batch_size, mask):
    return _diversity.badge(context.embeddings, context.probs, batch_size,
                            key=key, mask=mask)

  return strategy


def _coreset():

  def strategy(key, context, batch_size, mask):
    del key
    return _diversity.coreset(context.embeddings, context.labeled, batch_size,
                              mask=mask)

  return strategy


def _typiclust(max_clusters=500, k_nn=20, min_cluster_size=5):

  def strategy(key, context, batch_size, mask):
    return _diversity.typiclust(context.embeddings, context.labeled,
                                batch_size, key=key, mask=mask,
                                max_clusters=max_clusters, k_nn=k_nn,
                                min_cluster_size=min_cluster_size)

  return strategy


register_strategy("random", _random,
                  description="uniform without replacement over the pool")
register_strategy("bald", _topk_bald,
                  description="top-B BALD scores (1-BALD, Houlsby et al. 2011)")
for _name, _score, _text in (
    ("entropy", _uncertainty.predictive_entropy,
     "predictive entropy of the mean prediction"),
    ("margin", _uncertainty.margin,
     "smallest gap between the top two mean probabilities"),
    ("least-confidence", _uncertainty.least_confidence,
     "lowest top mean probability"),
    ("variation-ratios", _uncertainty.variation_ratios,
     "disagreement of the samples' votes"),
    ("mean-std", _uncertainty.mean_std,
     "mean over classes of the samples' standard deviation")):
  register_strategy(_name, _top_score(_score), description=f"top-B {_text}")
for _mode in ("power", "softmax", "softrank"):
  register_strategy(
      f"{_mode}bald", _stochastic(_information.bald, _mode),
      description=f"{_mode} sampling of BALD scores (Kirsch et al. 2021),"
      " option beta")
register_strategy("badge", _badge,
                  description="k-means++ seeding on gradient embeddings"
                  " (Ash et al. 2020)")
register_strategy("coreset", _coreset,
                  description="k-center greedy on embeddings (Sener and"
                  " Savarese 2018)")
register_strategy("typiclust", _typiclust,
                  description="most typical points of uncovered k-means"
                  " clusters (Hacohen et al. 2022)")


def flip_selected(labeled: jax.Array, selection: _selection.Selection,
                  axis_name=None) -> jax.Array:
  """``labeled`` with the valid picks of ``selection`` set to True.

  ``selection.indices`` are global pool indices; with ``axis_name`` (under
  ``shard_map`` over the pool) each shard sets only the picks it owns.
  """
  n_local = labeled.shape[0]
  local = selection.indices - _pool.offset(n_local, axis_name)
  owned = selection.valid & (local >= 0) & (local < n_local)
  return labeled.at[jnp.where(owned, local, n_local)].set(True, mode="drop")

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

from alfx import _information
from alfx import _pool
from alfx import _selection


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
# Built-in strategies.


def _random():

  def strategy(key, context, batch_size, mask):
    # top-B of i.i.d. uniform noise over the selectable points: a uniform draw
    # without replacement (ties have probability zero).
    noise = _pool.uniform(key, (context.log_probs.shape[0],))
    return _selection._top_b(noise, mask, batch_size)  # pylint: disable=protected-access

  return strategy


def _topk_bald():

  def strategy(key, context, batch_size, mask):
    del key
    # The unchecked cores: strategies run inside the caller's trace, where
    # value checks cannot run (and would trip on closed-over constants).
    return _selection._top_b(_information._bald(context.log_probs), mask,  # pylint: disable=protected-access
                             batch_size)

  return strategy


register_strategy("random", _random,
                  description="uniform without replacement over the pool")
register_strategy("bald", _topk_bald,
                  description="top-B BALD scores (1-BALD, Houlsby et al. 2011)")


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

"""`Selection`, the result of every batch selection; top-B; the greedy step.

`pick` is the step every greedy acquisition takes (BatchBALD, k-BALD, BAIT,
CoreSet): the best available point, ties to the lower pool index.
`flip_selected` marks a selection's picks labelled.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation


class Selection(NamedTuple):
  """A batch picked from the pool.

  Attributes:
    indices: ``int32[B]`` pool indices in pick order.
    scores: ``float[B]`` the greedy gain of each pick (for top-B selections,
      the utility of the point).
    valid: ``bool[B]`` False only for picks that are not part of the batch:
      the unused tail of a dynamic-size selection, or, when called under
      ``jit`` with fewer selectable points than ``batch_size`` (which the
      concrete-input checks would have refused), the picks that had no
      selectable point left. ``indices[~valid]`` carry no meaning.

  Example:
    >>> sel = alfx.top_b(jnp.array([0.1, 0.7, 0.3]), 2)
    >>> sel.indices.tolist(), sel.valid.tolist()
    ([1, 2], [True, True])
  """

  indices: jax.Array
  scores: jax.Array
  valid: jax.Array


@_validation.fused_checks
def top_b(
  utilities: ArrayLike, batch_size: int, *, mask: ArrayLike | None = None
) -> Selection:
  """Selects the ``batch_size`` selectable points with the highest utility.

  The shared helper behind top-k BALD and every uncertainty score. Ties are
  broken towards the lower index. A selectable point with utility ``-inf``
  still ranks above every masked-out point.

  Args:
    utilities: ``float[N]`` utility of each pool point, higher is better. NaN
      is refused.
    batch_size: static ``int``, the number of points to pick, ``B``.
    mask: optional ``bool[N]``, True where a point may be picked. Defaults to
      all True.

  Returns:
    A :class:`Selection` with ``indices`` in order of decreasing utility and
    ``scores`` the utilities of the picks.

  Example:
    >>> import jax.numpy as jnp, alfx
    >>> alfx.top_b(jnp.array([0.1, 0.7, 0.3]), 2).indices
    Array([1, 2], dtype=int32)
  """
  utilities = _validation.check_utilities(utilities)
  n = utilities.shape[0]
  mask = _validation.check_optional_mask(mask, n)
  _validation.check_batch_size(batch_size, mask, n=n)
  return _top_b(utilities, mask, batch_size=batch_size)


@_sharding.pool_core(pool=("utilities", "mask"), static=("batch_size",))
def _top_b(utilities, mask, batch_size, axis_name=None):
  """`top_b` without input checks; jit/vmap friendly, shards over the pool.

  ``mask=None`` selects every point (built here, not eagerly per call).
  """
  mask = all_selectable(utilities, mask)
  lowest = jnp.finfo(utilities.dtype).min
  # Selectable -inf is lifted to the lowest finite value so that it still
  # outranks the masked-out points (which become -inf).
  ranked = jnp.where(mask, jnp.maximum(utilities, lowest), -jnp.inf)
  values, indices = _pool.top_k(ranked, batch_size, axis_name)
  take = jax.vmap(lambda i: _pool.take(utilities, i, axis_name))
  return Selection(
    indices=indices, scores=take(indices), valid=values > -jnp.inf
  )


def all_selectable(pool, mask):
  """``mask``, or for ``None`` an all-True ``bool[N]`` over the (local) pool."""
  return jnp.ones(pool.shape[:1], bool) if mask is None else mask


def pick(gains, available, axis_name=None):
  """One greedy step: the best available point, marked unavailable.

  Returns ``(index, score, valid, available)``; ``valid`` is False (and
  ``index``, ``score`` are 0) when no point is available. Ties go to the
  lowest global index.
  """
  masked = jnp.where(available, gains, -jnp.inf)
  index, best = _pool.argmax(masked, axis_name)
  valid = best > -jnp.inf
  available = _pool.set_at(available, index, False, axis_name)
  return (
    jnp.where(valid, index, 0),
    jnp.where(valid, best, 0),
    valid,
    available,
  )


def flip_selected(
  labeled: jax.Array, selection: Selection, axis_name=None
) -> jax.Array:
  """``labeled`` with the valid picks of ``selection`` set to True.

  ``selection.indices`` are global pool indices; with ``axis_name`` (under
  ``shard_map`` over the pool) each shard sets only the picks it owns.
  """
  n_local = labeled.shape[0]
  local = selection.indices - _pool.offset(n_local, axis_name)
  owned = selection.valid & (local >= 0) & (local < n_local)
  return labeled.at[jnp.where(owned, local, n_local)].set(True, mode="drop")

"""Randomised batches: stochastic (power, softmax, soft-rank) and random.

Randomised selections are Gumbel-top-k: adding independent Gumbel noise to
``log w_n`` and taking the ``B`` largest is exactly sequential sampling of
``B`` points without replacement with probabilities proportional to the
weights ``w_n`` (Plackett-Luce), and needs no host round-trip. The noise
comes from `pool.gumbel`, so that a sharded run draws the single-device
noise.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation

#: The modes of `stochastic_batch`.
STOCHASTIC_MODES = ("power", "softmax", "softrank")


# ----------------------------------------------------------------------------
# Stochastic batch acquisition.


@_validation.fused_checks
def stochastic_batch(
  utilities: ArrayLike,
  batch_size: int,
  *,
  key: ArrayLike,
  mode: str = "power",
  beta: ArrayLike = 1.0,
  mask: ArrayLike | None = None,
) -> _selection.Selection:
  """Samples a batch with probabilities from the utilities (Kirsch et al. 2021).

  Stochastic batch acquisition replaces top-B by sampling ``B`` selectable
  points without replacement, with sampling weights

  * ``mode='power'``: ``w_n = s_n ** beta`` (PowerBALD is power sampling of
    ``alfx.bald``). Points with ``s_n <= 0`` (or ``-inf``) have weight 0:
    they are never picked while a selectable point of positive utility
    remains; if fewer than ``B`` selectable points have positive utility,
    the rest of the batch is drawn uniformly from the others.
  * ``mode='softmax'``: ``w_n = exp(beta * s_n)`` (Boltzmann). Points with
    ``s_n = -inf`` have weight 0 and fill the batch last, as above.
  * ``mode='softrank'``: ``w_n = r_n ** -beta`` with ``r_n`` the 1-based rank
    of ``s_n`` among the selectable points, in decreasing order (ties to the
    lower index). Depends on the order of the utilities only.

  Implemented as Gumbel-top-k: the ``B`` largest ``log w_n + g_n``, with
  ``g_n`` i.i.d. standard Gumbel, are exactly ``B`` sequential draws without
  replacement from ``w`` (so ``indices`` are in draw order). ``beta = 0`` is
  uniform sampling; ``beta -> inf`` tends to `top_b`. The paper's default is
  ``beta = 1``.

  Args:
    utilities: ``float[N]`` any utility, higher = more informative (BALD,
      margin, entropy...). NaN is refused.
    batch_size: static ``int``, ``B``.
    key: a PRNG key (``jax.random.key(seed)``).
    mode: ``'power'``, ``'softmax'`` or ``'softrank'``.
    beta: float ``>= 0`` (a traced value: changing it does not recompile).
    mask: optional ``bool[N]``, True where a point may be picked.

  Returns:
    A :class:`Selection`; ``scores`` are the utilities of the picks.

  Cost: ``O(N)`` for the noise and a top-k (``O(N log N)`` sort for
  ``'softrank'``); memory a few ``[N]`` vectors.

  Example:
    >>> u = jnp.array([0.1, 0.7, 0.3, 0.0])
    >>> sel = alfx.stochastic_batch(u, 2, key=jax.random.key(0), mode="power")
    >>> sel.indices.shape, bool(sel.valid.all())
    ((2,), True)
  """
  utilities = _validation.check_utilities(utilities)
  n = utilities.shape[0]
  mask = _validation.check_optional_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask, n=n)
  key = _validation.check_key(key)
  _validation.check_choice(mode, "mode", STOCHASTIC_MODES)
  beta = _validation.check_scalar(beta, "beta", minimum=0)
  return _stochastic_batch(
    utilities, mask, key, beta, batch_size=batch_size, mode=mode
  )


@_sharding.pool_core(pool=("utilities", "mask"), static=("batch_size", "mode"))
def _stochastic_batch(
  utilities, mask, key, beta, batch_size, mode, axis_name=None
):
  """`stochastic_batch` without checks; shardable over the pool.

  ``mask=None`` selects every point (built here, not eagerly per call).
  """
  mask = _selection.all_selectable(utilities, mask)
  dtype = utilities.dtype
  beta = jnp.asarray(beta, dtype)
  noise = _pool.gumbel(key, utilities.shape, dtype, axis_name=axis_name)
  # The keys log w + g are ranked; for beta > 1 they are divided by beta
  # (same order, same draw), so that beta * log s cannot overflow to -inf
  # and drop selectable points (beta = 1e38 tends to top-B, as it should).
  shrink = beta > 1
  scale = jnp.where(shrink, 1, beta)
  noise = jnp.where(shrink, noise / jnp.where(shrink, beta, 1), noise)
  if mode == "power":
    positive = utilities > 0
    safe = jnp.where(positive, utilities, 1)
    # beta * log s, with s^0 = 1 also for s = +inf (no 0 * inf = NaN).
    log_w = jnp.where(beta == 0, 0, scale * jnp.log(safe))
    supported = mask & positive
  elif mode == "softmax":
    finite_below = utilities > -jnp.inf
    safe = jnp.where(finite_below, utilities, 0)
    log_w = jnp.where(beta == 0, 0, scale * safe)
    supported = mask & finite_below
  else:  # softrank
    # Rank 1 = highest utility among the selectable points; ties to the
    # lower index (a stable sort of the negated utilities). Ranks depend on
    # the whole pool: sharded, the N utilities (one scalar per point, not
    # the pool's data) are all-gathered and each device sorts them.
    lowest = jnp.finfo(dtype).min
    ranked = _pool.all_gather(
      jnp.where(mask, jnp.maximum(utilities, lowest), -jnp.inf), axis_name
    )
    order = jnp.argsort(-ranked, stable=True)
    rank = (
      jnp.zeros(ranked.shape, dtype)
      .at[order]
      .set(jnp.arange(1, ranked.shape[0] + 1, dtype=dtype))
    )
    rank = lax.dynamic_slice(
      rank, (_pool.offset(utilities.shape[0], axis_name),), utilities.shape
    )
    log_w = -scale * jnp.log(rank)
    supported = mask
  # Weight-0 points (power: s <= 0; softmax: s = -inf) come after every
  # supported point, in uniformly random order among themselves. Two top-k's
  # and a splice keep the two tiers exact in any dtype.
  first = jnp.where(supported, log_w + noise, -jnp.inf)
  second = jnp.where(mask & ~supported, noise, -jnp.inf)
  val_first, idx_first = _pool.top_k(first, batch_size, axis_name)
  val_second, idx_second = _pool.top_k(second, batch_size, axis_name)
  n_first = _pool.psum(jnp.sum(supported, dtype=jnp.int32), axis_name)
  slot = jnp.arange(batch_size)
  tail = jnp.clip(slot - n_first, 0, batch_size - 1)
  use_first = slot < n_first
  indices = jnp.where(use_first, idx_first, idx_second[tail]).astype(jnp.int32)
  # A pick is valid when it came from a selectable point (a -inf key means
  # none was left: possible only under the caller's jit).
  valid = jnp.where(use_first, val_first, val_second[tail]) > -jnp.inf
  scores = jax.vmap(lambda i: _pool.take(utilities, i, axis_name))(indices)
  return _selection.Selection(indices=indices, scores=scores, valid=valid)


# ----------------------------------------------------------------------------
# Random.


@_validation.fused_checks
def random_batch(
  pool: ArrayLike,
  batch_size: int,
  *,
  key: ArrayLike,
  mask: ArrayLike | None = None,
) -> _selection.Selection:
  """Uniformly random batch of selectable points, without replacement.

  The ``B`` selectable points with the largest i.i.d. uniform keys: every
  ``B``-subset of the selectable points is equally likely, and ``indices``
  are in a uniformly random order.

  Args:
    pool: any array whose axis 0 is the pool, ``[N, ...]`` (``log_probs``,
      ``embeddings``, a mask): only its length ``N`` and its sharding are
      read.
    batch_size: static ``int``, ``B``.
    key: a PRNG key.
    mask: optional ``bool[N]``, True where a point may be picked.

  Returns:
    A :class:`Selection` with ``scores`` all 0 (random picks have no gain).

  Example:
    >>> import jax, jax.numpy as jnp, alfx
    >>> sel = alfx.random_batch(jnp.zeros((10, 4)), 3, key=jax.random.key(0))
    >>> sel.indices.shape
    (3,)
  """
  shape = getattr(pool, "shape", ())  # () also for non-arrays: refused
  if len(shape) == 0:
    raise ValueError(
      "pool must be an array whose axis 0 is the pool, [N,"
      " ...] (log_probs, embeddings or a mask), got"
      f" {type(pool).__name__}."
    )
  n = shape[0]
  if mask is None:
    # Carries the pool's sharding, so a sharded pool draws sharded.
    mask = (
      jnp.ones((n,), bool)
      if _sharding.pool_axis(pool) is None
      else _pool_ones(pool)
    )
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask)
  key = _validation.check_key(key)
  return _random_batch(mask, key, batch_size=batch_size)


def _pool_ones(pool):
  """``bool[N]`` True, sharded like axis 0 of ``pool``."""
  # random_batch calls this only when pool_axis(pool) is not None.
  mesh, axis = _sharding.pool_axis(pool)  # pyright: ignore[reportGeneralTypeIssues]
  return jax.device_put(
    jnp.ones((pool.shape[0],), bool),
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis)),
  )


@_sharding.pool_core(pool=("mask",), static=("batch_size",))
def _random_batch(mask, key, batch_size, axis_name=None):
  noise = _pool.uniform(key, mask.shape, axis_name=axis_name)
  # Unselectable points get -1 < every uniform draw in [0, 1).
  values, indices = _pool.top_k(
    jnp.where(mask, noise, -1.0), batch_size, axis_name
  )
  return _selection.Selection(
    indices=indices,
    scores=jnp.zeros((batch_size,), jnp.float32),
    valid=values >= 0,
  )

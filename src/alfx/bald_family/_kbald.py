"""Top-k BALD, k-BALD, its dynamic-size variant and conservative BALD.

Kirsch (2023), sections 2 and 4 (references below).

Notation as in `alfx.bald_family._batchbald`: ``S`` the points picked so
far, ``s = |S|``, ``I(U)`` the co-information of the labels of a set ``U``
(``I({i}) = H[Y_i]``, ``I({i, j}) = I[Y_i; Y_j]``).

k-BALD of order ``k`` approximates BatchBALD by inclusion-exclusion truncated
at ``k``-wise terms (Kirsch 2023, eq. 6). The greedy gain of a candidate ``n`` is

  ``gain_k(n | S) = BALD(n) + sum_{T subset S, 1 <= |T| <= k-1} (-1)**|T| I(T + {n})``.

Writing ``I(T + {n}) = sum_{V subset T} (-1)**|V| H[Y_n | Y_V]`` and
collecting the terms of each ``V`` gives one formula for every order:

  ``gain_k(n | S) = -E_k H[Y_n | omega_k] + sum_{u=0}^{k-1} a_u(s) D_u(n)``,
  ``D_u(n) = sum_{U subset S, |U| = u} H[Y_n | Y_U]`` (``D_0 = H[Y_n]``),
  ``a_u(s) = sum_{i=0}^{k-1-u} (-1)**i binom(s - u, i)``.

For ``k = 1`` it is BALD, for ``k = 2`` ``BALD(n) - sum_{j in S} I[Y_n; Y_j]``,
and for ``k > s`` only ``a_s = 1`` survives: the BatchBALD gain
``H[Y_n | Y_S] - E_k H[Y_n | omega_k]``. The ``D_u`` are per-point state of
the scan; when ``j`` joins ``S`` only the subsets containing it are new:
``D_u(n) += sum_{U' subset S_old, |U'| = u-1} H[Y_n | Y_U', Y_j]``. Each of
those is the table kernel of `_batchbald` on the ``C**u`` configurations of
``U' + {j}``, all subsets of one size stacked into one table
(`alfx.bald_family._increments`, shared with k-EPIG).

References:
  A. Kirsch, "Speeding Up BatchBALD: A k-BALD Family of Approximations for
  Active Learning", arXiv:2301.12631, 2023.

  N. Houlsby, F. Huszar, Z. Ghahramani and M. Lengyel, "Bayesian Active
  Learning for Classification and Preference Learning", arXiv:1112.5745,
  2011.

May import: `alfx._core`, `alfx.information`, `alfx.bald_family._batchbald`,
`alfx.bald_family._increments`.
"""

import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family._increments import increment_picks
from alfx.bald_family._increments import score_picks
from alfx.bald_family._increments import SubsetIncrements
from alfx.information import _kernels as _information


def _table_configurations(batch_size: int, order: int, c: int) -> int:
  """Rows of all increment tables of one step: sum_u binom(B-1, u-1) C**u."""
  return sum(math.comb(batch_size - 1, u - 1) * c**u for u in range(1, order))


def _check_order(order, batch_size: int, c: int) -> int:
  order = _validation.check_positive_int(order, "order")
  order = min(order, batch_size)
  rows = _table_configurations(batch_size, order, c)
  if (
    c**order > _information.MAX_CONFIGURATIONS
    or rows > _information.MAX_CONFIGURATIONS
  ):
    raise ValueError(
      f"order={order} with C={c} and batch_size={batch_size} needs joint"
      f" tables of C**order = {c**order} configurations ({rows} table rows"
      f" per step), above alfx.MAX_CONFIGURATIONS ="
      f" {_information.MAX_CONFIGURATIONS}; use a lower order, or"
      " alfx.batchbald."
    )
  return order


def _kbald_leading(state, marginal, cond):
  """``t -> a_0(t) H[Y_n] - E_k H[Y_n | omega_k]``: the k-BALD gain's terms
  without ``D_u`` (``u >= 1``)."""
  return lambda t: -cond + state.coefficients[t][0] * marginal


@_validation.fused_checks
def kbald(
  log_probs: ArrayLike,
  batch_size: int,
  *,
  order: int = 2,
  mask: ArrayLike | None = None,
  chunk_size: int | None = None,
) -> _selection.Selection:
  r"""Greedy k-BALD: BatchBALD's inclusion-exclusion truncated at ``order``.

  Kirsch (2023), sec. 2. The gain of adding ``n`` to the picked set ``S`` is

    ``BALD(n) + sum_{T subset S, 1 <= |T| <= order-1} (-1)**|T| I(T + {n})``

  with ``I`` the co-information: ``order=1`` is top-k BALD, ``order=2``
  subtracts ``sum_{j in S} I[Y_n; Y_j]`` (2-BALD), ``order=3`` adds back the
  co-information with every pair of picked points. ``order >= batch_size``
  is exact BatchBALD (the same picks and gains as `batchbald` in its exact
  regime). The scan keeps ``D_u(n) = sum_{|U| = u, U subset S} H[Y_n | Y_U]``
  for ``u < order`` per pool point and adds, per step, only the terms that
  contain the point just picked (see the module docstring).

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities.
    batch_size: static ``int`` ``B``.
    order: static ``int >= 1``; values above ``batch_size`` act as
      ``batch_size``.
    mask: optional ``bool[N]``, True where a point may be picked.
    chunk_size: static ``int``, the most pool points per chunk (see
      `alfx.batchbald`).

  Returns:
    `alfx.Selection`; ``scores`` are the order-``k`` gains (they can be
    negative for ``order >= 2``, Kirsch 2023, Figure 3).

  Cost: step ``s`` costs ``sum_{u=1}^{order-1} binom(s-1, u-1) 2 C**(u+1) K N``
  FLOPs, i.e. ``2 C**2 K N`` for 2-BALD and ``2 (s-1) C**3 K N`` more for
  3-BALD. Memory beyond the input: one copy of the probabilities
  (``N K C``), ``(order - 1) N`` floats of state, the increment tables
  (``sum_u binom(B-1, u-1) C**u K`` floats) and temporaries of at most
  ``max(2**19, chunk_size * C * 64)`` floats.

  Raises:
    ValueError: on bad shapes or values, or tables above
      ``alfx.MAX_CONFIGURATIONS``.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> alfx.kbald(lp, 2, order=2).indices.tolist()
    [0, 3]
  """
  log_probs = _validation.check_log_probs(log_probs)
  n, _, c = log_probs.shape
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask)
  order = _check_order(order, batch_size, c)
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  return _kbald(
    log_probs, mask, batch_size=batch_size, order=order, chunk_size=chunk_size
  )


@_sharding.pool_core(
  pool=("log_probs", "mask"), static=("batch_size", "order", "chunk_size")
)
def _kbald(log_probs, mask, batch_size, order, chunk_size, axis_name=None):
  """`kbald` without input checks, over the local slice of the pool."""
  n = log_probs.shape[0]
  if order == 1:
    marginal, cond = _bald.pool_entropies(log_probs, min(chunk_size, n))
    return score_picks(marginal - cond, mask, batch_size, axis_name)

  probs_t, marginal, cond = _bald.prepare(log_probs, chunk_size)
  state = SubsetIncrements(log_probs, batch_size, order, chunk_size)
  return increment_picks(
    log_probs,
    mask,
    probs_t,
    state,
    _kbald_leading(state, marginal, cond),
    batch_size,
    axis_name,
  )


# --------------------------------------------------------------------------
# Top-k BALD: k-BALD of order 1.


@_validation.fused_checks
def topk_bald(
  log_probs: ArrayLike, batch_size: int, *, mask: ArrayLike | None = None
) -> _selection.Selection:
  """Top-B BALD (1-BALD): the ``batch_size`` points of highest BALD score.

  ``BALD(n) = H[Y_n] - E_k H[Y_n | omega_k]`` (Houlsby et al. 2011), each
  point scored on its own, ignoring redundancy within the batch. Equal to
  ``kbald(..., order=1)``; picks as a greedy scan of ``batch_size`` pool-wide
  argmaxes (shardable over the pool axis, ties to the lower index).

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities.
    batch_size: static ``int``, the number of points ``B``.
    mask: optional ``bool[N]``, True where a point may be picked.

  Returns:
    `alfx.Selection`; ``scores`` are the BALD scores of the picks, in
    decreasing order. Cost ``O(N K C)``; memory ``O(N)`` beyond the input.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> sel = alfx.topk_bald(lp, 2)
    >>> sel.indices.tolist(), [round(float(s), 3) for s in sel.scores]
    ([0, 3], [0.368, 0.193])
  """
  return kbald(log_probs, batch_size, order=1, mask=mask)


def _triple_information(picked, lp, t, batch_size):
  """``sum_{l < m < t} I(Y_l; Y_m; Y_j)`` for the candidate ``lp`` = ``j``."""
  pairs = [(l, m) for m in range(batch_size - 1) for l in range(m)]
  if not pairs:
    return jnp.zeros((), lp.dtype)
  pairs = np.asarray(pairs, np.int32)
  members = jnp.concatenate(
    [picked[pairs], jnp.broadcast_to(lp, (len(pairs), 1) + lp.shape)], axis=1
  )  # [n_pairs, 3, K, C]
  co = jax.vmap(_information.co_information_unchecked)(members)
  return jnp.sum(jnp.where(jnp.asarray(pairs[:, 1]) < t, co, 0))


@_validation.fused_checks
def kbald_dynamic(
  log_probs: ArrayLike,
  batch_size: int,
  *,
  tolerance: float,
  mask: ArrayLike | None = None,
  chunk_size: int | None = None,
) -> _selection.Selection:
  r"""2-BALD with a dynamic batch size: stop when 3-BALD disagrees.

  Kirsch (2023), "Dynamic Acquisition Batch Sizes". Points are picked greedily by
  their 2-BALD gain ``g2``. Alongside, the 2- and 3-BALD values of the
  growing batch ``A`` are tracked:
  ``V2(A) = sum_i BALD(i) - sum_{i<j} I[Y_i; Y_j]`` (the sum of the ``g2``)
  and ``V3(A) = V2(A) + sum_{i<j<l} I(Y_i; Y_j; Y_l)`` (co-information of
  picked triples only: no per-candidate order-3 terms). The candidate of
  step ``t`` joins the batch iff

    ``g2 > 0``  and  ``|V3(A + {n}) - V2(A + {n})| <= tolerance * |V3(A + {n})|``.

  The first candidate that fails ends the batch: it and every later entry
  have ``valid=False`` (``indices`` and ``scores`` 0), and no more gains are
  computed. The first two picks always pass the divergence test (there is no
  triple yet).

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities.
    batch_size: static ``int``, the largest batch ``B``.
    tolerance: non-negative float scalar (may be traced: no recompilation
      when it changes), the relative divergence allowed between 3- and 2-BALD.
    mask: optional ``bool[N]``, True where a point may be picked.
    chunk_size: static ``int``, the most pool points per chunk (see
      `alfx.batchbald`).

  Returns:
    `alfx.Selection` of static length ``batch_size``; the batch is the
    prefix where ``valid`` is True. ``scores`` are the 2-BALD gains.

  Cost: that of ``kbald(order=2)`` up to the stop, plus
  ``binom(t, 2) C**3 K`` per step for the triples (no pool-size factor).

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> sel = alfx.kbald_dynamic(lp, 3, tolerance=0.1)
    >>> sel.indices[sel.valid].tolist()
    [0, 3, 1]
  """
  log_probs = _validation.check_log_probs(log_probs)
  n, _, c = log_probs.shape
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask, "batch_size")
  tolerance = _validation.check_scalar(tolerance, "tolerance", minimum=0)
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  _check_order(min(3, batch_size), batch_size, c)
  return _kbald_dynamic(
    log_probs, mask, tolerance, batch_size=batch_size, chunk_size=chunk_size
  )


@_sharding.pool_core(
  pool=("log_probs", "mask"), static=("batch_size", "chunk_size")
)
def _kbald_dynamic(
  log_probs, mask, tolerance, batch_size, chunk_size, axis_name=None
):
  """`kbald_dynamic` without input checks, over the local slice of the pool."""
  n, k, c = log_probs.shape
  dtype = log_probs.dtype
  probs_t, marginal, cond = _bald.prepare(log_probs, chunk_size)
  state = SubsetIncrements(log_probs, batch_size, 2, chunk_size)
  leading = _kbald_leading(state, marginal, cond)
  tolerance = jnp.asarray(tolerance, dtype)
  zero = jnp.zeros((), dtype)

  def run(carry, t):
    available, picked, d, v2, v3, _ = carry
    d, gains = state.gains_and_update(probs_t, leading(t), d, picked, t)
    index, g2, valid, available = _selection.pick(gains, available, axis_name)
    lp = _pool.take(log_probs, index, axis_name)
    new_v2 = v2 + g2
    new_v3 = v3 + g2 + _triple_information(picked, lp, t, batch_size)
    accept = (
      valid
      & (g2 > 0)
      & (jnp.abs(new_v3 - new_v2) <= tolerance * jnp.abs(new_v3))
    )
    picked = picked.at[t].set(lp)
    carry = (available, picked, d, new_v2, new_v3, ~accept)
    return carry, (
      jnp.where(accept, index, 0),
      jnp.where(accept, g2, 0),
      accept,
    )

  def skip(carry, t):
    del t
    return carry, (jnp.zeros((), jnp.int32), zero, jnp.zeros((), bool))

  def step(carry, t):
    # Data-dependent: under vmap both branches run (correct, not faster).
    return lax.cond(carry[-1], skip, run, carry, t)

  init = (
    mask,
    jnp.zeros((batch_size, k, c), dtype),
    jnp.zeros((n, 1), dtype),
    zero,
    zero,
    jnp.zeros((), bool),
  )
  _, (indices, scores, valid) = lax.scan(
    step, init, jnp.arange(batch_size, dtype=jnp.int32)
  )
  return _selection.Selection(indices, scores, valid)


@_validation.fused_checks
def conservative_bald(
  log_probs: ArrayLike,
  batch_size: int,
  *,
  threshold: float,
  budget: float | None = None,
  mask: ArrayLike | None = None,
  chunk_size: int | None = None,
) -> _selection.Selection:
  r"""Conservative BALD: top BALD picks, excluding points that overlap a pick.

  Kirsch (2023), "Future Work". Repeatedly picks the remaining candidate of
  highest BALD score ``j`` and removes from the candidates every ``n`` with
  ``I[Y_n; Y_j] > threshold``. The batch ends when no candidate remains or,
  with a ``budget``, before the pick that would make the pairwise total
  correlation of the batch

    ``TC2(A) = sum_{i < j in A} I[Y_i; Y_j]``

  (the 2-BALD estimate of ``TC[Y_A] = sum_i H[Y_i] - H[Y_A]``, Kirsch 2023,
  "Total Correlation") exceed ``budget``. Entries after the end have
  ``valid=False`` (``indices`` and ``scores`` 0).

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities.
    batch_size: static ``int``, the largest batch ``B``.
    threshold: non-negative float scalar (may be traced), nats.
    budget: optional non-negative float scalar (may be traced), nats; None
      for no budget.
    mask: optional ``bool[N]``, True where a point may be picked.
    chunk_size: static ``int``, the most pool points per chunk (see
      `alfx.batchbald`).

  Returns:
    `alfx.Selection`; ``scores`` are the BALD scores of the picks.

  Cost: per pick one pass over the pool, ``2 C**2 K N`` FLOPs (the mutual
  information of every candidate with the pick). Memory beyond the input: one
  copy of the probabilities and ``2 N`` floats of state.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> sel = alfx.conservative_bald(lp, 2, threshold=0.5)
    >>> sel.indices.tolist(), sel.valid.tolist()
    ([0, 3], [True, True])
  """
  log_probs = _validation.check_log_probs(log_probs)
  n = log_probs.shape[0]
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask, "batch_size")
  threshold = _validation.check_scalar(threshold, "threshold", minimum=0)
  budget = _validation.check_scalar(budget, "budget", minimum=0, optional=True)
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  return _conservative_bald(
    log_probs,
    mask,
    threshold,
    budget,
    batch_size=batch_size,
    chunk_size=chunk_size,
  )


@_sharding.pool_core(
  pool=("log_probs", "mask"), static=("batch_size", "chunk_size")
)
def _conservative_bald(
  log_probs, mask, threshold, budget, batch_size, chunk_size, axis_name=None
):
  """`conservative_bald` without input checks, over the local pool slice."""
  n = log_probs.shape[0]
  dtype = log_probs.dtype
  probs_t, marginal, cond = _bald.prepare(log_probs, chunk_size)
  bald = marginal - cond
  threshold = jnp.asarray(threshold, dtype)
  zero = jnp.zeros((), dtype)

  def run(carry, t):
    del t
    available, pair_tc, tc, _ = carry
    index, score, valid, _ = _selection.pick(bald, available, axis_name)
    new_tc = tc + _pool.take(pair_tc, index, axis_name)
    if budget is not None:
      valid = valid & (new_tc <= budget)
    lp = _pool.take(log_probs, index, axis_name)
    weights, mass = _bald.posterior_table(lp.T)  # p(omega | y_j), p(y_j)
    mi = jnp.maximum(
      marginal
      - _bald.table_entropy(probs_t, weights, mass, chunk_size=chunk_size),
      0,
    )
    available = available & (mi <= threshold)
    available = _pool.set_at(available, index, False, axis_name)
    carry = (available, pair_tc + mi, new_tc, ~valid)
    return carry, (
      jnp.where(valid, index, 0),
      jnp.where(valid, score, 0),
      valid,
    )

  def skip(carry, t):
    del t
    return carry, (jnp.zeros((), jnp.int32), zero, jnp.zeros((), bool))

  def step(carry, t):
    return lax.cond(carry[-1], skip, run, carry, t)

  init = (mask, jnp.zeros((n,), dtype), zero, jnp.zeros((), bool))
  _, (indices, scores, valid) = lax.scan(
    step, init, jnp.arange(batch_size, dtype=jnp.int32)
  )
  return _selection.Selection(indices, scores, valid)

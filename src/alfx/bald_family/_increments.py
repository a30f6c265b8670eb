"""The inclusion-exclusion machinery shared by k-BALD and k-EPIG.

Both keep per pool point the sums ``D_u`` (``1 <= u < order``) of a
table-kernel term over the subsets of the picks of size ``u`` and combine
them with the coefficients ``a_u(s)`` of the truncated inclusion-exclusion
(derivation in `alfx.bald_family._kbald`): `kbald_coefficients`,
`colex_subsets`, the incremental update `SubsetIncrements`, and the greedy
scans `score_picks` (order 1) and `increment_picks`.

May import: `alfx._core`, `alfx.information`, `alfx.bald_family._batchbald`.
"""

import itertools
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx.bald_family import _batchbald as _bald
from alfx.information import _kernels as _information

#: Increment tables are split into blocks of whole subsets (at least this
#: many rows) so that the blocks of subsets not yet active are skipped (k-BALD
#: and k-EPIG).
MIN_BLOCK_ROWS = 64


def kbald_coefficients(batch_size: int, order: int) -> np.ndarray:
  """``a[s, u] = sum_{i=0}^{order-1-u} (-1)**i binom(s-u, i)`` for ``u <= s``.

  ``[batch_size, order]``; entries with ``u > s`` are 0 (``D_u = 0`` there).
  """
  a = np.zeros((batch_size, order))
  for s in range(batch_size):
    for u in range(min(order, s + 1)):
      a[s, u] = sum((-1) ** i * math.comb(s - u, i) for i in range(order - u))
  return a


def colex_subsets(m: int, size: int) -> np.ndarray:
  """All ``size``-subsets of ``range(m)`` in colex order, ``[binom(m, size), size]``.

  In colex order the subsets of ``range(p)`` come first for every ``p``, so
  the subsets of the first ``p`` picks are a prefix of length
  ``binom(p, size)``.
  """
  subsets = sorted(
    itertools.combinations(range(m), size), key=lambda x: tuple(reversed(x))
  )
  return np.asarray(subsets, np.int32).reshape(len(subsets), size)


class SubsetIncrements:
  """The order-``k`` increments of k-BALD and k-EPIG over subsets of the picks.

  The gains are ``leading(n) + sum_{u=1}^{order-1} a_u(s) D_u(n)``, each
  ``D_u`` a sum over the subsets ``U`` of the picks with ``|U| = u`` of a
  table-kernel term of ``U``. When pick ``j`` joins ``S``, only the subsets
  ``U' + {j}`` (``U'`` of the earlier picks, ``|U'| = u - 1``) are new:
  their tables (`table`), stacked into one, add to ``D_u``. Static set-up
  here: the subsets (colex order), their counts per step and the
  coefficients ``a_u(s)``.
  """

  def __init__(self, log_probs, batch_size: int, order: int, chunk_size: int):
    self.order = order
    self.c = log_probs.shape[-1]
    self.chunk_size = chunk_size
    self.coefficients = jnp.asarray(
      kbald_coefficients(batch_size, order), log_probs.dtype
    )
    self.subsets = {
      u: colex_subsets(max(batch_size - 1, 0), u - 1) for u in range(1, order)
    }
    # counts[u][t]: subsets U' of the t - 1 points picked before the previous
    # pick (which is pick t - 1); 0 at t = 0, where there is no previous pick.
    self.counts = {
      u: jnp.asarray(
        [0] + [math.comb(t - 1, u - 1) for t in range(1, batch_size + 1)],
        jnp.int32,
      )
      for u in range(1, order)
    }

  def table(self, log_tables, t, u: int):
    """The stacked tables of the new subsets.

    Args:
      log_tables: ``[n_sub, C**u, K]``, ``log p(y_U | omega_k)`` of each
        subset ``U = U' + {j}``.
      t: the step (traced): sampled tables draw fresh rows per step.
      u: the subset size (static).

    Returns:
      ``(W[n_sub, R, K], rho[n_sub, R])``, ``R`` rows per subset. Here
      k-BALD's ``H[Y_n | Y_U]`` (`alfx.bald_family._batchbald.posterior_table`,
      ``R = C**u``); k-EPIG overrides it.
    """
    del t, u
    return _bald.posterior_table(log_tables)

  def increment(self, probs_t, picked, t, u):
    """``D_u``'s new terms: the tables of ``U' + {j}``, ``j`` = pick t-1.

    The tables of all subsets are stacked into one (colex order: the active
    subsets are a prefix, the rest get zero weight and are skipped).
    """
    subsets = self.subsets[u]
    n_sub = subsets.shape[0]
    previous = picked[jnp.maximum(t - 1, 0)]
    members = jnp.concatenate(
      [
        picked[subsets],
        jnp.broadcast_to(previous, (n_sub, 1) + previous.shape),
      ],
      axis=1,
    )  # [n_sub, u, K, C]
    log_tables = jax.vmap(_information.log_joint_table)(members)
    weights, rho = self.table(log_tables, t, u)
    count = self.counts[u][t]
    rho = jnp.where((jnp.arange(n_sub) < count)[:, None], rho, 0)

    # No previous pick at t = 0. The predicate is the step counter, so this
    # stays a real conditional (a skipped pass over the pool) under vmap.
    return lax.cond(
      t > 0,
      lambda operands: self.kernel(probs_t, *operands),
      lambda _: jnp.zeros(probs_t.shape[:1], probs_t.dtype),
      (weights, rho, count),
    )

  def kernel(self, probs_t, weights, rho, count):
    """The table kernel on the stacked tables ``W[n_sub, R, K]``,
    ``rho[n_sub, R]`` of which the first ``count`` subsets are active:
    ``[N]``. k-EPIG's sampled tables add a correction."""
    n_sub, per = rho.shape
    return _bald.table_entropy(
      probs_t,
      weights.reshape(n_sub * per, -1),
      rho.reshape(n_sub * per),
      chunk_size=self.chunk_size,
      num_rows=count * per,
      block_rows=per * -(-MIN_BLOCK_ROWS // per),
    )

  def gains_and_update(self, probs_t, leading, d, picked, t):
    """Adds the increments of pick ``t - 1`` to ``D`` and returns the gains.

    Args:
      probs_t: ``[N, C, K]`` (`alfx.bald_family._batchbald.prepare`).
      leading: ``[N]``, the gains' terms without ``D_u`` (``u >= 1``).
      d: ``[N, order - 1]``, the ``D_u`` before pick ``t - 1``.
      picked: ``[B, K, C]``, the picks' log-probabilities.
      t: the step.

    Returns:
      ``(D [N, order - 1], gains [N])``.
    """
    a = self.coefficients[t]
    gain = leading
    columns = []
    for u in range(1, self.order):
      column = d[:, u - 1] + self.increment(probs_t, picked, t, u)
      gain = gain + a[u] * column
      columns.append(column)
    return jnp.stack(columns, axis=1), gain


def score_picks(scores, mask, batch_size: int, axis_name=None):
  """``batch_size`` greedy picks of fixed ``scores`` (order-1 k-BALD, k-EPIG)."""

  def step(available, t):
    del t
    index, score, valid, available = _selection.pick(
      scores, available, axis_name
    )
    return available, (index, score, valid)

  _, (indices, scores, valid) = lax.scan(
    step, mask, jnp.arange(batch_size, dtype=jnp.int32)
  )
  return _selection.Selection(indices, scores, valid)


def increment_picks(
  log_probs, mask, probs_t, state, leading, batch_size: int, axis_name=None
):
  """The greedy scan of k-BALD and k-EPIG (``order >= 2``).

  Pick ``t`` maximises ``leading(t) + sum_u a_u(t) D_u`` (`state`, a
  `SubsetIncrements`) over the available points; ``leading(t)`` is ``[N]``.
  """
  n, k, c = log_probs.shape

  def step(carry, t):
    available, picked, d = carry
    d, gains = state.gains_and_update(probs_t, leading(t), d, picked, t)
    index, score, valid, available = _selection.pick(
      gains, available, axis_name
    )
    picked = picked.at[t].set(_pool.take(log_probs, index, axis_name))
    return (available, picked, d), (index, score, valid)

  init = (
    mask,
    jnp.zeros((batch_size, k, c), log_probs.dtype),
    jnp.zeros((n, state.order - 1), log_probs.dtype),
  )
  _, (indices, scores, valid) = lax.scan(
    step, init, jnp.arange(batch_size, dtype=jnp.int32)
  )
  return _selection.Selection(indices, scores, valid)

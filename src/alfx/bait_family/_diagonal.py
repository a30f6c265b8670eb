"""BAIT on the diagonal Fisher: everything elementwise.

May import: `alfx._core`, `alfx.bait_family._blocks`, `_greedy`.
"""

from jax import lax
import jax.numpy as jnp

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx.bait_family import _blocks
from alfx.bait_family import _greedy


def bait_diagonal(
  h,
  q,
  labeled,
  mask,
  lam,
  denom,
  f_diag,
  batch_size,
  oversample,
  chunk_size,
  axis_name,
):
  """BAIT with diagonal ``M``, ``F`` and ``I(x) = diag(q (x) h^2)``.

  ``tr((M + s^2 I(x))^-1 F)`` is ``sum_k F_k / (M_k + x_k)``; the reduction is
  ``sum_k F_k x_k / (M_k (M_k + x_k))``: ``O(N C D)`` per step.
  """
  n, dim = h.shape
  c = q.shape[1]
  h2 = h * h
  m = (
    lam
    + _pool.psum(
      jnp.einsum("nc,ni->ci", q * labeled[:, None].astype(q.dtype), h2),
      axis_name,
    )
    / denom
  )
  s2 = batch_size / denom
  rows = _blocks.chunk_rows(chunk_size, n, c * dim)

  def values(m, qc, h2c, sign):
    # sign=+1: the forward reduction; sign=-1: minus the increase on removal.
    x = s2 * qc[:, :, None] * h2c[:, None, :]
    return jnp.sum((f_diag / m) * x / (sign * m + x), axis=(1, 2))

  def forward_step(carry, _):
    m, selectable = carry
    gains = _blocks.map_rows(lambda a, b: values(m, a, b, 1.0), (q, h2), rows)
    j, gain, valid, selectable = _selection.pick(gains, selectable, axis_name)
    qj = _pool.take(q, j, axis_name)
    h2j = _pool.take(h2, j, axis_name)
    m = m + valid * s2 * qj[:, None] * h2j[None, :]
    return (m, selectable), (j, gain, valid, qj, h2j)

  n_forward = oversample * batch_size
  (m, _), (picks, gains, valid, qp, h2p) = lax.scan(
    forward_step, (m, mask), None, length=n_forward
  )

  def drop(m, t, k, active):
    del t
    return m - active * s2 * qp[k][:, None] * h2p[k][None, :]

  sel, _, _, _ = _greedy.backward(
    lambda m: values(m, qp, h2p, -1.0),
    drop,
    m,
    picks,
    gains,
    valid,
    batch_size,
    oversample,
  )
  return sel._replace(valid=sel.valid & jnp.isfinite(sel.scores))

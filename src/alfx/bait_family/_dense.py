"""BAIT's dense set-up, for small ``d = C_f D``.

``M`` and ``F`` as ``d x d`` matrices, one Cholesky inverse, ``G = M^-1 F
M^-1`` by two products, and the block quadratic forms ``h_n^T (M^-1)_{ab}
h_n``, ``h_n^T G_{ab} h_n`` of every point by one ``[N, D] @ [D, C_f(C_f+1)/2
* D]`` product (in chunks).

May import: `alfx._core`, `alfx.bait_family._factors`, `_blocks`.
"""

import jax
import jax.numpy as jnp

from alfx._core import pool as _pool
from alfx.bait_family import _blocks
from alfx.bait_family import _factors


def dense_setup(
  h, factors, scaled, labeled, lam, denom, f_blocks, chunk_size, axis_name
):
  """Initial ``U_n, W_n`` and the operators ``X -> M_0^-1 X, G_0 X``.

  Args:
    h: ``[N, D]`` local pool embeddings, in F's basis.
    factors: ``[N, C_f, r]`` dense class factors (`_basis.dense_factors`).
    scaled: ``[N, C_f, r]`` the class factors of ``X_n = s V_n``.
    labeled: ``bool[N]``.
    lam, denom: the ridge and ``L + B``.
    f_blocks: `PoolFisher.blocks` (dense).
    chunk_size: static rows per chunk (None: the default working set).
    axis_name: the pool's mesh axis under ``shard_map``, or None.

  Returns:
    ``(U [N, r, r], W [N, r, r], apply0)``, ``apply0(h_j [D], a_j [C_f, r])
    -> (M_0^-1 X_j, G_0 X_j)``, each ``[C_f, D, r]``.
  """
  dim = h.shape[1]
  c_f = factors.shape[1]
  d = c_f * dim
  weights = _blocks.pack_pairs(_factors.class_outer(factors))
  m_blocks = _pool.psum(
    _blocks.labeled_gram(h, weights, labeled, chunk_size), axis_name
  )
  m = (
    lam * jnp.eye(d, dtype=h.dtype)
    + _blocks.blocks_to_dense(m_blocks, c_f).reshape(d, d) / denom
  )
  chol = jnp.linalg.cholesky(m)
  m_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=h.dtype))
  m_inv = 0.5 * (m_inv + m_inv.T)
  f = _blocks.blocks_to_dense(f_blocks, c_f).reshape(d, d)
  g = m_inv @ (f @ m_inv)
  g = 0.5 * (g + g.T)
  m_inv4 = m_inv.reshape(c_f, dim, c_f, dim)
  g4 = g.reshape(c_f, dim, c_f, dim)
  t_c = c_f * (c_f + 1) // 2
  quads = _blocks.quad_forms(
    h,
    jnp.concatenate(
      [_blocks.dense_to_blocks(m_inv4), _blocks.dense_to_blocks(g4)]
    ),
    chunk_size,
  )
  p = _blocks.unpack_pairs(quads[:, :t_c], c_f)  # [N, C_f, C_f]
  q = _blocks.unpack_pairs(quads[:, t_c:], c_f)
  u = jnp.einsum("nar,nab,nbs->nrs", scaled, p, scaled)
  w = jnp.einsum("nar,nab,nbs->nrs", scaled, q, scaled)

  def apply0(hj, aj):
    z = jnp.einsum("aibj,j,br->air", m_inv4, hj, aj)
    y = jnp.einsum("aibj,j,br->air", g4, hj, aj)
    return z, y

  return _blocks.sym(u), _blocks.sym(w), apply0

"""BAIT's backward pass on the picks' own ``r x r`` blocks.

After the forward pass only the ``P`` picks matter: dropping pick ``k``
changes ``M`` by ``-X_k X_k^T``, and the next drop needs only ``X_p^T M^-1
X_q`` and ``X_p^T G X_q`` between picks (``G = M^-1 F M^-1``). `pick_blocks`
forms these ``P x P`` blocks from the forward pass's history (``Z_s = M_s^-1
X_{j_s}``, ``Y_s = G_s X_{j_s}``, ``S_s^-1``, ``W_s``) in ``O(P T C_f D r +
P^2 T r^3)``; `drop_pick` updates them by the rank-``r`` Woodbury change of
a drop in ``O(P^2 r^3)``. No ``d``-sized direction is formed per drop (the
forward's ``M_t^-1 X_j``, ``G_t X_j`` cost ``O(N D C_f r)`` each at large
``d``: at C=100 most of a backward step).

May import: `alfx.bait_family._blocks`.
"""

import jax.numpy as jnp

from alfx.bait_family import _blocks


def pick_blocks(z, y, s_inv, wj, hp, ap):
  """``X_p^T M_T^-1 X_q`` and ``X_p^T G_T X_q`` after ``T`` forward picks.

  Pick ``q`` was made at step ``q`` with ``Z_q = M_q^-1 X_q`` and ``Y_q =
  G_q X_q``; each later step ``s >= q`` changed ``M^-1`` by ``-Z_s S_s^-1
  Z_s^T`` and ``G`` by ``-Z_s S_s^-1 Y_s^T - Y_s S_s^-1 Z_s^T + Z_s S_s^-1
  W_s S_s^-1 Z_s^T``. With ``zx[s, p] = Z_s^T X_p``, ``yx[s, p] = Y_s^T
  X_p``, ``b[s, p] = S_s^-1 zx[s, p]`` and ``f[s, p] = yx[s, p] - W_s b[s,
  p] / 2``:

      U[p, q] = zx[q, p]^T - sum_{s >= q} zx[s, p]^T b[s, q]
      W[p, q] = yx[q, p]^T - sum_{s >= q} (b[s, p]^T f[s, q]
                                           + f[s, p]^T b[s, q]).

  Row ``p`` of blocks depends on ``X_p`` only through ``zx[:, p]``,
  ``yx[:, p]``: equal picks (duplicated points) get bit-equal rows, so
  their drop values tie exactly when their own blocks do (the caller puts
  the per-point ``U_p``, ``W_p`` on the diagonal). ``U[q, p]^T`` equals
  ``U[p, q]`` up to rounding.

  Args:
    z, y: ``[T, r, C_f, D]`` the forward directions ``Z_s^T``, ``Y_s^T``
      (zero for an invalid pick).
    s_inv, wj: ``[T, r, r]`` ``S_s^-1`` and ``W_s``.
    hp, ap: ``[T, D]`` and ``[T, C_f, r]``, the picks' ``h`` and ``A``.

  Returns:
    ``(U, W)``, each ``[T, T, r, r]``: block ``[p, q]`` for picks ``p, q``.
  """
  t = z.shape[0]

  def project(v):  # [s, p, i, k]: (V_s^T X_p)[i, k]
    hv = jnp.einsum("siaj,pj->spia", v, hp)
    return jnp.einsum("spia,pak->spik", hv, ap)

  zx, yx = project(z), project(y)
  b = jnp.einsum("sij,spjk->spik", s_inv, zx)
  f = yx - 0.5 * jnp.einsum("sij,spjk->spik", wj, b)
  later = (jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]).astype(z.dtype)
  b_later = b * later[:, :, None, None]  # zero unless s >= q
  f_later = f * later[:, :, None, None]
  u = jnp.einsum("qpik->pqki", zx) - jnp.einsum("spik,sqil->pqkl", zx, b_later)
  w = (
    jnp.einsum("qpik->pqki", yx)
    - jnp.einsum("spik,sqil->pqkl", b, f_later)
    - jnp.einsum("spik,sqil->pqkl", f, b_later)
  )
  return u, w


def drop_pick(u, w, k, active):
  """Blocks after dropping pick ``k`` (``M <- M - X_k X_k^T``); no-op unless
  ``active``.

  ``S = U_kk - I``, ``a_p = U[p, k]``, ``b_p = W[p, k]``:

      U[p, q] -= a_p S^-1 a_q^T
      W[p, q] -= a_p S^-1 b_q^T + b_p S^-1 a_q^T - a_p S^-1 W_kk S^-1 a_q^T.

  Args:
    u, w: ``[P, P, r, r]`` the picks' blocks.
    k: the pick to drop.
    active: ``bool``, whether to drop.

  Returns:
    ``(u, w)``.
  """
  r = u.shape[-1]
  s = u[k, k] - jnp.eye(r, dtype=u.dtype)
  s_inv = _blocks.sym(jnp.linalg.inv(_blocks.sym(s)))
  a = u[:, k]  # [P, r, r]: X_p^T M^-1 X_k
  b = w[:, k]
  a_s = jnp.einsum("pij,jk->pik", a, s_inv)
  e = b - 0.5 * jnp.einsum("pij,jk->pik", a_s, w[k, k])
  x = jnp.einsum("pik,qjk->pqij", a_s, e)
  du = jnp.einsum("pik,qjk->pqij", a_s, a)
  dw = x + jnp.swapaxes(jnp.swapaxes(x, 0, 1), -1, -2)
  scale = active.astype(u.dtype)
  return u - scale * du, w - scale * dw

"""BAIT's greedy forward-backward scan and the small solves it runs.

Shared by the dense and structured paths (`greedy`); the diagonal path
reuses the backward pass and the final ordering (`backward`).

``U_n = X_n^T M^-1 X_n`` and ``W_n = X_n^T M^-1 F M^-1 X_n`` (``r x r``) are
formed once for every point (`alfx.bait_family._dense`, `alfx.bait_family._structured`)
and then updated after each pick by the rank-``r`` Woodbury change of
``M^-1`` (``M'^-1 = M^-1 - Z S^-1 Z^T``, ``Z = M^-1 X_j``, ``S = I + U_j``):
with ``a_n = X_n^T Z`` and ``b_n = X_n^T G X_j`` (``G = M^-1 F M^-1``)

    U_n <- U_n - a_n S^-1 a_n^T
    W_n <- W_n - a_n S^-1 b_n^T - b_n S^-1 a_n^T + a_n S^-1 W_j S^-1 a_n^T,

and ``X_n^T Z`` costs one ``[N, D] @ [D, C_f r]`` product thanks to the
Kronecker structure. Forward steps fold ``S^-1 = L^-T L^-1`` and ``W_j``
into that product (``whiten``: ``U_n -= a~ a~^T``, ``W_n -= a~ e~^T + e~
a~^T``, half the per-point FLOPs), then compute the next gains in a
second chunked pass over the new state. ``M^-1`` and ``G`` themselves are
never rewritten: the picks so far are kept as a low-rank history (``Z_k``, ``G_k
X_k``, ``S_k^-1``, ``W_k``), from which ``M_t^-1 X_j`` and ``G_t X_j``
follow in ``O(t d r^2)``. The backward pass is the same update with ``S =
U_j - I``, applied only to the picks' own blocks ``X_p^T M^-1 X_q``,
``X_p^T G X_q`` (`alfx.bait_family._drops`).

May import: `alfx._core`, `alfx.bait_family._blocks`, `alfx.bait_family._drops`.
"""

import jax
from jax import lax
import jax.numpy as jnp

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core.selection import Selection
from alfx.bait_family import _blocks
from alfx.bait_family import _drops

# r x r systems up to this size are solved by an unrolled Cholesky that is
# vectorised over the pool; larger ones use the batched LAPACK kernels.
_UNROLL_MAX_RANK = 12
# Leaf size of `_blocks.spd_inverse` in `trace_solve`: at r = 100, leaves of
# 12-13 rows (13 is not split into 6 + 7) and only the Schur complements
# symmetrised ran ~10% faster than leaves of at most 12, all symmetrised.
_INVERSE_LEAF = 16


def _outer_sum(x, y):
  """``sum_q x[..., i, q] y[..., j, q]`` for a batch of small matrices.

  XLA's batched dot runs one tiny GEMM per point; for small ``r`` a sum of
  ``r`` broadcast products (one fused elementwise loop) is 2-3x faster.
  """
  if x.shape[-1] > _UNROLL_MAX_RANK:
    return jnp.einsum("...iq,...jq->...ij", x, y)
  return sum(
    x[..., :, q, None] * y[..., None, :, q] for q in range(x.shape[-1])
  )


def _contract_factors(a, proj) -> jax.Array:
  """``A_n^T proj_n``: ``a [N, C_f, r]``, ``proj [N, C_f, q]`` -> ``[N, r,
  q]``."""
  if a.shape[-1] > _UNROLL_MAX_RANK:
    return jnp.einsum("nar,naq->nrq", a, proj)
  # A sum of arrays (pyright takes the builtin sum for an int).
  return sum(a[:, k, :, None] * proj[:, k, None, :] for k in range(a.shape[1]))  # pyright: ignore[reportReturnType]


def trace_solve(u, w, sign):
  """``tr((sign I + U)^-1 W)`` for a batch of ``r x r`` matrices ``[..., r,
  r]``."""
  r = u.shape[-1]
  if r == 1:
    return w[..., 0, 0] / (sign + u[..., 0, 0])
  s = u + sign * jnp.eye(r, dtype=u.dtype)
  if sign > 0 and r <= _UNROLL_MAX_RANK:
    return _trace_solve_unrolled(s, w)
  if sign > 0:
    # tr(S^-1 W) = sum(S^-1 * W) for symmetric W, whichever way S^-1 rounds:
    # only its Schur complements need to be symmetrised.
    inverse = _blocks.spd_inverse(s, _INVERSE_LEAF, symmetric=False)
    return jnp.sum(inverse * w, axis=(-2, -1))
  return jnp.trace(jnp.linalg.solve(s, w), axis1=-2, axis2=-1)


def _trace_solve_unrolled(s, w):
  """``tr(S^-1 W)``, ``S`` SPD, ``W`` symmetric, unrolled over the small rank.

  ``S = L L^T``, ``M = L^-1`` (lower triangular) and ``tr(S^-1 W) = sum_k
  m_k^T W m_k`` over the rows ``m_k`` of ``M`` (zero past ``k``), with ``W``'s
  symmetry: ``~r^3`` operations against ``7 r^3 / 3`` for two triangular
  solves. Each entry is a vector over the batch, so XLA fuses the whole
  solve into a few elementwise loops instead of one LAPACK call per point.
  """
  r = s.shape[-1]
  low = [[None] * r for _ in range(r)]
  inv_diag = [None] * r
  for j in range(r):  # L L^T = S, keeping 1 / L_jj
    acc = s[..., j, j]
    for k in range(j):
      acc = acc - low[j][k] * low[j][k]
    inv_diag[j] = lax.rsqrt(acc)
    for i in range(j + 1, r):
      acc = s[..., i, j]
      for k in range(j):
        acc = acc - low[i][k] * low[j][k]
      low[i][j] = acc * inv_diag[j]
  total = 0
  m = [[None] * r for _ in range(r)]  # M = L^-1, row by row
  for k in range(r):
    m[k][k] = inv_diag[k]
    for j in range(k):
      acc = low[k][j] * m[j][j]
      for i in range(j + 1, k):
        acc = acc + low[k][i] * m[i][j]
      m[k][j] = -acc * inv_diag[k]
    # m_k^T W m_k = sum_i m_ki (m_ki W_ii + 2 sum_{j > i} m_kj W_ij)
    for i in range(k + 1):
      acc = 0.5 * m[k][i] * w[..., i, i]
      for j in range(i + 1, k + 1):
        acc = acc + m[k][j] * w[..., i, j]
      total = total + m[k][i] * acc
  return 2 * total


def _gains(u, w):
  """The forward gains ``tr((I + U_n)^-1 W_n)``, ``[N]``."""
  return trace_solve(u, w, 1.0)


def _drop_index(values, picks):
  """The pick to drop: the largest value; among equal values the highest
  pool index (ties go to the lower index: it is the one kept)."""
  return jnp.argmax(jnp.where(values == jnp.max(values), picks, -1))


def backward(values, drop, state, picks, gains, valid, batch_size, oversample):
  """BAIT's backward pass and its final ordering (every path).

  While more than ``batch_size`` forward picks are alive, drops the one with
  the largest ``values``; then keeps the alive picks in forward order.

  Args:
    values: ``state -> float[P]``, the value of dropping each pick (larger:
      dropped first; only the alive ones are compared).
    drop: ``(state, t, k, active) -> state`` with pick ``k`` removed at
      backward step ``t`` (a no-op unless ``active``).
    state: the pytree after the forward pass.
    picks, gains, valid: ``[P]`` the forward picks, their gains and validity.
    batch_size, oversample: static; ``P = oversample * batch_size``.

  Returns:
    ``(Selection, state, alive [P], dropped)``: the kept picks in forward
    order (a shortfall, only under jit, is invalid), the final state, the
    picks kept and the dropped positions in drop order (``-1``: no drop).
  """

  def step(carry, t):
    state, alive = carry
    active = jnp.sum(alive) > batch_size
    k = _drop_index(jnp.where(alive, values(state), -jnp.inf), picks)
    state = drop(state, t, k, active)
    alive = alive.at[k].set(alive[k] & ~active)
    return (state, alive), jnp.where(active, k, -1)

  alive = valid
  dropped = jnp.zeros((0,), jnp.int32)
  if oversample > 1:
    (state, alive), dropped = lax.scan(
      step, (state, valid), jnp.arange((oversample - 1) * batch_size)
    )
  order = jnp.argsort(~alive, stable=True)[:batch_size]
  sel = Selection(
    indices=picks[order].astype(jnp.int32),
    scores=gains[order],
    valid=alive[order],
  )
  return sel, state, alive, dropped


def greedy(
  h,
  scaled,
  u,
  w,
  mask,
  apply0,
  batch_size,
  oversample,
  chunk_size,
  axis_name,
  noise=None,
  full=None,
):
  """Forward picks and backward drops, as two ``lax.scan``s.

  Args:
    h: ``[N, D]`` local pool embeddings.
    scaled: ``[N, C_f, r]`` class factors of ``X_n``.
    u, w: ``[N, r, r]`` initial ``U_n``, ``W_n``.
    mask: ``bool[N]`` selectable.
    apply0: ``(h_j [D], a_j [C_f, r]) -> (M_0^-1 X_j, G_0 X_j)``, each
      ``[C_f, D, r]``.
    batch_size, oversample, chunk_size: static, as in `bait`.
    axis_name: the pool's mesh axis under ``shard_map``, or None.
    noise: optional ``[N]``, a per-point size that the picks' sizes must
      cover (the structured set-up's cancellations).
    full: optional ``(probs [N, C], s)`` when ``scaled`` is full's ``s
      sqrt(p_k) (e_k - p)`` (structured path): ``A_n^T x`` is then ``s
      sqrt(p) * (x - p^T x)``, ``O(C r)`` a point instead of ``O(C r^2)``.

  Returns:
    ``(Selection, state)``; ``state`` (for tests and the resolution check)
    holds the per-point ``u``, ``w`` after the forward pass, the forward
    ``picks``, their ``valid``, ``sizes`` (``|U_j|``), the kept ``alive``,
    the ``dropped`` positions, the forward history ``zy``, ``s_inv``, ``wj``
    and the picks' blocks ``pick_u``, ``pick_w`` after the backward pass.
  """
  n, dim = h.shape
  c_f, r = scaled.shape[1:]
  dtype = h.dtype
  n_forward = oversample * batch_size
  eye = jnp.eye(r, dtype=dtype)
  rows = _blocks.chunk_rows(chunk_size, n, 4 * c_f * r + 4 * r * r)

  # Step k of the history: Z_k, Y_k, S_k^-1 and W_k, where M_{k+1}^-1 =
  # M_k^-1 - Z S^-1 Z^T and G_{k+1} = G_k - Z S^-1 Y^T - Y S^-1 Z^T + Z S^-1
  # W S^-1 Z^T. Directions are kept transposed, ``[r, C_f, D]``, so that the
  # history ``[T, r, C_f, D]`` is written at a leading index, read by a
  # matvec over contiguous rows, and applied by one plain GEMM (at C=100 these
  # history ops took ~1.1 s per step against ~2 s with ``[T, C_f, D, r]``,
  # which XLA transposed each step).
  # Slots are applied in blocks of ~128 rows, and only the blocks already
  # written (a loop bounded by the step): the later slots are still zero.
  per_block = max(1, -(-128 // r))
  n_slots = -(-n_forward // per_block) * per_block
  history = dict(
    z=jnp.zeros((n_slots, r, c_f, dim), dtype),
    y=jnp.zeros((n_slots, r, c_f, dim), dtype),
    s_inv=jnp.zeros((n_slots, r, r), dtype),
    wj=jnp.zeros((n_slots, r, r), dtype),
  )

  def directions(hist, t, hj, aj, valid):
    """``[M_t^-1 X_j | G_t X_j]``, transposed: ``[2r, C_f, D]``."""
    z0, y0 = apply0(hj, aj)
    zy0 = jnp.moveaxis(jnp.concatenate([z0, y0], axis=-1), -1, 0)
    flat = lambda x: x.reshape(per_block * r, c_f * dim)

    def block(i, correction):
      part = {
        k: lax.dynamic_slice_in_dim(v, i * per_block, per_block)
        for k, v in hist.items()
      }
      ztx = jnp.einsum("kqai,i,ar->kqr", part["z"], hj, aj)  # Z_k^T X_j
      ytx = jnp.einsum("kqai,i,ar->kqr", part["y"], hj, aj)
      s_ztx = jnp.einsum("kqs,ksr->kqr", part["s_inv"], ztx)
      y_coef = jnp.einsum(
        "kqs,ksr->kqr",
        part["s_inv"],
        ytx - jnp.einsum("kst,ktr->ksr", part["wj"], s_ztx),
      )
      # Z = Z_0 - sum_k Z_k s_ztx_k; Y = Y_0 - sum_k (Z_k y_coef_k + Y_k
      # s_ztx_k).
      from_z = jnp.concatenate([s_ztx, y_coef], axis=-1).reshape(
        per_block * r, 2 * r
      ).T @ flat(part["z"])
      from_y = s_ztx.reshape(per_block * r, r).T @ flat(part["y"])
      return correction + from_z + jnp.pad(from_y, ((r, 0), (0, 0)))

    correction = lax.fori_loop(
      0,
      (t + per_block - 1) // per_block,
      block,
      jnp.zeros((2 * r, c_f * dim), dtype),
    )
    return (zy0 - correction.reshape(2 * r, c_f, dim)) * valid

  def commit(hist, t, hj, aj, zy):
    proj = jnp.einsum("qai,i,ar->qr", zy, hj, aj)  # Z^T X_j; Y^T X_j
    s = _blocks.sym(eye + proj[:r])
    s_inv = _blocks.sym(jnp.linalg.inv(s))
    wj = _blocks.sym(proj[r:])
    hist = dict(
      z=hist["z"].at[t].set(zy[:r]),
      y=hist["y"].at[t].set(zy[r:]),
      s_inv=hist["s_inv"].at[t].set(s_inv),
      wj=hist["wj"].at[t].set(wj),
    )
    return hist, s, wj

  def whiten(zy, s, wj):
    """``[Z L^-T | Y L^-T - Z L^-T W~ / 2]``, transposed, for ``S = L L^T``
    and ``W~ = L^-1 W_j L^-T``.

    With ``a~ = X^T Z L^-T`` and ``e~ = X^T (Y L^-T - Z L^-T W~ / 2)`` the
    forward update (``S`` SPD) is ``U -= a~ a~^T``, ``W -= a~ e~^T + e~
    a~^T``: the ``r x r`` factors of the Woodbury update (``a S^-1 b^T``
    ...) move into the pool's one projection, half the per-point FLOPs.
    """
    low = jnp.linalg.cholesky(s)
    solve = lambda x: lax.linalg.triangular_solve(
      low, x, left_side=True, lower=True
    )
    flat = zy.reshape(2 * r, c_f * dim)
    z = solve(flat[:r])  # L^-1 Z^T
    w_t = solve(solve(wj).T)  # L^-1 W_j L^-T (symmetric)
    y = solve(flat[r:]) - 0.5 * (w_t @ z)
    return jnp.concatenate([z, y]).reshape(zy.shape)

  def pool_update(u, w, zy):
    """The whitened update of every ``U_n``, ``W_n``, chunk by chunk, then
    their next gains in a second pass over the new state.

    In one pass, XLA:CPU formed the outer sums twice, once for the gains
    and once inside the write of each chunk: at D=64, C=10, N=10^5 the
    second pass made the whole call 12% faster.
    """
    zy = jnp.transpose(zy, (2, 1, 0)).reshape(dim, c_f * 2 * r)

    def one(hc, ac, uc, wc):
      proj = (hc @ zy).reshape(hc.shape[0], c_f, 2 * r)
      if full is None:
        ab = _contract_factors(ac, proj)
      else:  # ac: the probabilities
        mean = jnp.einsum("na,naq->nq", ac, proj)
        ab = (full[1] * jnp.sqrt(ac))[:, :, None] * (proj - mean[:, None, :])
      a, e = ab[..., :r], ab[..., r:]
      x = _outer_sum(a, e)
      return uc - _outer_sum(a, a), wc - x - jnp.swapaxes(x, -1, -2)

    factors = scaled if full is None else full[0]
    u, w = _blocks.map_rows(one, (h, factors, u, w), rows)
    return u, w, _blocks.map_rows(_gains, (u, w), rows)

  def forward_step(carry, t):
    u, w, gains, selectable, hist = carry
    j, gain, valid, selectable = _selection.pick(gains, selectable, axis_name)
    hj = _pool.take(h, j, axis_name)
    aj = _pool.take(scaled, j, axis_name)
    size = _blocks.norm(_pool.take(u, j, axis_name))
    if noise is not None:
      size = jnp.maximum(size, _pool.take(noise, j, axis_name))
    size = size * valid
    zy = directions(hist, t, hj, aj, valid)
    hist, s, wj = commit(hist, t, hj, aj, zy)
    u, w, gains = pool_update(u, w, whiten(zy, s, wj))
    return (u, w, gains, selectable, hist), (j, gain, valid, hj, aj, size)

  (u, w, _, _, history), (picks, gains, valid, hp, ap, sizes) = lax.scan(
    forward_step,
    (u, w, _gains(u, w), mask, history),
    jnp.arange(n_forward),
  )
  # The backward pass needs only X_p^T M^-1 X_q and X_p^T G X_q between the
  # picks (P x P blocks of r x r, replicated), formed once from the history;
  # on the diagonal the picks' own U, W, so that equal points tie exactly.
  pick_u, pick_w = _drops.pick_blocks(
    history["z"][:n_forward],
    history["y"][:n_forward],
    history["s_inv"][:n_forward],
    history["wj"][:n_forward],
    hp,
    ap,
  )
  own = jnp.arange(n_forward)
  pick_u = pick_u.at[own, own].set(
    jax.vmap(lambda i: _pool.take(u, i, axis_name))(picks)
  )
  pick_w = pick_w.at[own, own].set(
    jax.vmap(lambda i: _pool.take(w, i, axis_name))(picks)
  )

  def drop_values(state):
    # tr((U - I)^-1 W) = -tr((I - U)^-1 W): the largest is the pick whose
    # removal leaves the smallest tr((M - X X^T)^-1 F).
    pick_u, pick_w = state
    return trace_solve(pick_u[own, own], pick_w[own, own], -1.0)

  def drop(state, t, k, active):
    del t  # the blocks need no history
    pick_u, pick_w = state
    return _drops.drop_pick(pick_u, pick_w, k, active)

  sel, (pick_u, pick_w), alive, dropped = backward(
    drop_values,
    drop,
    (pick_u, pick_w),
    picks,
    gains,
    valid,
    batch_size,
    oversample,
  )
  # For tests: the per-point state and the history after the forward pass,
  # and the picks' blocks after the backward pass.
  zy = jnp.transpose(
    jnp.concatenate([history["z"], history["y"]], axis=1)[:n_forward],
    (0, 2, 3, 1),
  )
  state = dict(
    u=u,
    w=w,
    picks=picks,
    valid=valid,
    alive=alive,
    sizes=sizes,
    dropped=dropped,
    zy=zy,
    s_inv=history["s_inv"][:n_forward],
    wj=history["wj"][:n_forward],
    pick_u=pick_u,
    pick_w=pick_w,
  )
  return sel, state

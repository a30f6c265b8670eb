"""BAIT's structured set-up, for ``full``/``topc`` with large ``d``.

No ``d x d`` matrix is ever formed (e.g. ``C = 100``): ``M`` is
block-diagonal (``C`` blocks of ``D x D``; ``lam I`` for ``topc``) plus a
rank-``L*k`` Kronecker term (``k = 1`` for ``full``: ``diag(p) - p p^T``;
``k = top_c`` for ``topc``), inverted by Woodbury, and ``F`` is kept as
block-diagonal plus the pool's Kronecker atoms. The one ``N^2`` term is
``X_n^T K^-1 F K^-1 X_n`` (`topc_pool_quad` computes topc's in
`pool_fisher`); sharded, it passes the shards' blocks round a ring of the
devices.

May import: `alfx._core`, `alfx.bait_family._blocks`.
"""

from jax import lax
import jax.numpy as jnp

from alfx._core import pool as _pool
from alfx.bait_family import _blocks


def _atoms(probs, factors, kind):
  """``I(x_n) = diag(db_n) (x) h h^T + sign sum_k (u_nk (x) h)(u_nk (x) h)^T``.

  Returns ``(db [N, C] or None, u [N, C, k], sign)``: full is ``diag(p) - p
  p^T`` (one atom, sign -1); topc is ``A A^T`` (``top_c`` atoms, sign +1).
  """
  if kind == "full":
    return probs, probs[:, :, None], -1.0
  return None, factors, 1.0


def structured_setup(
  h,
  probs,
  factors,
  scaled,
  labeled,
  lam,
  denom,
  s2,
  f_blocks,
  quad,
  in_pool,
  kind,
  chunk_size,
  capacity,
  axis_name,
):
  """Initial ``U_n, W_n`` and ``X -> (M_0^-1 X, G_0 X)`` without d x d matrices.

  ``M = K + sign E E^T`` with ``K`` block-diagonal (``C`` blocks ``D x D``;
  ``lam I`` for topc) and ``E`` the labelled atoms ``(u_lk (x) h_l) /
  sqrt(L + B)`` (``R = capacity * k`` columns), so by Woodbury ``M^-1 = K^-1 -
  Ek T Ek^T`` with ``Ek = K^-1 E`` and ``T = (sign I + E^T K^-1 E)^-1``. ``F =
  Fb + (sign / N) sum_m (u_m (x) h_m)(u_m (x) h_m)^T`` over the pool.

  Sharded: the labelled rows are gathered (``capacity`` of them, replicated
  like ``K``, ``Ek`` and ``T``), the pool sums of ``F X`` are all-reduced and
  the ``N^2`` term passes the pool's blocks round a ring of the devices.
  ``in_pool`` (None: every row) removes padding rows from ``F``.
  """
  n, dim = h.shape
  c = probs.shape[1]
  dtype = h.dtype
  db, u, sign = _atoms(probs, factors, kind)
  k_atoms = u.shape[2]
  scalar_k = db is None  # K = lam I: everything Kronecker-cheap.
  row_weight, n_total = _blocks.pool_rows(in_pool, n, dtype, axis_name)
  # The atoms of F.
  u_f = u if row_weight is None else u * row_weight[:, None, None]

  # The labelled set, compacted to a static capacity.
  (hl, ul, dbl), ok, count = _pool.compact(
    labeled, (h, u, probs), capacity, axis_name
  )
  overflow = count > capacity
  ok = ok.astype(dtype)
  ul = ul * (ok / jnp.sqrt(denom))[:, None, None]  # [cap, C, k]
  r_cols = capacity * k_atoms

  if scalar_k:

    def kinv_h(x):  # pyright: ignore[reportRedeclaration] (one per branch)
      return jnp.broadcast_to((x / lam)[..., None, :], x.shape[:-1] + (c, dim))

    def kinv_dense(v):  # pyright: ignore[reportRedeclaration] (one per branch)
      return v / lam
  else:
    k_weights = dbl * (ok / denom)[:, None]  # K_a = lam I + Hl^T W_a Hl
    k_blocks = _blocks.weighted_gram(hl, k_weights)
    k_blocks = k_blocks + lam * jnp.eye(dim, dtype=dtype)
    k_inv = _blocks.spd_inverse(k_blocks)  # [C, D, D], exactly symmetric
    # Row j of K_a^-1 for every class, as one [D, C D] operand built once:
    # XLA otherwise re-lays K^-1 out (59 MB at C=100) in each chunk's loop.
    k_inv_rows = jnp.transpose(k_inv, (1, 0, 2)).reshape(dim, c * dim)

    def kinv_h(x):  # K_a^-1 x for every class: [..., C, D]
      return (x @ k_inv_rows).reshape(x.shape[:-1] + (c, dim))

    def kinv_dense(v):
      return jnp.einsum("aij,ajq->aiq", k_inv, v)

  # Ek = K^-1 E: [C, D, R], column (l, k) = K^-1 (u_lk (x) h_l).
  ek = jnp.einsum("lak,lai->ailk", ul, kinv_h(hl)).reshape(c, dim, r_cols)
  ete = jnp.einsum("lak,li,aiR->lkR", ul, hl, ek).reshape(r_cols, r_cols)
  inner = _blocks.sym(sign * jnp.eye(r_cols, dtype=dtype) + ete)
  t_inv = _blocks.sym(jnp.linalg.inv(inner))

  def minv_dense(v):  # M_0^-1 V for V [C, D, q]
    coef = t_inv @ jnp.einsum("aiR,aiq->Rq", ek, v)
    return kinv_dense(v) - jnp.einsum("aiR,Rq->aiq", ek, coef)

  if scalar_k:
    f_blocks = None
  rows = _blocks.chunk_rows(chunk_size, n, 2 * c * max(r_cols, c))

  def f_lowrank_back(coef_fn, q):
    """``(sign / N) sum_m (u_m (x) h_m) coef_m`` with ``coef_m [k, q]``."""

    def one(hc, uc, *rest):
      coef = coef_fn(hc, uc, *rest)  # [rows, k, q]
      back = jnp.einsum("mak,mkq->maq", uc, coef)
      return jnp.einsum("mi,maq->aiq", hc, back)

    return one

  def f_dense(v):  # F V for V [C, D, q]
    q = v.shape[-1]

    def coef_fn(hc, uc):
      hv = jnp.einsum("mi,aiq->maq", hc, v)
      return jnp.einsum("mak,maq->mkq", uc, hv)

    out = _pool.psum(
      _blocks.sum_rows(
        f_lowrank_back(coef_fn, q),
        (h, u_f),
        rows,
        jnp.zeros((c, dim, q), dtype),
        masked=1,
      ),
      axis_name,
    ) * (sign / n_total)
    if f_blocks is not None:
      out = out + jnp.einsum("aij,ajq->aiq", f_blocks, v)
    return out

  def f_kron(g, aj):  # F (K^-1 X_j) where block a of K^-1 X_j is aj[a] (x) g_a
    r = aj.shape[1]

    def coef_fn(hc, uc):
      kern = jnp.einsum("mi,ai->ma", hc, g)  # h_m . K_a^-1 h_j
      return jnp.einsum("mak,ar,ma->mkr", uc, aj, kern)

    out = _pool.psum(
      _blocks.sum_rows(
        f_lowrank_back(coef_fn, r),
        (h, u_f),
        rows,
        jnp.zeros((c, dim, r), dtype),
        masked=1,
      ),
      axis_name,
    ) * (sign / n_total)
    if f_blocks is not None:
      out = out + jnp.einsum("aij,aj,ar->air", f_blocks, g, aj)
    return out

  f_ek = f_dense(ek)  # F Ek [C, D, R]
  efe = jnp.einsum("aiR,aiS->RS", ek, f_ek)
  kf_ek = kinv_dense(f_ek)

  # h_n^T K_a^-1 h_n and (full) h_n^T K_a^-1 F_b K_a^-1 h_n: quadratic forms
  # of C (2C) symmetric D x D blocks, one GEMM per block row, instead of
  # K_a^-1 h_n for every point and class.
  if scalar_k:
    kq_all = jnp.broadcast_to(jnp.sum(h * h, -1, keepdims=True) / lam, (n, c))
    fq_all = jnp.zeros((n, 0), dtype)
  else:
    kfk = jnp.einsum("aij,ajk,akl->ail", k_inv, f_blocks, k_inv)  # pyright: ignore[reportPossiblyUnbound, reportArgumentType]
    quad_all = _blocks.quad_forms(
      h,
      jnp.concatenate([k_inv, _blocks.sym(kfk)]),
      chunk_size,  # pyright: ignore[reportPossiblyUnbound]
    )
    kq_all, fq_all = quad_all[:, :c], quad_all[:, c:]

  # Per point: ex_n = Ek^T X_n [R, r], c_n = T ex_n, U_n, W_n.
  def per_point(hc, sc, kq, fq):
    if scalar_k:
      kern = hc @ hl.T / lam  # [rows, cap]
      ex = jnp.einsum("nl,lak,nar->nlkr", kern, ul, sc)
      ex = ex.reshape(hc.shape[0], r_cols, -1)
    else:
      ex = jnp.einsum("ni,aiR,nar->nRr", hc, ek, sc)
    cn = jnp.einsum("RS,nSr->nRr", t_inv, ex)
    kx = jnp.einsum("nar,na,nas->nrs", sc, kq, sc)  # X_n^T K^-1 X_n
    u_n = kx - jnp.einsum("nRr,nRs->nrs", ex, cn)
    cross = jnp.einsum("ni,aiR,nar,nRs->nrs", hc, kf_ek, sc, cn)
    w_n = (
      jnp.einsum("nRr,RS,nSs->nrs", cn, efe, cn)
      - cross
      - jnp.swapaxes(cross, -1, -2)
    )
    if not scalar_k:  # X_n^T K^-1 F_b K^-1 X_n, F's block-diagonal part
      w_n = w_n + jnp.einsum("nar,na,nas->nrs", sc, fq, sc)
    return u_n, w_n, _blocks.norm(kx)

  r = scaled.shape[2]
  rows_pp = _blocks.chunk_rows(chunk_size, n, 2 * c * r_cols + 2 * r_cols * r)
  u_n, w_n, kx = _blocks.map_rows(
    per_point, (h, scaled, kq_all, fq_all), rows_pp
  )
  # The sizes that the Woodbury identities cancel (see `alfx.bait_family._bait`):
  # U_n is X_n^T K^-1 X_n less a term of the same size, and T carries the
  # cancellation of sign I + E^T K^-1 E; that error enters once, not
  # squared (measured: picks agree up to |T| ~ 1e4 in float32).
  size = jnp.maximum(kx, jnp.sqrt(jnp.linalg.norm(t_inv, 2)))
  # X_n^T K^-1 F K^-1 X_n: the one N^2 term.
  if scalar_k:  # s^2 / lam^2 V_n^T F V_n, precomputed by pool_fisher
    big = quad * (s2 / (lam * lam))
    w_n = w_n + big
    # W_n is the difference of terms of this size: its relative error is
    # eps times their ratio, which counts like U^2 in the greedy's updates.
    big = jnp.trace(big, axis1=-2, axis2=-1)
    small = jnp.abs(jnp.trace(w_n, axis1=-2, axis2=-1))
    tiny = jnp.finfo(dtype).tiny
    size = jnp.maximum(
      size, jnp.sqrt(jnp.where(big > 0, big / jnp.maximum(small, tiny), 0))
    )
  else:
    w_n = w_n + _full_kfk(
      h,
      u_f[:, :, 0],
      probs,
      jnp.sqrt(s2),
      kinv_h,
      _kernel(hl, k_weights, lam) if capacity < dim else None,  # pyright: ignore[reportPossiblyUnbound]
      sign / n_total,
      chunk_size,
      axis_name,
    )

  def apply0(hj, aj):
    g = kinv_h(hj)  # [C, D]
    ej = jnp.einsum("aiR,i,ar->Rr", ek, hj, aj)
    cj = t_inv @ ej
    z0 = g[:, :, None] * aj[:, None, :] - jnp.einsum("aiR,Rr->air", ek, cj)
    fz0 = f_kron(g, aj) - jnp.einsum("aiR,Rr->air", f_ek, cj)
    return z0, minv_dense(fz0)

  return _blocks.sym(u_n), _blocks.sym(w_n), apply0, overflow, size


def _kernel(hl, weights, lam):
  """``(h_n, h_m) -> h_n^T K_a^-1 h_m`` ``[n, C, m]`` without ``K_a^-1``.

  ``K_a = lam I + Hl^T W_a Hl`` (``W_a = diag(weights[:, a])``, ``Hl`` the
  ``cap`` labelled rows), so by Woodbury ``h_n^T K_a^-1 h_m = (h_n . h_m) /
  lam - g_n^T Q_a g_m`` with ``g = Hl h`` and ``Q_a = W_a^1/2 (lam I + W_a^1/2
  Hl Hl^T W_a^1/2)^-1 W_a^1/2 / lam``: ``2 n m (D + C cap)`` FLOPs instead
  of ``2 n m C D`` (for ``cap < D``).
  """
  cap = hl.shape[0]
  root = jnp.sqrt(weights.T)  # [C, cap]
  inner = root[:, :, None] * (hl @ hl.T) * root[:, None, :]
  inner = inner + lam * jnp.eye(cap, dtype=hl.dtype)
  q = root[:, :, None] * _blocks.spd_inverse(inner) * root[:, None, :] / lam

  def kern(hn, hm):
    gq = jnp.einsum("nl,alk->nak", hn @ hl.T, q)
    low = jnp.einsum("nak,mk->nam", gq, hm @ hl.T)
    return (hn @ hm.T)[:, None, :] / lam - low

  return kern


def _full_kfk(
  h, probs_f, probs, scale, kinv_h, kern_fn, coef, chunk_size, axis_name
):
  """The ``N^2`` term of ``X_n^T K^-1 F K^-1 X_n`` for full (F's low rank).

  With ``v_nm = X_n^T K^-1 (p_m (x) h_m)`` and full's factors ``s sqrt(p_nk)
  (e_k - p_n)``, ``v_nm[k] = s sqrt(p_nk) (w_nm[k] - p_n . w_nm)`` where
  ``w_nm[a] = p_ma (K_a^-1 h_n . h_m)``: ``O(C)`` per pair instead of the
  ``O(C r)`` of a general factor. Returns ``coef sum_m v_nm v_nm^T`` (``coef
  = sign / N``; ``probs_f`` are zero on rows outside the pool); F's
  block-diagonal part is added by the caller. ``kern_fn``: `_kernel`, or
  None to use ``K^-1 h_n`` directly.
  """
  n, dim = h.shape
  c = probs.shape[1]
  rows = _blocks.chunk_rows(chunk_size, n, n * (c + c) + c * dim)

  def pairs(hm, pm):  # the pool's rows m in one shard's block
    def one(hc, pc):
      if kern_fn is None:
        kern = jnp.einsum("nai,mi->nam", kinv_h(hc), hm)
      else:
        kern = kern_fn(hc, hm)
      w = kern * pm.T  # [rows, C, m]
      mean = jnp.einsum("na,nam->nm", pc, w)
      v = (scale * jnp.sqrt(pc))[:, :, None] * (w - mean[:, None, :])
      return coef * jnp.einsum("nrm,nsm->nrs", v, v)

    return _blocks.map_rows(one, (h, probs), rows)

  return _ring_sum(pairs, h, probs_f, axis_name=axis_name)


def _ring_sum(fn, *blocks, axis_name):
  """`_pool.ring_sum` with the shards' terms added in shard order.

  ``_pool.ring_sum`` adds them in ring order, which starts at each device's
  own shard: equal rows on different devices then round differently, and
  exact ties (duplicated points) between shards break either way. Here every
  device keeps the ``P`` partial sums by their source shard (``P`` times the
  output's memory) and adds them in one order.
  """
  first = fn(*blocks)
  if axis_name is None:
    return first
  devices = lax.axis_size(axis_name)
  me = lax.axis_index(axis_name)
  ring = [(i, (i + 1) % devices) for i in range(devices)]
  parts = jnp.zeros((devices,) + first.shape, first.dtype).at[me].set(first)

  def body(k, carry):
    parts, visiting = carry
    visiting = tuple(lax.ppermute(b, axis_name, ring) for b in visiting)
    source = (me - k - 1) % devices  # after k + 1 hops
    return parts.at[source].set(fn(*visiting)), visiting

  parts, _ = lax.fori_loop(0, devices - 1, body, (parts, blocks))
  total = parts[0]
  for i in range(1, devices):
    total = total + parts[i]
  return total


# Pool columns m per tile of `topc_pool_quad`: each chunk of rows n reads
# the pool's columns tile by tile, instead of forming [rows, r, N, r] at once
# (which left ~12 rows per chunk at N = 50,000 and re-read the pool as often).
_QUAD_COLS = 1024
# Largest r whose row Gram matrices `_row_grams` forms entry by entry.
_GRAM_UNROLL_MAX_RANK = 12


def _row_grams(g):
  """``g_n g_n^T`` for every row: ``[n, r, J] -> [n, r, r]``.

  For ``r <= 12`` as ``r (r + 1) / 2`` row sums of products, mirrored, so
  exactly symmetric: XLA:CPU's batched dot contracts ``[r, J] @ [J, r]``
  per row 2-3x slower (at r = 5, J = 10,240). Larger ``r``: one einsum.
  """
  r = g.shape[1]
  if r > _GRAM_UNROLL_MAX_RANK:
    return jnp.einsum("nrj,nsj->nrs", g, g)
  entry = {}
  for i in range(r):
    for j in range(i, r):
      entry[i, j] = entry[j, i] = jnp.sum(g[:, i] * g[:, j], axis=-1)
  return jnp.stack(
    [jnp.stack([entry[i, j] for j in range(r)], -1) for i in range(r)], -2
  )


def topc_pool_quad(h, factors, factors_f, n_total, chunk_size, axis_name):
  """``V_n^T F V_n = (1/N) sum_m (h_n . h_m)^2 (A_n^T A_m)(A_n^T A_m)^T``.

  ``factors_f``: the ``A_m`` of ``F`` (zero on rows outside the pool).
  """
  n, dim = h.shape
  _, c, r = factors.shape

  def block(hm, am):  # the pool's rows m in one shard's block
    cols = min(hm.shape[0], _QUAD_COLS)
    rows = _blocks.chunk_rows(chunk_size, n, cols * (r * r + 1))

    def one(hc, ac):
      def tile(hmc, amc):
        # g_nm = (h_n . h_m) A_n^T A_m: the square of the kernel split
        # over the two factors of the outer sum g_nm g_nm^T.
        g = jnp.einsum("nar,mak->nrmk", ac, amc)
        g = g * (hc @ hmc.T)[:, None, :, None]
        return _row_grams(g.reshape(g.shape[0], r, -1))

      zero = jnp.zeros((hc.shape[0], r, r), h.dtype)
      return _blocks.sum_rows(tile, (hm, am), cols, zero, masked=1)

    return _blocks.map_rows(one, (h, factors), rows)

  return _ring_sum(block, h, factors_f, axis_name=axis_name) / n_total

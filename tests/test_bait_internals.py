"""BAIT's pieces against dense float64 algebra.

The Fisher factors, the pool's Fisher `pool_fisher` (in the basis `bait`
works in), the Woodbury state after the scans and the small trace solves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bait_family import _greedy
from alfx.bait_family import _pool_fisher
from alfx.bait_family import _structured
from tests import reference_bait as ref
from tests.reference_bait import B
from tests.reference_bait import C
from tests.reference_bait import D
from tests.reference_bait import N
from tests.reference_bait import PATH_IDS
from tests.reference_bait import PATHS


@pytest.mark.parametrize("kind", ref.KINDS)
def test_fisher_factors_reproduce_the_fisher(rng, kind):
  with jax.enable_x64(True):
    emb, probs, _ = ref.problem(rng, n=7, dim=3, c=4)
    f = alfx.fisher_factors(emb, probs, fisher=kind, top_c=3)
    a, h = np.asarray(f.class_factors), np.asarray(f.embeddings)
    assert a.dtype == np.float64
    for i in range(7):
      v = np.stack([np.kron(a[i][:, k], h[i]) for k in range(a.shape[2])], 1)
      fisher = v @ v.T
      if kind == "diagonal":
        fisher = np.diag(np.diag(fisher))
      np.testing.assert_allclose(
        fisher, ref.fisher_matrix(emb[i], probs[i], kind, 3), atol=1e-12
      )
  shapes = {
    "full": (7, 4, 4),
    "topc": (7, 4, 2),
    "binary": (7, 1, 1),
    "diagonal": (7, 4, 1),
  }
  f32 = alfx.fisher_factors(
    emb.astype(np.float32), probs.astype(np.float32), fisher=kind
  )
  assert f32.class_factors.shape == shapes[kind]
  assert f32.class_factors.dtype == jnp.float32


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_pool_fisher_matches_reference_and_can_be_passed(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng)
    stats = alfx.pool_fisher(emb, probs, fisher=kind, method=method)
    big_f = ref.fisher_matrices(emb, probs, kind).mean(0)
    if stats.method != "diagonal":
      np.testing.assert_allclose(stats.center, emb.mean(0), atol=1e-12)
    if stats.method == "dense":
      basis = ref.parameter_basis(stats.center, kind, "dense", C)
      c_f = basis.shape[0] // D
      f4 = (basis @ big_f @ basis.T).reshape(c_f, D, c_f, D)
      ia, ib = np.triu_indices(c_f)
      np.testing.assert_allclose(stats.blocks, f4[ia, :, ib, :], atol=1e-12)
    elif stats.method == "diagonal":
      np.testing.assert_allclose(
        stats.blocks, np.diag(big_f).reshape(C, D), atol=1e-12
      )
    elif kind == "full":  # block-diagonal part: mean_n p_na h h^T
      h = emb @ ref.parameter_basis(stats.center, "binary", method, C).T
      want = np.einsum("na,ni,nj->aij", probs, h, h) / N
      np.testing.assert_allclose(stats.blocks, want, atol=1e-12)
    else:  # topc: V_n^T F V_n
      v = ref.dense_x(emb, probs, kind, 1.0)
      np.testing.assert_allclose(
        stats.quad, np.einsum("ndr,de,nes->nrs", v, big_f, v), atol=1e-10
      )
    plain = ref.run(emb, probs, labeled, B, kind, method, jnp.float64)
    passed = ref.run(
      emb, probs, labeled, B, kind, method, jnp.float64, pool_fisher=stats
    )
    np.testing.assert_array_equal(passed.indices, plain.indices)
    np.testing.assert_allclose(passed.scores, plain.scores, rtol=1e-12)
    # A pytree: it goes through jit.
    leaves = jax.tree.leaves(jax.jit(lambda s: s)(stats))
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


@pytest.mark.parametrize("unroll", [12, 0], ids=["row-sums", "einsum"])
def test_topc_pool_quad_in_tiles_matches_reference(rng, monkeypatch, unroll):
  # Tiles of 5 pool columns (the last one overlapping: N is not a multiple
  # of 5) and chunks of 7 rows, with the Gram matrices of each row formed
  # entry by entry or by one einsum: the same V_n^T F V_n.
  monkeypatch.setattr(_structured, "_QUAD_COLS", 5)
  monkeypatch.setattr(_structured, "_GRAM_UNROLL_MAX_RANK", unroll)
  assert N % 5 != 0 and N % 7 != 0
  with jax.enable_x64(True):
    emb, probs, _ = ref.problem(rng)
    stats = alfx.pool_fisher(
      emb, probs, fisher="topc", method="structured", chunk_size=7
    )
    big_f = ref.fisher_matrices(emb, probs, "topc").mean(0)
    v = ref.dense_x(emb, probs, "topc", 1.0)
    np.testing.assert_allclose(
      stats.quad, np.einsum("ndr,de,nes->nrs", v, big_f, v), atol=1e-10
    )
    np.testing.assert_array_equal(stats.quad, np.swapaxes(stats.quad, 1, 2))


@pytest.mark.parametrize(
  "kind,method",
  [
    ("full", "dense"),
    ("topc", "structured"),
    pytest.param("binary", "dense", marks=pytest.mark.slow),
    pytest.param("topc", "dense", marks=pytest.mark.slow),
    pytest.param("full", "structured", marks=pytest.mark.slow),
  ],
)
def test_woodbury_state_equals_direct_inverse(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng)
    lam = 0.8
    want = ref.bait(emb, probs, labeled, B, kind=kind, lam=lam)
    sel, st = ref.state(emb, probs, labeled, B, kind, method, lam=lam)
    np.testing.assert_array_equal(sel.indices, want["indices"])
    n_lab = labeled.sum()
    s2 = B / (n_lab + B)
    stats = _pool_fisher.pool_fisher_core(
      emb, probs, None, kind, 1 if kind != "topc" else 2, method, None
    )
    basis = ref.parameter_basis(stats.center, kind, method, C)
    x = np.einsum("ed,ndr->ner", basis, ref.dense_x(emb, probs, kind, s2))
    m0_inv = basis @ np.linalg.inv(want["M0"]) @ basis.T
    big_f = basis @ want["F"] @ basis.T
    g0 = m0_inv @ big_f @ m0_inv

    # Initial per-point U_n, W_n.
    np.testing.assert_allclose(
      st["u0"], np.einsum("ndr,de,nes->nrs", x, m0_inv, x), atol=1e-10
    )
    np.testing.assert_allclose(
      st["w0"], np.einsum("ndr,de,nes->nrs", x, g0, x), atol=1e-10
    )

    # M^-1 and G after all forward picks, rebuilt from the low-rank history,
    # equal the direct inverse of the reference's M after the forward pass.
    m_fwd = want["M0"] + sum(
      s2 * ref.fisher_matrix(emb[j], probs[j], kind) for j in want["forward"]
    )
    fwd_inv = basis @ np.linalg.inv(m_fwd) @ basis.T
    d = big_f.shape[0]
    r = st["zy"].shape[-1] // 2
    assert len(st["zy"]) == len(want["forward"])
    z = st["zy"][..., :r].reshape(len(st["zy"]), d, r)
    y = st["zy"][..., r:].reshape(len(st["zy"]), d, r)
    m_inv, g = m0_inv.copy(), g0.copy()
    for zk, yk, sk, wk in zip(z, y, st["s_inv"], st["wj"]):
      m_inv -= zk @ sk @ zk.T
      g += -zk @ sk @ yk.T - yk @ sk @ zk.T + zk @ sk @ wk @ sk @ zk.T
    np.testing.assert_allclose(m_inv, fwd_inv, atol=1e-10)
    np.testing.assert_allclose(g, fwd_inv @ big_f @ fwd_inv, atol=1e-10)

    def assert_forms(got_u, got_w, spec, xs, m_inv):
      # X^T M^-1 X and X^T M^-1 F M^-1 X, contracted as ``spec`` says.
      for got, mid in ((got_u, m_inv), (got_w, m_inv @ big_f @ m_inv)):
        np.testing.assert_allclose(got, np.einsum(spec, xs, mid, xs), atol=1e-9)

    # The picks' blocks after the backward drops (X_p^T M^-1 X_q for every
    # pair) for the reference's final M, the one the drops were chosen on.
    direct = basis @ np.linalg.inv(want["M_final"]) @ basis.T
    xp = x[np.asarray(st["picks"])]
    assert_forms(st["pick_u"], st["pick_w"], "pdk,de,qel->pqkl", xp, direct)

    # Per-point U_n, W_n after the forward pass.
    assert_forms(st["u"], st["w"], "ndr,de,nes->nrs", x, fwd_inv)


@pytest.mark.parametrize("r", [1, 2, 3, 7, 12, 13, 20])
def test_trace_solve_against_numpy(rng, r):
  with jax.enable_x64(True):
    a = rng.standard_normal((9, r, r))
    u = np.einsum("nij,nkj->nik", a, a) / r
    b = rng.standard_normal((9, r, r))
    w = np.einsum("nij,nkj->nik", b, b)
    got = _greedy.trace_solve(jnp.asarray(u), jnp.asarray(w), 1.0)
    want = [np.trace(np.linalg.solve(np.eye(r) + u[i], w[i])) for i in range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    u_small = u / (1 + np.linalg.norm(u, 2, axis=(1, 2)))[:, None, None]
    got = _greedy.trace_solve(jnp.asarray(u_small), jnp.asarray(w), -1.0)
    want = [
      np.trace(np.linalg.solve(u_small[i] - np.eye(r), w[i])) for i in range(9)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("woodbury", [True, False], ids=["woodbury", "dense"])
def test_full_kfk_matches_reference(rng, woodbury):
  # Full's N^2 term coef sum_m v_nm v_nm^T in chunks of 7 rows (the last
  # one overlapping: 23 is not a multiple of 7), with rows outside the pool
  # (p_m = 0 in F), K_a^-1 by Woodbury through the labelled rows or given,
  # against dense float64 inverses.
  n, dim, c, cap, lam, scale, coef = 23, 6, 3, 4, 0.7, 1.3, -0.25
  with jax.enable_x64(True):
    h = rng.normal(size=(n, dim))
    probs = rng.dirichlet(np.ones(c), size=n)
    probs_f = probs * (rng.random(n) > 0.3)[:, None]
    hl = rng.normal(size=(cap, dim))
    weights = rng.random((cap, c))
    k = lam * np.eye(dim) + np.einsum("li,la,lj->aij", hl, weights, hl)
    k_inv = np.linalg.inv(k)  # [C, D, D]
    kern = np.einsum("ni,aij,mj->nam", h, k_inv, h)
    w = kern * probs_f.T[None]
    mean = np.einsum("na,nam->nm", probs, w)
    v = scale * np.sqrt(probs)[:, :, None] * (w - mean[:, None, :])
    want = coef * np.einsum("nrm,nsm->nrs", v, v)
    k_inv_j = jnp.asarray(k_inv)
    got = _structured._full_kfk(
      jnp.asarray(h),
      jnp.asarray(probs_f),
      jnp.asarray(probs),
      scale,
      lambda x: jnp.einsum("aij,nj->nai", k_inv_j, x),
      _structured._kernel(jnp.asarray(hl), jnp.asarray(weights), lam)
      if woodbury
      else None,
      coef,
      7,
      None,
    )
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

"""BAIT (issue 4) against the dense float64 reference in reference_bait.py.

Problems share a few static shapes so that the suite compiles each path only a
handful of times; values (seeds, lam, the labelled set, masks) vary freely.
"""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bait import _bait
from tests.helpers import compile_log
from tests import reference_bait as ref

# (fisher, method): every path of the implementation.
PATHS = [("full", "dense"), ("full", "structured"), ("topc", "dense"),
         ("topc", "structured"), ("binary", "dense"), ("diagonal", "auto")]
PATH_IDS = [f"{k}-{m}" for k, m in PATHS]
N, D, C, B = 96, 5, 4, 3  # the shared shape: d = 20
CAP = 64  # static labelled capacity of the structured path in these tests
# One representative path per kind, for the variants that need a compile each.
PER_KIND = [("full", "dense"), ("topc", "structured"), ("binary", "dense"),
            ("diagonal", "auto")]
PER_KIND_IDS = [f"{k}-{m}" for k, m in PER_KIND]


def _problem(rng, n=N, dim=D, c=C, labeled_fraction=0.2, **kw):
  return ref.random_problem(rng, n, dim, c, labeled_fraction=labeled_fraction,
                            **kw)


def _run(emb, probs, labeled, b, kind, method, dtype, **kw):
  if method == "structured":
    kw.setdefault("labeled_capacity", CAP)
  sel = alfx.bait(jnp.asarray(emb, dtype), jnp.asarray(probs, dtype),
                  b, labeled=jnp.asarray(labeled), fisher=kind, method=method, **kw)
  return jax.tree.map(np.asarray, sel)


def _state(emb, probs, labeled, b, kind, method, *, lam=1.0, oversample=2,
           top_c=2, capacity=None, mask=None):
  """The private state hook: (Selection, per-point U/W and the history)."""
  emb = jnp.asarray(emb)
  probs = jnp.asarray(probs)
  labeled = jnp.asarray(labeled)
  mask = ~labeled if mask is None else jnp.asarray(mask)
  if method == "structured" and capacity is None:
    capacity = CAP
  top_c = top_c if kind == "topc" else 1
  method = _bait._resolve_method(method, kind, probs.shape[1], emb.shape[1])
  stats = _bait._pool_fisher(emb, probs, None, kind, top_c, method, None)
  sel, state = _bait._bait(emb, probs, labeled, mask, lam, stats, None,
                           stats.quad, b, kind, top_c, oversample, method,
                           None, capacity, with_state=True)
  return jax.tree.map(np.asarray, sel), jax.tree.map(np.asarray, state)


def _reference_values(m, big_f, fishers, s2, candidates, sign):
  """Forward (sign=+1): the trace reduction; backward (sign=-1): minus the
  increase of tr(M^-1 F) on removal. Larger is better in both."""
  base = np.trace(np.linalg.solve(m, big_f))
  return np.array([
      sign * (base - np.trace(np.linalg.solve(m + sign * s2 * fishers[i],
                                              big_f)))
      for i in candidates])


def _assert_greedy_optimal(emb, probs, labeled, b, kind, state, *, lam=1.0,
                           mask=None, top_c=2, rtol=1e-4):
  """Each of our forward picks and backward drops is the reference's best
  choice up to rtol: robust to genuine float32 near-ties, and exact otherwise.
  """
  fishers = ref.fisher_matrices(emb, probs, kind, top_c)
  big_f = fishers.mean(0)
  labeled = np.asarray(labeled, bool)
  mask = ~labeled if mask is None else np.asarray(mask, bool)
  n_lab = labeled.sum()
  s2 = b / (n_lab + b)
  m = lam * np.eye(big_f.shape[0]) + fishers[labeled].sum(0) / (n_lab + b)
  picks = state["picks"][state["valid"]]
  taken = set()
  for j in picks:
    cand = [i for i in range(len(emb)) if mask[i] and i not in taken]
    values = _reference_values(m, big_f, fishers, s2, cand, 1.0)
    best = values.max()
    assert values[cand.index(j)] >= best - rtol * abs(best), (j, best)
    taken.add(j)
    m = m + s2 * fishers[j]
  alive = list(range(len(picks)))
  for k in state["dropped"]:
    if k < 0:
      continue
    values = _reference_values(m, big_f, fishers, s2,
                               [picks[a] for a in alive], -1.0)
    best = values.max()
    assert values[alive.index(k)] >= best - rtol * abs(best), (k, best)
    alive.remove(k)
    m = m - s2 * fishers[picks[k]]


# ---------------------------------------------------------------------------
# Equality with the reference.


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_float64_picks_and_scores_equal_reference(rng, kind, method):
  with jax.enable_x64(True):
    for trial in range(4):
      # lam != 1, L = 0 (trial 1), a large labelled set (trial 3).
      frac = (0.2, 0.0, 0.1, 0.4)[trial]
      emb, probs, labeled = _problem(rng, labeled_fraction=frac)
      lam = float(rng.uniform(0.2, 3.0))
      want = ref.bait(emb, probs, labeled, B, kind=kind, lam=lam)
      got = _run(emb, probs, labeled, B, kind, method, jnp.float64, lam=lam)
      assert got.scores.dtype == np.float64
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)
      assert got.valid.all()


@pytest.mark.parametrize("kind,method", PER_KIND, ids=PER_KIND_IDS)
def test_float64_oversample_one_equals_reference(rng, kind, method):
  # oversample = 1: forward picks only, no backward pass.
  with jax.enable_x64(True):
    for frac in (0.2, 0.0):
      emb, probs, labeled = _problem(rng, labeled_fraction=frac)
      want = ref.bait(emb, probs, labeled, B, kind=kind, lam=0.6,
                      oversample=1)
      got = _run(emb, probs, labeled, B, kind, method, jnp.float64, lam=0.6,
                 oversample=1)
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


def test_float64_oversample_three_equals_reference(rng):
  # Two backward rounds per kept pick.
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng)
    want = ref.bait(emb, probs, labeled, B, kind="full", oversample=3)
    got = _run(emb, probs, labeled, B, "full", "structured", jnp.float64,
               oversample=3)
    np.testing.assert_array_equal(got.indices, want["indices"])
    np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)
    assert len(want["dropped"]) == 2 * B


@pytest.mark.slow
@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_float64_larger_problem_and_oversample_variants(rng, kind, method):
  # N up to a few hundred, C = 5, D = 8; oversample = 1 (no backward pass)
  # and 3 (two backward rounds).
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng, n=240, dim=8, c=5)
    for oversample in (1, 3):
      want = ref.bait(emb, probs, labeled, 4, kind=kind, lam=0.7,
                      oversample=oversample)
      got = _run(emb, probs, labeled, 4, kind, method, jnp.float64, lam=0.7,
                 oversample=oversample)
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_float32_picks_are_greedy_optimal_and_scores_close(rng, kind, method):
  for trial in range(3):
    emb, probs, labeled = _problem(rng, labeled_fraction=(0.2, 0.0, 0.4)[trial])
    lam = float(rng.uniform(0.5, 2.0))
    want = ref.bait(emb, probs, labeled, B, kind=kind, lam=lam)
    got = _run(emb, probs, labeled, B, kind, method, jnp.float32, lam=lam)
    assert got.scores.dtype == np.float32
    if not np.array_equal(got.indices, want["indices"]):
      # Only a genuine near-tie may differ: replay the reference along our
      # picks and require each to be (nearly) the best choice.
      if kind == "diagonal":
        pytest.fail(f"diagonal picks differ: {got.indices} vs"
                    f" {want['indices']}")
      _, state = _state(emb.astype(np.float32), probs.astype(np.float32),
                        labeled, B, kind, method, lam=lam)
      _assert_greedy_optimal(emb, probs, labeled, B, kind, state, lam=lam)
    else:
      np.testing.assert_allclose(got.scores, want["scores"], rtol=2e-4,
                                 atol=1e-6 * np.abs(want["scores"]).max())


@pytest.mark.slow
def test_topc_with_more_classes_kept(rng):
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng, n=80, dim=4, c=5)
    for method in ("dense", "structured"):
      want = ref.bait(emb, probs, labeled, 3, kind="topc", top_c=3)
      got = _run(emb, probs, labeled, 3, "topc", method, jnp.float64,
                 top_c=3)
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_zero_probability_classes_give_no_nan(rng, kind, method):
  emb, probs, labeled = _problem(rng)
  probs[:10] = np.eye(C)[rng.integers(0, C, 10)]  # confident: p = 0 and 1
  probs[10:20, 0] = 0
  probs[10:20] /= probs[10:20].sum(-1, keepdims=True)
  with jax.enable_x64(True):
    want = ref.bait(emb, probs, labeled, B, kind=kind)
    got = _run(emb, probs, labeled, B, kind, method, jnp.float64)
    np.testing.assert_array_equal(got.indices, want["indices"])
  got32 = _run(emb, probs, labeled, B, kind, method, jnp.float32)
  assert np.isfinite(got32.scores).all()


# ---------------------------------------------------------------------------
# float32 where the standard basis is ill-conditioned: a common offset, huge
# squares, a tiny lam. Against the float64 reference.

OFFSET_SHAPE = (12, 5, 3)  # the example: N=12, D=5, C=3, 2 labelled


def _offset_problem(seed, offset):
  rng = np.random.default_rng(seed)
  emb, probs, _ = ref.random_problem(rng, *OFFSET_SHAPE)
  labeled = np.zeros(OFFSET_SHAPE[0], bool)
  labeled[rng.choice(OFFSET_SHAPE[0], 2, replace=False)] = True
  return emb + offset, probs, labeled


@pytest.mark.parametrize("kind", ["full", "binary", "diagonal"])
def test_float32_offset_picks_equal_float64_reference(kind):
  # Before the change of basis, dense full and binary picks differed from
  # float64 at an offset of 1e3, and scores went negative at 1e4.
  for offset in (0.0, 1e1, 1e2, 1e3):
    for seed in range(6):
      emb, probs, labeled = _offset_problem(seed, offset)
      want = ref.bait(emb, probs, labeled, 2, kind=kind)
      got = _run(emb, probs, labeled, 2, kind, "auto", jnp.float32)
      np.testing.assert_array_equal(got.indices, want["indices"],
                                    err_msg=f"offset {offset}, seed {seed}")
      assert got.valid.all() and (got.scores >= 0).all()
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-3)


@pytest.mark.parametrize("kind,method", [
    ("topc", "dense"), ("full", "structured"), ("topc", "structured")])
def test_float32_offset_picks_are_right_or_refused(kind, method):
  # Where float32 cannot resolve the problem (topc with a labelled set that
  # barely covers a class direction; the structured path's Woodbury
  # identities at large offsets) bait raises instead of returning other
  # picks than float64.
  answered = 0
  for offset in (0.0, 1e2, 1e3):
    for seed in range(4):
      emb, probs, labeled = _offset_problem(seed, offset)
      want = ref.bait(emb, probs, labeled, 2, kind=kind)
      try:
        got = _run(emb, probs, labeled, 2, kind, method, jnp.float32)
      except ValueError as e:
        assert "too small for these embeddings in float32" in str(e)
        assert "float64" in str(e)
        continue
      answered += 1
      np.testing.assert_array_equal(got.indices, want["indices"],
                                    err_msg=f"offset {offset}, seed {seed}")
      assert (got.scores >= 0).all()
  assert answered >= 4  # at least the offset-free problems


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"), ("topc", "dense"), ("binary", "dense")])
def test_float64_offset_equals_reference(kind, method):
  with jax.enable_x64(True):
    for seed in range(3):
      emb, probs, labeled = _offset_problem(seed, 1e4)
      want = ref.bait(emb, probs, labeled, 2, kind=kind)
      got = _run(emb, probs, labeled, 2, kind, method, jnp.float64)
      np.testing.assert_array_equal(got.indices, want["indices"])
      # The reference itself (explicit inverses in the standard basis) is
      # only good to ~eps64 |h|^2 / lam ~ 1e-7 here.
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-5)


def test_offset_past_float32_resolution_warns():
  emb, probs, labeled = _offset_problem(0, 1e3)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _run(emb, probs, labeled, 2, "full", "auto", jnp.float32)
  emb, probs, labeled = _offset_problem(0, 1e4)
  with pytest.warns(UserWarning, match="large offset.*Use float64"):
    got = _run(emb, probs, labeled, 2, "full", "auto", jnp.float32)
  assert (got.scores >= 0).all()


def test_overflowing_squares_name_embeddings():
  emb, probs, labeled = _offset_problem(0, 0.0)
  huge = jnp.asarray(emb * 1e20, jnp.float32)
  for call in (lambda: alfx.bait(huge, probs, 2, labeled=labeled),
               lambda: alfx.pool_fisher(huge, probs)):
    with pytest.raises(ValueError, match=r"embeddings .* squares overflow"
                       r" float32.*float64"):
      call()
  # The documented way out: scaling embeddings by s and lam by s^2 leaves
  # the picks unchanged.
  want = _run(emb, probs, labeled, 2, "full", "auto", jnp.float32)
  got = _run(emb * 1e-3, probs, labeled, 2, "full", "auto", jnp.float32,
             lam=1e-6)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4)


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"), ("binary", "dense"), ("topc", "structured")])
def test_tiny_lam_is_refused_or_invalid_never_nan_valid(kind, method):
  emb, probs, labeled = _offset_problem(1, 0.0)
  emb, probs = emb.astype(np.float32), probs.astype(np.float32)
  with pytest.raises(ValueError, match="lam=1e-30 is too small"):
    _run(emb, probs, labeled, 2, kind, method, jnp.float32, lam=1e-30)
  fn = jax.jit(lambda e, p, l, a: alfx.bait(
      e, p, 2, labeled=l, fisher=kind, method=method, lam=a, labeled_capacity=CAP))
  sel = fn(emb, probs, labeled, 1e-30)
  assert not np.asarray(sel.valid).any()
  sel = fn(emb, probs, labeled, 1.0)
  assert np.asarray(sel.valid).all()


# ---------------------------------------------------------------------------
# The Woodbury state after the scans.


def _basis(center, kind, method, c):
  """The rows of the parameter basis that `bait` works in, ``[d', d]``.

  ``Q``: the Householder reflection mapping ``center`` to a multiple of
  ``e_1``; ``P^T``: for dense full/topc, the orthonormal basis of the class
  directions orthogonal to ``1_C`` (the Fisher's null space). Both leave
  ``tr(M^-1 F)`` unchanged; M^-1 and G restricted to the basis are ``B M^-1
  B^T`` and ``B G B^T`` because M is block diagonal across the null space.
  """
  center = np.asarray(center, np.float64)
  v = center.copy()
  v[0] += np.copysign(np.linalg.norm(center), center[0] or 1.0)
  q = np.eye(len(center)) - 2 * np.outer(v, v) / (v @ v)
  if kind == "binary":
    return q
  classes = np.eye(c)
  if method == "dense" and c > 1:
    w = np.full(c, 1 / np.sqrt(c))
    w[-1] -= 1
    classes = (np.eye(c) - 2 * np.outer(w, w) / (w @ w))[:-1]
  return np.kron(classes, q)


def _dense_x(emb, probs, kind, s2, top_c=2):
  """X_n = s V_n as dense [N, d, r] (reference factors)."""
  return np.sqrt(s2) * np.stack([ref.fisher_factor_matrix(h, p, kind, top_c)
                                 for h, p in zip(emb, probs)])


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"), ("topc", "structured"),
    pytest.param("binary", "dense", marks=pytest.mark.slow),
    pytest.param("topc", "dense", marks=pytest.mark.slow),
    pytest.param("full", "structured", marks=pytest.mark.slow)])
def test_woodbury_state_equals_direct_inverse(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng)
    lam = 0.8
    want = ref.bait(emb, probs, labeled, B, kind=kind, lam=lam)
    sel, st = _state(emb, probs, labeled, B, kind, method, lam=lam)
    np.testing.assert_array_equal(sel.indices, want["indices"])
    n_lab = labeled.sum()
    s2 = B / (n_lab + B)
    stats = _bait._pool_fisher(emb, probs, None, kind, 1 if kind != "topc"
                               else 2, method, None)
    basis = _basis(stats.center, kind, method, C)
    x = np.einsum("ed,ndr->ner", basis, _dense_x(emb, probs, kind, s2))
    m0_inv = basis @ np.linalg.inv(want["M0"]) @ basis.T
    big_f = basis @ want["F"] @ basis.T
    g0 = m0_inv @ big_f @ m0_inv

    # Initial per-point U_n, W_n.
    np.testing.assert_allclose(
        st["u0"], np.einsum("ndr,de,nes->nrs", x, m0_inv, x), atol=1e-10)
    np.testing.assert_allclose(
        st["w0"], np.einsum("ndr,de,nes->nrs", x, g0, x), atol=1e-10)

    # M^-1 and G after all forward picks and backward drops, rebuilt from the
    # low-rank history, equal the direct inverse of the reference's final M.
    d = big_f.shape[0]
    r = st["zy"].shape[-1] // 2
    z = st["zy"][..., :r].reshape(len(st["zy"]), d, r)
    y = st["zy"][..., r:].reshape(len(st["zy"]), d, r)
    m_inv, g = m0_inv.copy(), g0.copy()
    for zk, yk, sk, wk in zip(z, y, st["s_inv"], st["wj"]):
      m_inv -= zk @ sk @ zk.T
      g += -zk @ sk @ yk.T - yk @ sk @ zk.T + zk @ sk @ wk @ sk @ zk.T
    direct = basis @ np.linalg.inv(want["M_final"]) @ basis.T
    np.testing.assert_allclose(m_inv, direct, atol=1e-10)
    np.testing.assert_allclose(g, direct @ big_f @ direct, atol=1e-10)

    # Per-point U_n, W_n after the forward pass.
    m_fwd = want["M0"] + sum(s2 * ref.fisher_matrix(emb[j], probs[j], kind)
                             for j in want["forward"])
    fwd_inv = basis @ np.linalg.inv(m_fwd) @ basis.T
    np.testing.assert_allclose(
        st["u"], np.einsum("ndr,de,nes->nrs", x, fwd_inv, x), atol=1e-9)
    np.testing.assert_allclose(
        st["w"], np.einsum("ndr,de,nes->nrs", x, fwd_inv @ big_f @ fwd_inv,
                           x), atol=1e-9)


def test_woodbury_state_float32_drift_is_small(rng):
  emb, probs, labeled = _problem(rng)
  want = ref.bait(emb, probs, labeled, B, kind="full")
  _, st = _state(emb.astype(np.float32), probs.astype(np.float32), labeled,
                 B, "full", "dense")
  center = _bait._pool_fisher(emb, probs, None, "full", 1, "dense",
                              None).center
  basis = _basis(center, "full", "dense", C)
  m0_inv = basis @ np.linalg.inv(want["M0"]) @ basis.T
  d = m0_inv.shape[0]
  r = st["zy"].shape[-1] // 2
  z = st["zy"][..., :r].reshape(len(st["zy"]), d, r).astype(np.float64)
  m_inv = m0_inv - sum(zk @ sk @ zk.T for zk, sk in zip(z, st["s_inv"]))
  direct = basis @ np.linalg.inv(want["M_final"]) @ basis.T
  assert np.abs(m_inv - direct).max() < 1e-5 * np.abs(direct).max()


# ---------------------------------------------------------------------------
# Masks, duplicates, validity, jit, vmap, recompilation.


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_mask_respected_and_no_duplicates(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng)
    mask = (rng.random(N) < 0.4) & ~labeled
    want = ref.bait(emb, probs, labeled, B, kind=kind, mask=mask)
    got = _run(emb, probs, labeled, B, kind, method, jnp.float64,
               mask=jnp.asarray(mask))
    np.testing.assert_array_equal(got.indices, want["indices"])
    assert mask[got.indices].all()
    assert len(set(got.indices.tolist())) == B


def test_fewer_selectable_than_oversample_times_batch(rng):
  # 4 selectable, B = 3: the forward pass picks all 4, the backward drops 1.
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng)
    mask = np.zeros(N, bool)
    mask[rng.choice(np.flatnonzero(~labeled), 4, replace=False)] = True
    for kind, method in PATHS:
      want = ref.bait(emb, probs, labeled, B, kind=kind, mask=mask)
      got = _run(emb, probs, labeled, B, kind, method, jnp.float64,
                 mask=jnp.asarray(mask))
      np.testing.assert_array_equal(got.indices, want["indices"])
      assert got.valid.all()


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"), ("diagonal", "auto"),
    pytest.param("topc", "structured", marks=pytest.mark.slow)])
def test_under_jit_a_shortfall_is_marked_invalid(rng, kind, method):
  emb, probs, labeled = _problem(rng)
  labeled = np.asarray(labeled).copy()
  labeled[[3, 50]] = False  # labelled points are never picked
  mask = np.zeros(N, bool)
  mask[[3, 50]] = True
  fn = jax.jit(lambda e, p, l, m: alfx.bait(
      e, p, B, labeled=l, fisher=kind, mask=m, method=method,
      labeled_capacity=CAP))
  sel = fn(emb.astype(np.float32), probs.astype(np.float32), labeled,
           jnp.asarray(mask))
  np.testing.assert_array_equal(sel.valid, [True, True, False])
  assert set(np.asarray(sel.indices[:2]).tolist()) == {3, 50}


def test_batch_larger_than_selectable_raises(rng):
  emb, probs, labeled = _problem(rng)
  mask = np.zeros(N, bool)
  mask[:2] = True
  labeled = np.asarray(labeled).copy()
  labeled[:2] = False
  with pytest.raises(ValueError, match="batch_size=3 is larger than the"
                     " number of selectable"):
    alfx.bait(emb, probs, 3, labeled=labeled, mask=jnp.asarray(mask))
  with pytest.raises(ValueError, match="mask selects no points"):
    alfx.bait(emb, probs, 1, labeled=labeled, mask=jnp.zeros(N, bool))
  everything = np.ones(N, bool)
  with pytest.raises(ValueError, match="labeled marks every point that mask"
                     " selects"):
    alfx.bait(emb, probs, 1, labeled=jnp.asarray(everything))
  with pytest.raises(ValueError, match="labeled marks every point that mask"
                     " selects"):
    alfx.bait(emb, probs, 1, labeled=jnp.asarray(mask), mask=mask)


def test_structured_capacity_below_the_labelled_count_raises(rng):
  emb, probs, _ = _problem(rng)
  labeled = np.zeros(N, bool)
  labeled[[4, 9]] = True
  with pytest.raises(ValueError, match=r"labeled_capacity=1 is smaller than"
                     r" the number of labelled points \(2\)"):
    alfx.bait(emb, probs, B, labeled=labeled, method="structured",
              labeled_capacity=1)
  sel = alfx.bait(emb, probs, B, labeled=labeled, method="structured",
                  labeled_capacity=2)
  assert np.asarray(sel.valid).all()


def test_empty_in_pool_and_missing_lam_raise(rng):
  emb, probs, labeled = _problem(rng)
  nothing = jnp.zeros(N, bool)
  with pytest.raises(ValueError, match="in_pool .* marks no row"):
    alfx.pool_fisher(emb, probs, in_pool=nothing)
  with pytest.raises(ValueError, match="in_pool .* marks no row"):
    alfx.bait(emb, probs, B, labeled=labeled, in_pool=nothing)
  with pytest.raises(ValueError, match="lam is required"):
    alfx.bait(emb, probs, B, labeled=labeled, lam=None)


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"), ("diagonal", "auto"),
    pytest.param("topc", "structured", marks=pytest.mark.slow),
    pytest.param("binary", "dense", marks=pytest.mark.slow)])
def test_nan_input_under_jit_gives_nan_scores_and_invalid(rng, kind, method):
  emb, probs, labeled = _problem(rng)
  emb, probs = emb.astype(np.float32), probs.astype(np.float32)
  fn = jax.jit(lambda e, p, l: alfx.bait(e, p, B, labeled=l, fisher=kind,
                                         method=method, labeled_capacity=CAP))
  bad_emb = emb.copy()
  bad_emb[7, 2] = np.nan
  bad_probs = probs.copy()
  bad_probs[11] = np.nan
  for e, p in ((bad_emb, probs), (emb, bad_probs)):
    sel = fn(e, p, labeled)
    assert np.isnan(np.asarray(sel.scores)).all()
    assert not np.asarray(sel.valid).any()
  assert np.asarray(fn(emb, probs, labeled).valid).all()


class JitVmapTest(chex.TestCase):
  """The other paths under jit and vmap: test_jit_vmap_other_paths (slow)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_compiled_and_uncompiled_calls_agree(self):
    rng = np.random.default_rng(11)
    emb, probs, labeled = _problem(rng)
    emb, probs = emb.astype(np.float32), probs.astype(np.float32)
    for kind, method in (("full", "dense"),):
      fn = self.variant(lambda e, p, l, kind=kind, method=method: alfx.bait(
          e, p, B, labeled=l, fisher=kind, method=method, labeled_capacity=CAP))
      got = fn(emb, probs, jnp.asarray(labeled))
      want = ref.bait(emb, probs, labeled, B, kind=kind)
      np.testing.assert_array_equal(got.indices, want["indices"])

  def test_vmap_over_seeds_equals_python_loop(self):
    rng = np.random.default_rng(12)
    problems = [_problem(rng) for _ in range(3)]
    emb = jnp.asarray(np.stack([p[0] for p in problems]), jnp.float32)
    probs = jnp.asarray(np.stack([p[1] for p in problems]), jnp.float32)
    labeled = jnp.asarray(np.stack([p[2] for p in problems]))
    lam = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
    for kind, method in (("full", "dense"), ("topc", "structured")):
      fn = lambda e, p, l, a, kind=kind, method=method: alfx.bait(
          e, p, B, labeled=l, fisher=kind, method=method, lam=a, labeled_capacity=CAP)
      batched = jax.vmap(fn)(emb, probs, labeled, lam)
      for i in range(3):
        single = fn(emb[i], probs[i], labeled[i], float(lam[i]))
        np.testing.assert_array_equal(batched.indices[i], single.indices)
        np.testing.assert_allclose(batched.scores[i], single.scores,
                                   rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind,method", [
    ("topc", "structured"), ("binary", "dense"), ("diagonal", "auto"),
    ("full", "structured"), ("topc", "dense")])
def test_jit_vmap_other_paths(rng, kind, method):
  problems = [_problem(rng) for _ in range(2)]
  emb = jnp.asarray(np.stack([p[0] for p in problems]), jnp.float32)
  probs = jnp.asarray(np.stack([p[1] for p in problems]), jnp.float32)
  labeled = jnp.asarray(np.stack([p[2] for p in problems]))
  fn = lambda e, p, l: alfx.bait(e, p, B, labeled=l, fisher=kind, method=method,
                                 labeled_capacity=CAP)
  batched = jax.vmap(fn)(emb, probs, labeled)
  jitted = jax.jit(fn)
  for i in range(2):
    want = ref.bait(problems[i][0], problems[i][1], problems[i][2], B,
                    kind=kind)
    np.testing.assert_array_equal(batched.indices[i], want["indices"])
    np.testing.assert_array_equal(jitted(emb[i], probs[i], labeled[i]).indices,
                                  want["indices"])


@pytest.mark.parametrize("kind,method", [
    pytest.param("full", "dense", marks=pytest.mark.slow),
    pytest.param("topc", "structured", marks=pytest.mark.slow),
    pytest.param("diagonal", "auto", marks=pytest.mark.slow)])
def test_uncompiled_op_by_op_run_matches(rng, kind, method):
  emb, probs, labeled = _problem(rng, n=16, dim=3, c=3)
  with jax.enable_x64(True):
    want = ref.bait(emb, probs, labeled, 2, kind=kind)
    with jax.disable_jit():
      got = _run(emb, probs, labeled, 2, kind, method, jnp.float64)
    np.testing.assert_array_equal(got.indices, want["indices"])
    np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"), ("full", "structured"), ("diagonal", "auto"),
    pytest.param("topc", "structured", marks=pytest.mark.slow),
    pytest.param("binary", "dense", marks=pytest.mark.slow)])
def test_no_recompilation_across_rounds(rng, kind, method):
  emb, probs, labeled = _problem(rng, labeled_fraction=0.0)
  emb, probs = jnp.asarray(emb, jnp.float32), jnp.asarray(probs, jnp.float32)
  labeled = np.zeros(N, bool)
  labeled[:9] = True  # 9..16 labelled: one capacity bucket for structured
  alfx.bait(emb, probs, B, labeled=jnp.asarray(labeled), fisher=kind,
            method=method)
  with compile_log() as log:
    for _ in range(3):  # active-learning rounds: the labelled set grows
      sel = alfx.bait(emb, probs, B, labeled=jnp.asarray(labeled),
                      fisher=kind, method=method,
                      lam=float(rng.uniform(0.5, 2)))
      labeled[np.asarray(sel.indices)[:2]] = True
      assert not labeled[np.asarray(sel.indices)[2:]].any()
  assert not log.names, log.names


def test_structured_capacity_overflow_under_jit_is_invalid(rng):
  emb, probs, labeled = _problem(rng, labeled_fraction=0.3)
  fn = jax.jit(lambda e, p, l: alfx.bait(e, p, B, labeled=l, method="structured",
                                         labeled_capacity=8))
  sel = fn(emb.astype(np.float32), probs.astype(np.float32),
           jnp.asarray(labeled))
  assert labeled.sum() > 8 and not np.asarray(sel.valid).any()
  # Enough capacity: valid and equal to the reference.
  ok = _run(emb, probs, labeled, B, "full", "structured", jnp.float32)
  want = ref.bait(emb, probs, labeled, B)
  np.testing.assert_array_equal(ok.indices, want["indices"])
  assert ok.valid.all()


@pytest.mark.parametrize("kind,method", [
    ("full", "dense"),
    pytest.param("full", "structured", marks=pytest.mark.slow),
    pytest.param("binary", "dense", marks=pytest.mark.slow)])
def test_chunk_size_does_not_change_the_result(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng)
    want = _run(emb, probs, labeled, B, kind, method, jnp.float64)
    got = _run(emb, probs, labeled, B, kind, method, jnp.float64,
               chunk_size=7)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-10)


# ---------------------------------------------------------------------------
# Factors, pool Fisher, small solves.


@pytest.mark.parametrize("kind", ref.KINDS)
def test_fisher_factors_reproduce_the_fisher(rng, kind):
  with jax.enable_x64(True):
    emb, probs, _ = _problem(rng, n=7, dim=3, c=4)
    f = alfx.fisher_factors(emb, probs, fisher=kind, top_c=3)
    a, h = np.asarray(f.class_factors), np.asarray(f.embeddings)
    assert a.dtype == np.float64
    for i in range(7):
      v = np.stack([np.kron(a[i][:, k], h[i]) for k in range(a.shape[2])], 1)
      fisher = v @ v.T
      if kind == "diagonal":
        fisher = np.diag(np.diag(fisher))
      np.testing.assert_allclose(
          fisher, ref.fisher_matrix(emb[i], probs[i], kind, 3), atol=1e-12)
  shapes = {"full": (7, 4, 4), "topc": (7, 4, 2), "binary": (7, 1, 1),
            "diagonal": (7, 4, 1)}
  f32 = alfx.fisher_factors(emb.astype(np.float32), probs.astype(np.float32),
                            fisher=kind)
  assert f32.class_factors.shape == shapes[kind]
  assert f32.class_factors.dtype == jnp.float32


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_pool_fisher_matches_reference_and_can_be_passed(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = _problem(rng)
    stats = alfx.pool_fisher(emb, probs, fisher=kind, method=method)
    big_f = ref.fisher_matrices(emb, probs, kind).mean(0)
    if stats.method != "diagonal":
      np.testing.assert_allclose(stats.center, emb.mean(0), atol=1e-12)
    if stats.method == "dense":
      basis = _basis(stats.center, kind, "dense", C)
      c_f = basis.shape[0] // D
      f4 = (basis @ big_f @ basis.T).reshape(c_f, D, c_f, D)
      ia, ib = np.triu_indices(c_f)
      np.testing.assert_allclose(stats.blocks, f4[ia, :, ib, :], atol=1e-12)
    elif stats.method == "diagonal":
      np.testing.assert_allclose(stats.blocks, np.diag(big_f).reshape(C, D),
                                 atol=1e-12)
    elif kind == "full":  # block-diagonal part: mean_n p_na h h^T
      h = emb @ _basis(stats.center, "binary", method, C).T
      want = np.einsum("na,ni,nj->aij", probs, h, h) / N
      np.testing.assert_allclose(stats.blocks, want, atol=1e-12)
    else:  # topc: V_n^T F V_n
      v = _dense_x(emb, probs, kind, 1.0)
      np.testing.assert_allclose(
          stats.quad, np.einsum("ndr,de,nes->nrs", v, big_f, v), atol=1e-10)
    plain = _run(emb, probs, labeled, B, kind, method, jnp.float64)
    passed = _run(emb, probs, labeled, B, kind, method, jnp.float64,
                  pool_fisher=stats)
    np.testing.assert_array_equal(passed.indices, plain.indices)
    np.testing.assert_allclose(passed.scores, plain.scores, rtol=1e-12)
    # A pytree: it goes through jit.
    leaves = jax.tree.leaves(jax.jit(lambda s: s)(stats))
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


@pytest.mark.parametrize("r", [1, 2, 3, 7, 12, 13, 20])
def test_trace_solve_against_numpy(rng, r):
  with jax.enable_x64(True):
    a = rng.standard_normal((9, r, r))
    u = np.einsum("nij,nkj->nik", a, a) / r
    b = rng.standard_normal((9, r, r))
    w = np.einsum("nij,nkj->nik", b, b)
    got = _bait._trace_solve(jnp.asarray(u), jnp.asarray(w), 1.0)
    want = [np.trace(np.linalg.solve(np.eye(r) + u[i], w[i])) for i in
            range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    u_small = u / (1 + np.linalg.norm(u, 2, axis=(1, 2)))[:, None, None]
    got = _bait._trace_solve(jnp.asarray(u_small), jnp.asarray(w), -1.0)
    want = [np.trace(np.linalg.solve(u_small[i] - np.eye(r), w[i]))
            for i in range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


# ---------------------------------------------------------------------------
# Bad input.


class TestBadInput:

  def _args(self, rng):
    emb, probs, labeled = _problem(rng)
    return emb.astype(np.float32), probs.astype(np.float32), labeled

  def test_shapes_and_dtypes(self, rng):
    emb, probs, labeled = self._args(rng)
    with pytest.raises(ValueError, match=r"embeddings must have shape \[N, D\]"):
      alfx.bait(emb[0], probs, B, labeled=labeled)
    with pytest.raises(ValueError, match=r"probs must have shape \[N=96, C\]"):
      alfx.bait(emb, probs[:5], B, labeled=labeled)
    with pytest.raises(ValueError, match=r"labeled must have shape \[N=96\]"):
      alfx.bait(emb, probs, B, labeled=labeled[:5])
    with pytest.raises(ValueError, match="labeled must be a boolean"):
      alfx.bait(emb, probs, B, labeled=labeled.astype(np.int32))
    with pytest.raises(ValueError, match=r"mask must have shape \[N=96\]"):
      alfx.bait(emb, probs, B, labeled=labeled, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="embeddings must be a floating"):
      alfx.bait(emb.astype(np.int32), probs, B, labeled=labeled)

  def test_values(self, rng):
    emb, probs, labeled = self._args(rng)
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="embeddings.*NaN"):
      alfx.bait(bad, probs, B, labeled=labeled)
    with pytest.raises(ValueError, match="probs.*must be probabilities"):
      alfx.bait(emb, probs * 2, B, labeled=labeled)
    with pytest.raises(ValueError, match="probs.*must be probabilities"):
      alfx.bait(emb, np.log(probs), B, labeled=labeled)

  def test_options(self, rng):
    emb, probs, labeled = self._args(rng)
    with pytest.raises(ValueError, match="fisher must be one of"):
      alfx.bait(emb, probs, B, labeled=labeled, fisher="exp")
    with pytest.raises(ValueError, match="top_c=5 is larger than the number"
                       " of classes"):
      alfx.bait(emb, probs, B, labeled=labeled, fisher="topc", top_c=5)
    for bad in (0, -1, 1.5):
      with pytest.raises(ValueError, match="top_c"):
        alfx.bait(emb, probs, B, labeled=labeled, fisher="topc", top_c=bad)
      with pytest.raises(ValueError, match="oversample"):
        alfx.bait(emb, probs, B, labeled=labeled, oversample=bad)
      with pytest.raises(ValueError, match="chunk_size"):
        alfx.bait(emb, probs, B, labeled=labeled, chunk_size=bad)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
      with pytest.raises(ValueError, match="lam must be"):
        alfx.bait(emb, probs, B, labeled=labeled, lam=bad)
    with pytest.raises(ValueError, match="lam must be a scalar"):
      alfx.bait(emb, probs, B, labeled=labeled, lam=jnp.ones(2))
    with pytest.raises(ValueError, match="method must be one of"):
      alfx.bait(emb, probs, B, labeled=labeled, method="sparse")
    with pytest.raises(ValueError, match="'binary' has d = D"):
      alfx.bait(emb, probs, B, labeled=labeled, fisher="binary", method="structured")
    for bad in (0, 2.0, True, None):
      with pytest.raises(ValueError, match="batch_size"):
        alfx.bait(emb, probs, bad, labeled=labeled)
    with pytest.raises(ValueError, match="fisher must be one of"):
      alfx.fisher_factors(emb, probs, fisher="exp")
    with pytest.raises(ValueError, match="fisher must be one of"):
      alfx.pool_fisher(emb, probs, fisher="exp")

  def test_mismatched_pool_fisher(self, rng):
    emb, probs, labeled = self._args(rng)
    stats = alfx.pool_fisher(emb, probs, fisher="binary")
    with pytest.raises(ValueError, match="pool_fisher was computed for"
                       " fisher='binary'"):
      alfx.bait(emb, probs, B, labeled=labeled, pool_fisher=stats)
    other = alfx.pool_fisher(emb[:, :3], probs, fisher="binary")
    with pytest.raises(ValueError, match=r"pool_fisher.blocks must have shape"
                       r" \[1, 5, 5\]"):
      alfx.bait(emb, probs, B, labeled=labeled, fisher="binary", pool_fisher=other)
    with pytest.raises(ValueError, match="must be the PoolFisher"):
      alfx.bait(emb, probs, B, labeled=labeled, pool_fisher=np.zeros(3))

"""BAIT in float32 against the float64 reference.

Picks are the reference's or, at a genuine near-tie, greedy-optimal; where
the standard basis is ill-conditioned (a common offset, huge squares, a tiny
lam) float32 is right or refused, never silently wrong.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bait_family import _pool_fisher
from tests import reference_bait as ref
from tests.reference_bait import B
from tests.reference_bait import C
from tests.reference_bait import CAP
from tests.reference_bait import PATH_IDS
from tests.reference_bait import PATHS


def _assert_greedy_optimal(
  emb, probs, labeled, b, kind, state, *, lam=1.0, mask=None, top_c=2, rtol=1e-4
):
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
    values = ref.reference_values(m, big_f, fishers, s2, cand, 1.0)
    best = values.max()
    assert values[cand.index(j)] >= best - rtol * abs(best), (j, best)
    taken.add(j)
    m = m + s2 * fishers[j]
  alive = list(range(len(picks)))
  for k in state["dropped"]:
    if k < 0:
      continue
    values = ref.reference_values(
      m, big_f, fishers, s2, [picks[a] for a in alive], -1.0
    )
    best = values.max()
    assert values[alive.index(k)] >= best - rtol * abs(best), (k, best)
    alive.remove(k)
    m = m - s2 * fishers[picks[k]]


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_float32_picks_are_greedy_optimal_and_scores_close(rng, kind, method):
  for trial in range(3):
    emb, probs, labeled = ref.problem(
      rng, labeled_fraction=(0.2, 0.0, 0.4)[trial]
    )
    lam = float(rng.uniform(0.5, 2.0))
    want = ref.bait(emb, probs, labeled, B, kind=kind, lam=lam)
    got = ref.run(emb, probs, labeled, B, kind, method, jnp.float32, lam=lam)
    assert got.scores.dtype == np.float32
    if not np.array_equal(got.indices, want["indices"]):
      # Only a genuine near-tie may differ: replay the reference along our
      # picks and require each to be (nearly) the best choice.
      if kind == "diagonal":
        pytest.fail(
          f"diagonal picks differ: {got.indices} vs {want['indices']}"
        )
      _, state = ref.state(
        emb.astype(np.float32),
        probs.astype(np.float32),
        labeled,
        B,
        kind,
        method,
        lam=lam,
      )
      _assert_greedy_optimal(emb, probs, labeled, B, kind, state, lam=lam)
    else:
      np.testing.assert_allclose(
        got.scores,
        want["scores"],
        rtol=2e-4,
        atol=1e-6 * np.abs(want["scores"]).max(),
      )


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
      got = ref.run(emb, probs, labeled, 2, kind, "auto", jnp.float32)
      np.testing.assert_array_equal(
        got.indices, want["indices"], err_msg=f"offset {offset}, seed {seed}"
      )
      assert got.valid.all() and (got.scores >= 0).all()
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-3)


@pytest.mark.parametrize(
  "kind,method",
  [("topc", "dense"), ("full", "structured"), ("topc", "structured")],
)
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
        got = ref.run(emb, probs, labeled, 2, kind, method, jnp.float32)
      except ValueError as e:
        assert "too small for these embeddings in float32" in str(e)
        assert "float64" in str(e)
        continue
      answered += 1
      np.testing.assert_array_equal(
        got.indices, want["indices"], err_msg=f"offset {offset}, seed {seed}"
      )
      assert (got.scores >= 0).all()
  assert answered >= 4  # at least the offset-free problems


@pytest.mark.parametrize(
  "kind,method", [("full", "dense"), ("topc", "dense"), ("binary", "dense")]
)
def test_float64_offset_equals_reference(kind, method):
  with jax.enable_x64(True):
    for seed in range(3):
      emb, probs, labeled = _offset_problem(seed, 1e4)
      want = ref.bait(emb, probs, labeled, 2, kind=kind)
      got = ref.run(emb, probs, labeled, 2, kind, method, jnp.float64)
      np.testing.assert_array_equal(got.indices, want["indices"])
      # The reference itself (explicit inverses in the standard basis) is
      # only good to ~eps64 |h|^2 / lam ~ 1e-7 here.
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-5)


def test_offset_past_float32_resolution_warns():
  emb, probs, labeled = _offset_problem(0, 1e3)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ref.run(emb, probs, labeled, 2, "full", "auto", jnp.float32)
  emb, probs, labeled = _offset_problem(0, 1e4)
  with pytest.warns(UserWarning, match="large offset.*Use float64"):
    got = ref.run(emb, probs, labeled, 2, "full", "auto", jnp.float32)
  assert (got.scores >= 0).all()


def test_overflowing_squares_name_embeddings():
  emb, probs, labeled = _offset_problem(0, 0.0)
  huge = jnp.asarray(emb * 1e20, jnp.float32)
  for call in (
    lambda: alfx.bait(huge, probs, 2, labeled=labeled),
    lambda: alfx.pool_fisher(huge, probs),
  ):
    with pytest.raises(
      ValueError,
      match=r"embeddings .* squares overflow"
      r" float32.*float64",
    ):
      call()
  # The documented way out: scaling embeddings by s and lam by s^2 leaves
  # the picks unchanged.
  want = ref.run(emb, probs, labeled, 2, "full", "auto", jnp.float32)
  got = ref.run(
    emb * 1e-3, probs, labeled, 2, "full", "auto", jnp.float32, lam=1e-6
  )
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4)


@pytest.mark.parametrize(
  "kind,method",
  [("full", "dense"), ("binary", "dense"), ("topc", "structured")],
)
def test_tiny_lam_is_refused_or_invalid_never_nan_valid(kind, method):
  emb, probs, labeled = _offset_problem(1, 0.0)
  emb, probs = emb.astype(np.float32), probs.astype(np.float32)
  with pytest.raises(ValueError, match="lam=1e-30 is too small"):
    ref.run(emb, probs, labeled, 2, kind, method, jnp.float32, lam=1e-30)
  fn = jax.jit(
    lambda e, p, l, a: alfx.bait(
      e,
      p,
      2,
      labeled=l,
      fisher=kind,
      method=method,
      lam=a,
      labeled_capacity=CAP,
    )
  )
  sel = fn(emb, probs, labeled, 1e-30)
  assert not np.asarray(sel.valid).any()
  sel = fn(emb, probs, labeled, 1.0)
  assert np.asarray(sel.valid).all()


def test_woodbury_state_float32_drift_is_small(rng):
  emb, probs, labeled = ref.problem(rng)
  want = ref.bait(emb, probs, labeled, B, kind="full")
  _, st = ref.state(
    emb.astype(np.float32),
    probs.astype(np.float32),
    labeled,
    B,
    "full",
    "dense",
  )
  center = _pool_fisher.pool_fisher_core(
    emb, probs, None, "full", 1, "dense", None
  ).center
  basis = ref.parameter_basis(center, "full", "dense", C)
  m0_inv = basis @ np.linalg.inv(want["M0"]) @ basis.T
  d = m0_inv.shape[0]
  r = st["zy"].shape[-1] // 2
  z = st["zy"][..., :r].reshape(len(st["zy"]), d, r).astype(np.float64)
  m_inv = m0_inv - sum(zk @ sk @ zk.T for zk, sk in zip(z, st["s_inv"]))
  s2 = B / (labeled.sum() + B)
  m_fwd = want["M0"] + sum(
    s2 * ref.fisher_matrix(emb[j], probs[j], "full") for j in want["forward"]
  )
  direct = basis @ np.linalg.inv(m_fwd) @ basis.T
  assert np.abs(m_inv - direct).max() < 1e-5 * np.abs(direct).max()
  # The picks' blocks after the backward drops, against the final M.
  final = basis @ np.linalg.inv(want["M_final"]) @ basis.T
  x = np.einsum("ed,ndr->ner", basis, ref.dense_x(emb, probs, "full", s2))
  xp = x[np.asarray(st["picks"])]
  want_u = np.einsum("pdk,de,qel->pqkl", xp, final, xp)
  assert np.abs(st["pick_u"] - want_u).max() < 1e-5 * np.abs(want_u).max()

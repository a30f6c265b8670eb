"""EPIG, BatchEPIG and k-EPIG (alfx.bald_family: _epig, _batch_epig, _kepig).

Every score and selection is checked against the float64 brute-force
references of `reference_epig` (every label configuration enumerated), plus
the invariants of the issue: ``0 <= EPIG <= BALD``, targets are a set
(permuting or repeating them changes nothing), ``kepig(order=1)`` is top-k
EPIG, ``kepig(order=B)`` is exact `batch_epig`, the sampled regime stays
within 1% of the exact greedy's objective, duplicates get the 2-EPIG
penalty; and mixed dtypes, NaN targets under jit, bad targets and the pool
targets of the registry strategies. The generic properties of the contract
(jit and vmap, float64 out, device layouts, the registry strategies) run in
the conformance suite (tests/conformance_cases.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bald_family import _batch_epig
from alfx.bald_family import _epig
from tests import reference_epig as ref
from tests.helpers import seed_for
from tests.reference_bald import assert_greedy_matches

epig, batch_epig, kepig = alfx.epig, alfx.batch_epig, alfx.kepig


def _log_probs(rng, shape, scale=2.0):
  """Random normalised log-probabilities, float64 NumPy."""
  logits = scale * rng.standard_normal(shape)
  return logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))


def _problem(rng, n, k, c, m):
  return _log_probs(rng, (n, k, c)), _log_probs(rng, (m, k, c))


# --------------------------------------------------------------------------
# EPIG.


@pytest.mark.parametrize("n,k,c,m", [(9, 4, 3, 3), (7, 1, 2, 4), (6, 5, 4, 2)])
def test_epig_matches_enumeration(n, k, c, m):
  rng = np.random.default_rng(seed_for(f"epig{n}{k}{c}{m}"))
  lp, tlp = _problem(rng, n, k, c, m)
  want = ref.epig_scores(lp, tlp)
  got = epig(jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=2e-6)
  with jax.enable_x64(True):
    got64 = epig(jnp.asarray(lp), jnp.asarray(tlp))
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(got64, want, rtol=1e-10, atol=1e-13)


def test_epig_between_zero_and_bald(rng):
  # Confident and uncertain points, agreeing and disagreeing samples.
  lp = np.concatenate(
    [_log_probs(rng, (6, 5, 4), scale=s) for s in (0.3, 2.0, 6.0)]
  )
  tlp = _log_probs(rng, (5, 5, 4), scale=3.0)
  scores = np.asarray(
    epig(jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32))
  )
  bald = np.asarray(alfx.bald(jnp.asarray(lp, jnp.float32)))
  assert np.all(scores >= 0), scores
  assert np.all(scores <= bald + 1e-6), (scores - bald).max()
  assert np.all(ref.epig_scores(lp, tlp) <= ref.bald_scores(lp) + 1e-12)
  # Targets on which the samples agree carry no information about them.
  agree = np.broadcast_to(tlp[:, :1], tlp.shape)
  np.testing.assert_allclose(
    epig(jnp.asarray(lp, jnp.float32), jnp.asarray(agree, jnp.float32)),
    0,
    atol=2e-6,
  )


def test_targets_are_a_set_and_chunks_do_not_matter(rng):
  """Permuting the targets, or listing each twice, changes nothing; nor do
  chunk sizes (one compiled program per chunk size)."""
  lp, tlp = _problem(rng, 11, 4, 3, 6)
  lp, tlp = jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32)
  want = epig(lp, tlp)
  perm = rng.permutation(6)
  np.testing.assert_allclose(epig(lp, tlp[perm]), want, atol=1e-6)
  np.testing.assert_allclose(
    epig(lp, jnp.concatenate([tlp, tlp[perm]])), want, atol=1e-6
  )
  for chunk in (1, 4):
    np.testing.assert_allclose(epig(lp, tlp, chunk_size=chunk), want, atol=1e-6)
  sel = batch_epig(lp, tlp, 3)
  sel_perm = batch_epig(lp, tlp[perm], 3)
  np.testing.assert_array_equal(sel.indices, sel_perm.indices)
  np.testing.assert_allclose(sel.scores, sel_perm.scores, atol=1e-6)


# --------------------------------------------------------------------------
# BatchEPIG.


@pytest.mark.parametrize("n,k,c,m,b", [(9, 4, 3, 3, 4), (8, 3, 2, 5, 5)])
def test_batch_epig_exact_matches_enumeration(n, k, c, m, b):
  rng = np.random.default_rng(seed_for(f"batch_epig{n}{k}{c}{m}{b}"))
  lp, tlp = _problem(rng, n, k, c, m)
  mask = rng.random(n) < 0.85
  mask[:b] = True
  assert _batch_epig.exact_steps(c, m, 10_000, b) == b
  with jax.enable_x64(True):
    sel = batch_epig(
      jnp.asarray(lp), jnp.asarray(tlp), b, mask=jnp.asarray(mask)
    )
    assert sel.scores.dtype == jnp.float64
  picks, gains = ref.batch_epig_greedy(lp, tlp, b, mask)
  np.testing.assert_array_equal(sel.indices, picks)
  np.testing.assert_allclose(sel.scores, gains, rtol=1e-9, atol=1e-12)
  assert np.all(np.asarray(sel.valid))
  # float32: the same greedy up to rounding.
  problem = ref.Problem(lp, tlp)
  sel32 = batch_epig(
    jnp.asarray(lp, jnp.float32),
    jnp.asarray(tlp, jnp.float32),
    b,
    mask=jnp.asarray(mask),
  )
  assert_greedy_matches(
    sel32, lambda s, i: ref.batch_epig_gain(problem, s, i), n, mask
  )


def test_batch_epig_sampled_within_one_percent():
  """C = 3, M = 13 targets, B = 6: steps 0-2 exact, steps 3-5 sampled from
  1,000 rows. The sampled greedy's batch reaches the exact greedy's
  objective mean_m I[Y_S; Y*_m] within 1%, for each of 3 keys."""
  rng = np.random.default_rng(seed_for("batch_epig_sampled"))
  n, k, c, m, b, r = 24, 8, 3, 13, 6, 1_000
  lp, tlp = _problem(rng, n, k, c, m)
  assert _batch_epig.exact_steps(c, m, r, b) == 3
  problem = ref.Problem(lp, tlp)
  with jax.enable_x64(True):
    exact = batch_epig(
      jnp.asarray(lp), jnp.asarray(tlp), b, num_configurations=10_000
    )
    assert _batch_epig.exact_steps(c, m, 10_000, b) == b
    best = problem.objective(np.asarray(exact.indices))
    np.testing.assert_allclose(float(jnp.sum(exact.scores)), best, rtol=1e-9)
  lp32, tlp32 = jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32)
  run = jax.jit(
    lambda key: batch_epig(lp32, tlp32, b, key=key, num_configurations=r)
  )
  for seed in range(3):
    sel = run(jax.random.key(seed))
    picks = np.asarray(sel.indices)
    assert len(set(picks.tolist())) == b and np.all(np.asarray(sel.valid))
    np.testing.assert_array_equal(picks[:3], np.asarray(exact.indices)[:3])
    value = problem.objective(picks)
    assert value >= 0.99 * best, (seed, value, best)


def test_batch_epig_sampled_key_required():
  rng = np.random.default_rng(0)
  lp, tlp = _problem(rng, 6, 3, 3, 4)
  with pytest.raises(ValueError, match="key"):
    batch_epig(lp, tlp, 4, num_configurations=100)
  with pytest.raises(ValueError, match="num_configurations"):
    batch_epig(lp, tlp, 4, num_configurations=2, key=jax.random.key(0))


# --------------------------------------------------------------------------
# k-EPIG.


@pytest.mark.parametrize("order,b", [(2, 4), (3, 4)])
def test_kepig_matches_enumeration(order, b):
  rng = np.random.default_rng(seed_for(f"kepig{order}{b}"))
  lp, tlp = _problem(rng, 9, 4, 3, 3)
  mask = np.ones(9, bool)
  mask[2] = False
  with jax.enable_x64(True):
    sel = kepig(
      jnp.asarray(lp), jnp.asarray(tlp), b, order=order, mask=jnp.asarray(mask)
    )
  picks, gains = ref.kepig_greedy(lp, tlp, b, order, mask)
  np.testing.assert_array_equal(sel.indices, picks)
  np.testing.assert_allclose(sel.scores, gains, rtol=1e-9, atol=1e-12)


def test_kepig_order_one_is_top_k_epig(rng):
  lp, tlp = _problem(rng, 12, 4, 3, 5)
  lp, tlp = jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32)
  mask = jnp.asarray(rng.random(12) < 0.8).at[:4].set(True)
  got = kepig(lp, tlp, 4, order=1, mask=mask)
  want = alfx.top_b(epig(lp, tlp), 4, mask=mask)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_array_equal(got.scores, want.scores)


def test_kepig_full_order_is_batch_epig_and_the_identity(rng):
  """order = B gives exact BatchEPIG (picks and gains); the gains telescope
  to the objective, which the full inclusion-exclusion over co-informations
  reproduces (the derivation of kepig, checked on the reference)."""
  lp, tlp = _problem(rng, 8, 4, 3, 3)
  b = 4
  with jax.enable_x64(True):
    full = kepig(jnp.asarray(lp), jnp.asarray(tlp), b, order=b)
    exact = batch_epig(jnp.asarray(lp), jnp.asarray(tlp), b)
  np.testing.assert_array_equal(full.indices, exact.indices)
  np.testing.assert_allclose(full.scores, exact.scores, rtol=1e-9, atol=1e-13)
  problem = ref.Problem(lp, tlp)
  picks = np.asarray(full.indices)
  value = problem.objective(picks)
  np.testing.assert_allclose(np.sum(np.asarray(full.scores)), value, rtol=1e-9)
  np.testing.assert_allclose(
    problem.inclusion_exclusion(picks), value, rtol=1e-9
  )
  # Truncated at pairs: the 2-EPIG value of the batch.
  assert abs(problem.inclusion_exclusion(picks, 2) - value) > 1e-6


def test_duplicates_get_the_two_epig_penalty(rng):
  """Three copies of the point of highest EPIG: top-k EPIG takes all three;
  after one is picked, 2-EPIG scores a copy EPIG - mean_m I(Y_n; Y_j; Y*_m)
  (the reference co-information, positive) and prefers other points."""
  lp, tlp = _problem(rng, 10, 6, 3, 4)
  top = int(np.argmax(ref.epig_scores(lp, tlp)))
  lp = np.concatenate([lp, lp[top : top + 1], lp[top : top + 1]])
  copies = {top, 10, 11}
  lp32, tlp32 = jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32)
  topk = kepig(lp32, tlp32, 3, order=1)
  assert set(np.asarray(topk.indices).tolist()) == copies
  sel = kepig(lp32, tlp32, 3, order=2)
  picks = np.asarray(sel.indices).tolist()
  assert picks[0] == top and not copies & set(picks[1:]), picks
  problem = ref.Problem(lp, tlp)
  penalty = problem.mean_co_information([top, 10])
  assert penalty > 1e-3, penalty
  # The gain a copy would have had at step 1, from the reference.
  gain = ref.kepig_gain(problem, [top], 10, 2)
  np.testing.assert_allclose(gain, problem.epig(10) - penalty, rtol=1e-9)
  assert gain < float(sel.scores[1])


# --------------------------------------------------------------------------
# Dtypes, NaN targets, bad inputs.


def test_float64_in_float64_out():
  """A float64 pool with float32 targets: the common dtype. (Float64 in,
  float64 out for every EPIG row is the conformance suite's.)"""
  rng = np.random.default_rng(1)
  lp, tlp = _problem(rng, 10, 3, 3, 4)
  with jax.enable_x64(True):
    out = jax.eval_shape(
      lambda a, b: epig(a, b), jnp.asarray(lp), jnp.asarray(tlp, jnp.float32)
    )
    assert out.dtype == jnp.float64


def test_nan_under_jit_is_never_plausible(rng):
  lp, tlp = _problem(rng, 8, 3, 3, 4)
  lp, tlp = jnp.asarray(lp, jnp.float32), jnp.asarray(tlp, jnp.float32)
  bad_t = tlp.at[1, 0, 0].set(jnp.nan)
  bad_p = lp.at[2].set(jnp.nan)
  scores = jax.jit(epig)(lp, bad_t)
  assert np.all(np.isnan(scores))
  assert np.isnan(jax.jit(epig)(bad_p, tlp)[2])
  for fn in (lambda a, b: batch_epig(a, b, 3), lambda a, b: kepig(a, b, 3)):
    for a, b in ((lp, bad_t), (bad_p, tlp)):
      sel = jax.jit(fn)(a, b)
      assert not np.any(sel.valid) and np.all(np.isnan(sel.scores))


def test_bad_inputs_raise(rng):
  lp, tlp = _problem(rng, 8, 3, 3, 4)
  for fn in (
    lambda t: epig(lp, t),
    lambda t: batch_epig(lp, t, 2),
    lambda t: kepig(lp, t, 2),
  ):
    with pytest.raises(ValueError, match=r"target_log_probs.*K=3"):
      fn(_log_probs(rng, (4, 5, 3)))  # other K
    with pytest.raises(ValueError, match=r"target_log_probs.*C=3"):
      fn(_log_probs(rng, (4, 3, 4)))  # other C
    with pytest.raises(ValueError, match="target_log_probs"):
      fn(tlp[0])  # rank 2
    with pytest.raises(ValueError, match="target_log_probs.*NaN"):
      fn(np.where(np.arange(3)[None, :, None] == 1, np.nan, tlp))
    with pytest.raises(ValueError, match="target_log_probs"):
      fn(np.exp(tlp))  # probabilities, not log-probabilities
    with pytest.raises(ValueError, match="target_log_probs"):
      fn(None)
  with pytest.raises(ValueError, match="order"):
    kepig(lp, tlp, 2, order=0)
  with pytest.raises(ValueError, match="order.*MAX_CONFIGURATIONS"):
    kepig(
      _log_probs(rng, (40, 2, 10)), _log_probs(rng, (200, 2, 10)), 30, order=3
    )
  with pytest.raises(ValueError, match="batch_size"):
    batch_epig(lp, tlp, 9)
  with pytest.raises(ValueError, match="mask"):
    kepig(lp, tlp, 2, mask=np.ones(8, int))


# --------------------------------------------------------------------------
# Pool targets.


def test_pool_targets_draw_eligible_rows(rng):
  lp = jnp.asarray(_log_probs(rng, (30, 3, 4)), jnp.float32)
  mask = jnp.asarray(np.arange(30) % 3 == 0)
  key = jax.random.key(7)
  targets = alfx_pool_targets = _epig.pool_targets(lp, 50, key=key, mask=mask)
  assert targets.shape == (50, 3, 4)
  rows = np.asarray(lp)
  drawn = [
    int(np.flatnonzero(np.all(rows == t, axis=(1, 2)))[0])
    for t in np.asarray(targets)
  ]
  assert all(i % 3 == 0 for i in drawn), drawn
  assert len(set(drawn)) > 5  # with replacement, but spread
  np.testing.assert_array_equal(
    _epig.pool_targets(lp, 50, key=key, mask=mask), alfx_pool_targets
  )
  # No eligible point: every point is.
  none = jax.jit(lambda lp, m: _epig.pool_targets(lp, 8, key=key, mask=m))(
    lp, jnp.zeros(30, bool)
  )
  assert all(np.any(np.all(rows == t, axis=(1, 2))) for t in np.asarray(none))

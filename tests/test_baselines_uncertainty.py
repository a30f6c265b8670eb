"""Uncertainty scores, stochastic batch acquisition and random selection.

The generic properties of the contract (picks, jit and vmap, float64 out,
bad inputs, device layouts) run in the conformance suite
(tests/conformance_cases.py): the scores through the registry strategies.
"""

import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from tests import reference as ref
from tests import reference_baselines as refb
from tests.helpers import ALPHA
from tests.helpers import chi_square_p_value
from tests.helpers import count_rows
from tests.helpers import seed_for

SCORES = {
  "predictive_entropy": (alfx.predictive_entropy, refb.predictive_entropy),
  "margin": (alfx.margin, refb.margin),
  "least_confidence": (alfx.least_confidence, refb.least_confidence),
  "variation_ratios": (alfx.variation_ratios, refb.variation_ratios),
  "mean_std": (alfx.mean_std, refb.mean_std),
}
MEAN_SCORES = ("predictive_entropy", "margin", "least_confidence")
SAMPLE_SCORES = ("variation_ratios", "mean_std")

# ----------------------------------------------------------------------------
# Scores.


def _f32(x):
  return jnp.asarray(x, jnp.float32)


class ScoresTest(chex.TestCase):
  def rng(self):
    return np.random.default_rng(seed_for(self.id()))

  @chex.variants(without_jit=True)
  @parameterized.product(
    name=list(SCORES),
    shape=[(1, 1, 2), (7, 1, 3), (9, 4, 2), (13, 6, 5), (5, 10, 10)],
  )
  def test_matches_reference(self, name, shape):
    fn, reference = SCORES[name]
    lp = ref.random_log_probs(self.rng(), *shape, scale=3.0, zero_fraction=0.2)
    got = self.variant(fn)(_f32(lp))
    chex.assert_shape(got, shape[:1])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(lp), atol=3e-6, rtol=1e-5)

  @chex.variants(without_jit=True)
  def test_variation_ratios_are_exact_multiples_of_one_over_k(self):
    rng = self.rng()
    # Few classes and sharp samples: many different vote patterns.
    lp = ref.random_log_probs(rng, 200, 7, 3, scale=5.0)
    got = np.asarray(self.variant(alfx.variation_ratios)(_f32(lp)), np.float64)
    want = refb.variation_ratios(lp)
    np.testing.assert_array_equal(np.round(got * 7), np.round(want * 7))
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert len(np.unique(np.round(want * 7))) >= 3  # the test is not trivial


def test_rank_2_is_one_sample(rng):
  lp = ref.random_log_probs(rng, 11, 1, 4, zero_fraction=0.2)
  for name in MEAN_SCORES:
    fn, reference = SCORES[name]
    np.testing.assert_allclose(fn(_f32(lp[:, 0])), fn(_f32(lp)), atol=1e-7)
    np.testing.assert_allclose(fn(_f32(lp[:, 0])), reference(lp), atol=3e-6)


def test_rank_2_refused_where_samples_are_needed():
  lp = jnp.log(jnp.full((3, 2), 0.5))
  for name in SAMPLE_SCORES:
    with pytest.raises(
      ValueError, match=r"needs posterior samples.*\[N, K, C\]"
    ):
      SCORES[name][0](lp)


def test_score_ranges_and_orderings(rng):
  for c in (2, 3, 10):
    lp = ref.random_log_probs(rng, 300, 5, c, scale=4.0, zero_fraction=0.3)
    h = np.asarray(alfx.predictive_entropy(_f32(lp)))
    m = np.asarray(alfx.margin(_f32(lp)))
    lc = np.asarray(alfx.least_confidence(_f32(lp)))
    vr = np.asarray(alfx.variation_ratios(_f32(lp)))
    sd = np.asarray(alfx.mean_std(_f32(lp)))
    assert np.all((h >= 0) & (h <= math.log(c) + 1e-5))
    assert np.all((m >= -1) & (m <= 0))
    assert np.all((lc >= 0) & (lc <= 1 - 1 / c + 1e-6))
    assert np.all((vr >= 0) & (vr <= 1 - 1 / min(5, c) + 1e-6))
    assert np.all((sd >= 0) & (sd <= 0.5))
    # Entropy = BALD + mean conditional entropy.
    cond = ref.entropy(np.exp(lp)).mean(1)
    np.testing.assert_allclose(
      h, np.asarray(alfx.bald(_f32(lp))) + cond, atol=1e-5
    )
    # With two classes margin and least confidence order points alike.
    if c == 2:
      np.testing.assert_allclose(m, 2 * lc - 1, atol=1e-6)


def test_agreeing_samples_have_no_disagreement(rng):
  one = ref.random_log_probs(rng, 6, 1, 4)
  same = _f32(np.repeat(one, 5, axis=1))
  np.testing.assert_array_equal(alfx.variation_ratios(same), 0)
  np.testing.assert_allclose(alfx.mean_std(same), 0, atol=1e-7)
  certain = jnp.log(jnp.array([[[1.0, 0.0, 0.0]] * 3]))
  for name in SCORES:
    got = SCORES[name][0](certain)
    assert np.all(np.isfinite(got)), name
  np.testing.assert_allclose(alfx.margin(certain), [-1.0])
  np.testing.assert_allclose(alfx.predictive_entropy(certain), [0.0])


def test_underflowing_classes_count_as_zero(rng):
  """Mean-predictive scores average ``exp(log_probs)`` directly: classes
  whose probability underflows float32 (log-probabilities of -120 to -1e4,
  and -inf) in every sample count as 0, with no NaN, as in float64."""
  lp = ref.random_log_probs(rng, 40, 6, 5, scale=3.0)
  lp[:, :, 3:] = rng.choice([-120.0, -1e4, -np.inf], (40, 6, 2))
  lp[:, :, :3] -= np.logaddexp.reduce(lp[:, :, :3], axis=-1, keepdims=True)
  for name in MEAN_SCORES + ("mean_std",):
    fn, reference = SCORES[name]
    for got in (fn(_f32(lp)), jax.jit(fn)(_f32(lp))):
      assert np.all(np.isfinite(got)), name
      np.testing.assert_allclose(
        got, reference(lp), atol=3e-6, rtol=1e-5, err_msg=name
      )


def test_margin_of_tied_top_classes_is_zero():
  lp = jnp.log(jnp.array([[0.4, 0.2, 0.4], [0.5, 0.5, 0.0], [0.1, 0.2, 0.7]]))
  np.testing.assert_allclose(alfx.margin(lp), [0.0, 0.0, -0.5], atol=1e-7)


def test_sample_permutation_invariance(rng):
  lp = ref.random_log_probs(rng, 20, 6, 4, zero_fraction=0.1)
  perm = rng.permutation(6)
  for name, (fn, _) in SCORES.items():
    np.testing.assert_allclose(
      fn(_f32(lp[:, perm])), fn(_f32(lp)), atol=1e-6, err_msg=name
    )


def test_float64_in_float64_out(rng):
  lp = ref.random_log_probs(rng, 9, 4, 3, zero_fraction=0.1)
  with jax.enable_x64(True):
    for name, (fn, reference) in SCORES.items():
      got = fn(jnp.asarray(lp, jnp.float64))
      assert got.dtype == jnp.float64, name
      np.testing.assert_allclose(
        got, reference(lp), rtol=1e-12, atol=1e-14, err_msg=name
      )


class TestScoresBadInput:
  @pytest.mark.parametrize("name", list(SCORES))
  def test_rank_nan_and_normalisation(self, name):
    fn = SCORES[name][0]
    with pytest.raises(
      ValueError, match=r"log_probs must have shape \[N, K, C\]"
    ):
      fn(jnp.zeros((2, 2, 2, 2)))
    lp = np.log(np.full((2, 3, 2), 0.5))
    lp[1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="log_probs.*NaN"):
      fn(lp)
    with pytest.raises(ValueError, match="normalised"):
      fn(np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="floating"):
      fn(np.zeros((2, 3, 2), np.int32))

  def test_margin_needs_two_classes(self):
    with pytest.raises(ValueError, match="C >= 2"):
      alfx.margin(jnp.zeros((3, 2, 1)))


# ----------------------------------------------------------------------------
# Stochastic batch acquisition.


def _draws(utilities, b, n_draws, mode, beta, mask=None, seed=0):
  # Arrays are arguments, not closed-over constants: alfx's value checks
  # treat a constant inside a trace as concrete and would try to read it.
  keys = jax.random.split(jax.random.key(seed), n_draws)
  mask = jnp.ones(utilities.shape, bool) if mask is None else mask
  fn = jax.jit(
    jax.vmap(
      lambda k, u, m: alfx.stochastic_batch(
        u, b, key=k, mode=mode, beta=beta, mask=m
      ),
      in_axes=(0, None, None),
    )
  )
  return fn(keys, utilities, mask)


@pytest.mark.parametrize(
  "mode,beta",
  [
    ("power", 1.0),
    ("power", 2.5),
    ("softmax", 1.0),
    ("softmax", 3.0),
    ("softrank", 1.0),
    ("softrank", 0.5),
  ],
)
def test_stochastic_batch_follows_sequential_sampling(mode, beta):
  """The first two picks follow sequential sampling without replacement."""
  u = np.array([0.8, 0.05, 0.4, 0.0, 1.3, 0.4, -0.2], np.float32)
  mask = np.array([True, True, True, True, True, True, False])
  sel = _draws(
    _f32(u),
    2,
    40_000,
    mode,
    beta,
    jnp.asarray(mask),
    seed=seed_for(mode + str(beta)),
  )
  weights = refb.stochastic_weights(u, mode, beta, mask)
  probs = refb.sequence_probabilities(weights, 2)
  assert chi_square_p_value(count_rows(sel.indices), probs) > ALPHA
  np.testing.assert_array_equal(sel.scores, u[np.asarray(sel.indices)])
  assert sel.valid.all()


def test_power_never_picks_nonpositive_utility_before_positive():
  u = _f32([0.0, 0.3, -1.0, 2.0, 0.0, -jnp.inf, 0.1])
  sel = _draws(u, 5, 2000, "power", 1.0)
  idx = np.asarray(sel.indices)
  positive = {1, 3, 6}
  assert all(set(row[:3]) == positive for row in idx)
  assert all(len(set(row)) == 5 and not set(row[3:]) & positive for row in idx)
  # The tail is uniform over the weight-0 points {0, 2, 4, 5}.
  tail = count_rows(idx[:, 3:4])
  assert chi_square_p_value(tail, {(i,): 0.25 for i in (0, 2, 4, 5)}) > ALPHA
  assert sel.valid.all()


def test_softmax_minus_inf_utility_comes_last():
  u = _f32([0.0, -jnp.inf, 1.0])
  idx = np.asarray(_draws(u, 3, 500, "softmax", 2.0).indices)
  assert np.all(idx[:, 2] == 1)


def test_beta_zero_is_uniform_and_large_beta_is_top_b(rng):
  u = _f32(rng.standard_normal(6) ** 2)
  sel = _draws(u, 1, 30_000, "power", 0.0)
  assert (
    chi_square_p_value(count_rows(sel.indices), {(i,): 1 / 6 for i in range(6)})
    > ALPHA
  )
  u = _f32(np.linspace(0.1, 1.0, 40)[rng.permutation(40)])
  for mode in ("power", "softmax", "softrank"):
    sel = alfx.stochastic_batch(
      u, 4, key=jax.random.key(1), mode=mode, beta=1e4
    )
    np.testing.assert_array_equal(sel.indices, alfx.top_b(u, 4).indices)


def test_stochastic_batch_mask_keys_and_duplicates(rng):
  n, b = 200, 30
  u = _f32(rng.random(n))
  mask = jnp.asarray(rng.random(n) < 0.5)
  for mode in ("power", "softmax", "softrank"):
    a = alfx.stochastic_batch(u, b, key=jax.random.key(3), mode=mode, mask=mask)
    same = alfx.stochastic_batch(
      u, b, key=jax.random.key(3), mode=mode, mask=mask
    )
    other = alfx.stochastic_batch(
      u, b, key=jax.random.key(4), mode=mode, mask=mask
    )
    idx = np.asarray(a.indices)
    assert len(set(idx)) == b and np.asarray(mask)[idx].all()
    np.testing.assert_array_equal(idx, same.indices)
    assert not np.array_equal(idx, other.indices)
    raw = alfx.stochastic_batch(
      u, b, key=jax.random.PRNGKey(3), mode=mode, mask=mask
    )
    assert len(set(np.asarray(raw.indices))) == b


class TestStochasticBadInput:
  def test_mode_beta_key(self):
    u = jnp.arange(1.0, 5.0)
    with pytest.raises(ValueError, match="mode must be one of"):
      alfx.stochastic_batch(u, 2, key=jax.random.key(0), mode="boltzmann")
    for beta in (-1.0, float("nan"), float("inf")):
      with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        alfx.stochastic_batch(u, 2, key=jax.random.key(0), beta=beta)
    with pytest.raises(ValueError, match=r"beta must be a scalar"):
      alfx.stochastic_batch(u, 2, key=jax.random.key(0), beta=jnp.ones(2))
    with pytest.raises(ValueError, match="key is required"):
      alfx.stochastic_batch(u, 2, key=None)
    with pytest.raises(ValueError, match="PRNG key"):
      alfx.stochastic_batch(u, 2, key=jnp.zeros(3, jnp.uint32))


# ----------------------------------------------------------------------------
# Random.


def test_random_batch_is_uniform_without_replacement():
  mask = jnp.array([True, False, True, True, True, False, True])
  keys = jax.random.split(jax.random.key(11), 30_000)
  sel = jax.jit(
    jax.vmap(
      lambda k, m: alfx.random_batch(m, 2, key=k, mask=m), in_axes=(0, None)
    )
  )(keys, mask)
  allowed = [0, 2, 3, 4, 6]
  probs = {(i, j): 1 / 20 for i in allowed for j in allowed if i != j}
  assert chi_square_p_value(count_rows(sel.indices), probs) > ALPHA
  assert sel.valid.all() and np.all(sel.scores == 0)


def test_random_batch_mask_keys_and_whole_pool(rng):
  n = 100
  mask = jnp.asarray(rng.random(n) < 0.3)
  count = int(mask.sum())
  sel = alfx.random_batch(mask, count, key=jax.random.key(0), mask=mask)
  np.testing.assert_array_equal(np.sort(sel.indices), np.flatnonzero(mask))
  a = alfx.random_batch(mask, 5, key=jax.random.key(1), mask=mask)
  np.testing.assert_array_equal(
    a.indices,
    alfx.random_batch(mask, 5, key=jax.random.key(1), mask=mask).indices,
  )
  assert not np.array_equal(
    a.indices,
    alfx.random_batch(mask, 5, key=jax.random.key(2), mask=mask).indices,
  )
  jitted = jax.jit(lambda k, m: alfx.random_batch(m, 5, key=k, mask=m))
  np.testing.assert_array_equal(
    jitted(jax.random.key(1), mask).indices, a.indices
  )


def test_random_batch_bad_input():
  with pytest.raises(ValueError, match="pool must be an array"):
    alfx.random_batch(None, 2, key=jax.random.key(0))
  with pytest.raises(
    ValueError, match=r"mask must be a boolean.*astype\(bool\)"
  ):
    alfx.random_batch(jnp.ones(4), 2, key=jax.random.key(0), mask=jnp.ones(4))
  with pytest.raises(ValueError, match=r"mask must have shape \[N=2\]"):
    alfx.random_batch(
      jnp.ones(2), 2, key=jax.random.key(0), mask=jnp.ones((2, 2), bool)
    )
  with pytest.raises(ValueError, match="larger than the number"):
    alfx.random_batch(
      jnp.ones(3), 3, key=jax.random.key(0), mask=jnp.array([True, False, True])
    )
  with pytest.raises(ValueError, match="key is required"):
    alfx.random_batch(jnp.ones(3), 1, key=None)


def test_random_batch_without_mask_draws_from_the_whole_pool():
  sel = alfx.random_batch(jnp.zeros((6, 3)), 6, key=jax.random.key(3))
  np.testing.assert_array_equal(np.sort(sel.indices), np.arange(6))
  assert sel.valid.all()

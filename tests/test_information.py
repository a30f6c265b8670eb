"""The information kernels against enumerating float64 references."""

import itertools
import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from tests import reference as ref
from tests.helpers import seed_for

SHAPES = [  # (N or B, K, C), including C=2, K=1, B=1
  (1, 1, 2),
  (3, 1, 2),
  (2, 5, 2),
  (4, 3, 3),
  (3, 7, 4),
  (1, 4, 5),
]


class KernelsTest(chex.TestCase):
  def rng(self):
    return np.random.default_rng(seed_for(self.id()))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*SHAPES)
  def test_entropy_and_bald_match_reference(self, n, k, c):
    lp = ref.random_log_probs(self.rng(), n, k, c, zero_fraction=0.2)
    got_bald = self.variant(alfx.bald)(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(got_bald, ref.bald(lp), atol=2e-5)
    got_h = self.variant(alfx.entropy)(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(got_h, ref.entropy(np.exp(lp)), atol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
    (1, 3, 2), (2, 1, 2), (2, 4, 3), (3, 5, 3), (4, 2, 2), (4, 3, 3), (3, 6, 4)
  )
  def test_joint_entropy_matches_enumeration(self, b, k, c):
    lp = ref.random_log_probs(self.rng(), b, k, c, zero_fraction=0.15)
    got = self.variant(alfx.joint_entropy)(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(got, ref.joint_entropy(lp), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, 2, 1, 2), (3, 2, 4, 3), (2, 4, 3, 5))
  def test_mutual_information_matches_reference(self, n, m, k, c):
    rng = self.rng()
    a = ref.random_log_probs(rng, n, k, c, zero_fraction=0.2)
    b = ref.random_log_probs(rng, m, k, c, zero_fraction=0.2)
    got = self.variant(alfx.mutual_information)(
      jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    )
    chex.assert_shape(got, (n, m))
    np.testing.assert_allclose(got, ref.mutual_information(a, b), atol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
    (1, 3, 3), (2, 4, 2), (3, 3, 3), (4, 2, 2), (4, 5, 3)
  )
  def test_co_information_matches_reference(self, b, k, c):
    lp = ref.random_log_probs(self.rng(), b, k, c, zero_fraction=0.1)
    got = self.variant(alfx.co_information)(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(got, ref.co_information(lp), atol=5e-5)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def test_bald_within_zero_and_log_c(rng):
  for c in (2, 3, 10):
    lp = ref.random_log_probs(rng, 200, 6, c, scale=4.0, zero_fraction=0.3)
    got = np.asarray(alfx.bald(_f32(lp)))
    assert np.all(got >= 0) and np.all(got <= math.log(c) + 1e-6)
    assert got.max() > 0  # disagreeing samples do give information


def test_bald_is_zero_when_samples_agree(rng):
  one = ref.random_log_probs(rng, 5, 1, 4)
  same = np.repeat(one, 6, axis=1)  # K identical samples
  np.testing.assert_allclose(alfx.bald(_f32(same)), 0, atol=1e-6)
  np.testing.assert_allclose(alfx.bald(_f32(one)), 0, atol=1e-6)  # K = 1


def test_zero_probability_classes_are_finite_and_correct():
  # A certain label (all mass on one class) and a two-class split among four.
  with np.errstate(divide="ignore"):
    lp = np.log(
      np.array(
        [[[1.0, 0, 0, 0], [1.0, 0, 0, 0]], [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]]
      )
    )
  assert np.isneginf(lp).any()
  lpj = _f32(lp)
  for value in (
    alfx.bald(lpj),
    alfx.entropy(lpj),
    alfx.joint_entropy(lpj),
    alfx.co_information(lpj),
    alfx.mutual_information(lpj, lpj),
  ):
    assert np.all(np.isfinite(value)), value
  np.testing.assert_allclose(alfx.bald(lpj), [0.0, math.log(2)], atol=1e-6)
  np.testing.assert_allclose(
    alfx.joint_entropy(lpj), math.log(2) * 2, atol=1e-6
  )
  np.testing.assert_allclose(
    alfx.mutual_information(lpj, lpj), [[0, 0], [0, math.log(2)]], atol=1e-6
  )


def test_joint_entropy_bounds(rng):
  for b, c in [(2, 3), (3, 3), (4, 2), (3, 5)]:
    lp = ref.random_log_probs(rng, b, 4, c, scale=3.0)
    marginals = alfx.entropy(jnp.log(jnp.mean(jnp.exp(_f32(lp)), axis=1)))
    h = float(alfx.joint_entropy(_f32(lp)))
    assert h <= float(marginals.sum()) + 1e-5
    assert h >= float(marginals.max()) - 1e-5


def test_joint_entropy_of_one_point_is_its_entropy(rng):
  lp = ref.random_log_probs(rng, 1, 5, 4)
  np.testing.assert_allclose(
    alfx.joint_entropy(_f32(lp)), ref.entropy(np.exp(lp[0]).mean(0)), atol=1e-6
  )


def test_permutation_invariance(rng):
  lp = ref.random_log_probs(rng, 4, 5, 3, zero_fraction=0.1)
  points = rng.permutation(4)
  samples = rng.permutation(5)
  for fn in (alfx.joint_entropy, alfx.co_information):
    base = fn(_f32(lp))
    np.testing.assert_allclose(fn(_f32(lp[points])), base, atol=2e-5)
    np.testing.assert_allclose(fn(_f32(lp[:, samples])), base, atol=2e-5)
  np.testing.assert_allclose(
    alfx.bald(_f32(lp[:, samples])), alfx.bald(_f32(lp)), atol=1e-6
  )
  mi = alfx.mutual_information(_f32(lp), _f32(lp))
  np.testing.assert_allclose(mi, mi.T, atol=1e-6)
  np.testing.assert_allclose(
    alfx.mutual_information(_f32(lp[points]), _f32(lp)), mi[points], atol=1e-6
  )


def test_co_information_of_two_is_mutual_information(rng):
  lp = ref.random_log_probs(rng, 2, 6, 4)
  np.testing.assert_allclose(
    alfx.co_information(_f32(lp)),
    alfx.mutual_information(_f32(lp[:1]), _f32(lp[1:]))[0, 0],
    atol=1e-5,
  )
  np.testing.assert_allclose(
    alfx.co_information(_f32(lp[:1])),
    alfx.joint_entropy(_f32(lp[:1])),
    atol=1e-6,
  )


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_inclusion_exclusion_identity(rng, b):
  """H[Y_1..Y_B] = sum over non-empty U of (-1)**(|U|+1) I(U) (kbald eq. 4)."""
  lp = _f32(ref.random_log_probs(rng, b, 5, 3, zero_fraction=0.1))
  total = 0.0
  for size in range(1, b + 1):
    for subset in itertools.combinations(range(b), size):
      total += (-1) ** (size + 1) * float(
        alfx.co_information(lp[np.array(subset)])
      )
  np.testing.assert_allclose(total, alfx.joint_entropy(lp), atol=1e-4)


def test_vmap_equals_loop(rng):
  lp = _f32(np.stack([ref.random_log_probs(rng, 3, 5, 3) for _ in range(4)]))
  for fn in (
    alfx.bald,
    alfx.joint_entropy,
    alfx.co_information,
    lambda x: alfx.mutual_information(x, x),
  ):
    fn = jax.jit(fn)  # the loop's calls share one compilation
    batched = jax.vmap(fn)(lp)
    looped = jnp.stack([fn(x) for x in lp])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)


def test_float64_in_float64_out(rng):
  lp = ref.random_log_probs(rng, 3, 4, 3, zero_fraction=0.1)
  with jax.enable_x64(True):
    x = jnp.asarray(lp, jnp.float64)
    for fn, expected in [
      (alfx.bald, ref.bald(lp)),
      (alfx.entropy, ref.entropy(np.exp(lp))),
      (alfx.joint_entropy, ref.joint_entropy(lp)),
      (alfx.co_information, ref.co_information(lp)),
      (lambda v: alfx.mutual_information(v, v), ref.mutual_information(lp, lp)),
    ]:
      got = fn(x)
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
  assert alfx.bald(jnp.asarray(lp, jnp.float32)).dtype == jnp.float32


class TestBadInput:
  def test_wrong_rank(self):
    with pytest.raises(
      ValueError, match=r"log_probs must have shape \[N, K, C\]"
    ):
      alfx.bald(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[B, K, C\]"):
      alfx.joint_entropy(jnp.zeros((2,)))

  def test_non_finite(self):
    lp = np.log(np.full((2, 3, 2), 0.5))
    lp[1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="log_probs.*NaN"):
      alfx.bald(lp)
    lp[1, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"\+inf"):
      alfx.joint_entropy(lp)

  def test_not_normalised(self):
    with pytest.raises(ValueError, match="normalised"):
      alfx.bald(jnp.zeros((2, 3, 4)))  # logits, not log-probabilities
    with pytest.raises(ValueError, match="log_probs_b.*normalised"):
      alfx.mutual_information(
        jnp.log(jnp.full((1, 2, 2), 0.5)), jnp.ones((1, 2, 2))
      )

  def test_integer_and_empty(self):
    with pytest.raises(ValueError, match="floating"):
      alfx.bald(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(ValueError, match="empty pool"):
      alfx.bald(jnp.zeros((0, 3, 4)))

  def test_enumeration_limit(self):
    lp = jnp.log(jnp.full((4, 2, 10), 0.1))
    with pytest.raises(
      ValueError,
      match="enumerating 10000 label configurations.*max_configurations=1000",
    ):
      alfx.joint_entropy(lp, max_configurations=1000)
    with pytest.raises(ValueError, match="max_configurations"):
      alfx.co_information(lp, max_configurations=1000)
    assert np.isfinite(alfx.joint_entropy(lp[:3], max_configurations=1000))

  def test_mismatched_samples_or_classes(self):
    a = jnp.log(jnp.full((2, 3, 4), 0.25))
    b = jnp.log(jnp.full((2, 5, 4), 0.25))
    with pytest.raises(ValueError, match="share K and C"):
      alfx.mutual_information(a, b)

  def test_traced_input_skips_value_checks_only(self):
    # Under jit the shape checks still run, value checks cannot.
    with pytest.raises(ValueError, match="rank 3"):
      jax.jit(alfx.bald)(jnp.zeros((3, 2)))
    assert jax.jit(alfx.bald)(jnp.zeros((2, 3, 4))).shape == (2,)

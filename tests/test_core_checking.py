"""The value checks of a public call as one fused pass (`alfx._core.checking`).

One public call on concrete input: one jitted check program (compiled once
per set of checks and shapes) and one host transfer; the quick tests never
refuse valid input in a way the user sees, and a failure still raises the
message of the first failing check in call order.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx._core import validation
from tests.helpers import compile_log


def _lp(rng, n=40, k=3, c=4, scale=2.0, dtype=jnp.float32):
  logits = rng.standard_normal((n, k, c)) * scale
  return jax.nn.log_softmax(jnp.asarray(logits, dtype))


CALLS = {
  "top_b": lambda lp, key: alfx.top_b(alfx.bald(lp), 3),
  "topk_bald": lambda lp, key: alfx.topk_bald(lp, 3),
  "predictive_entropy": lambda lp, key: alfx.predictive_entropy(lp),
  "margin": lambda lp, key: alfx.margin(lp),
  "stochastic_batch": lambda lp, key: alfx.stochastic_batch(
    alfx.bald(lp), 3, key=key
  ),
  "batchbald": lambda lp, key: alfx.batchbald(lp, 3, key=key),
}


def _transfers(fn):
  """The number of ``jax.device_get`` calls ``fn()`` makes."""
  with mock.patch.object(jax, "device_get", wraps=jax.device_get) as spy:
    fn()
  return spy.call_count


@pytest.mark.parametrize("name", sorted(CALLS))
def test_one_host_transfer_per_public_call(rng, name):
  """All checks of one public call: one transfer (top_b(bald(.)) and
  stochastic_batch(bald(.)) are two public calls: two)."""
  call = CALLS[name]
  key = jax.random.key(0)
  jax.block_until_ready(call(_lp(rng), key))  # compiles
  calls = 2 if name in ("top_b", "stochastic_batch") else 1
  assert _transfers(lambda: call(_lp(rng), key)) == calls


@pytest.mark.parametrize("name", sorted(CALLS))
def test_new_values_compile_no_check(rng, name):
  call = CALLS[name]
  key = jax.random.key(0)
  jax.block_until_ready(call(_lp(rng), key))
  with compile_log() as log:
    jax.block_until_ready(call(_lp(rng), jax.random.key(1)))
  assert not log.names, log.names


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_valid_log_probs_pass_the_quick_test(rng, dtype, scale):
  """Valid input never takes the slow path (one transfer, no statistics):
  log_softmax at any temperature, with zero-probability classes."""
  lp = _lp(rng, scale=scale, dtype=dtype)
  lp = lp.at[::3, :, 0].set(-jnp.inf)
  lp = jax.nn.log_softmax(lp.astype(jnp.float32)).astype(dtype)
  alfx.topk_bald(lp, 2)
  assert _transfers(lambda: alfx.topk_bald(lp, 2)) == 1


def test_quick_test_failing_on_valid_input_does_not_raise():
  """logsumexp just inside the tolerance fails the quick row-sum test (its
  bound is tighter on that side); the precise statistics then pass it."""
  with jax.enable_x64(True):
    tol = validation.tolerance(jnp.float64)
    lp = jnp.log(jnp.full((5, 2, 4), 0.25, jnp.float64))
    inside = lp.at[2, 1].add(0.9998 * tol)
    assert _transfers(lambda: alfx.topk_bald(inside, 2)) > 1  # slow path
    outside = lp.at[2, 1].add(1.0002 * tol)
    with pytest.raises(ValueError, match="off by up to 0.001"):
      alfx.topk_bald(outside, 2)


def test_first_failing_check_in_call_order_raises(rng):
  """NaN utilities and too few selectable points: the NaN comes first."""
  u = jnp.asarray(rng.standard_normal(10), jnp.float32).at[3].set(jnp.nan)
  mask = jnp.zeros(10, bool).at[0].set(True)
  with pytest.raises(ValueError, match="contains 1 NaN"):
    alfx.top_b(u, 2, mask=mask)
  with pytest.raises(ValueError, match="larger than the number of selectable"):
    alfx.top_b(u.at[3].set(0.0), 2, mask=mask)


def test_queued_value_error_comes_before_a_later_shape_error(rng):
  """A value error queued before a shape error of the same call is raised
  (as when checks ran one by one)."""
  lp = _lp(rng, n=6).at[0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="contains 1 NaN"):
    alfx.topk_bald(lp, 2, mask=jnp.ones(5, bool))
  with pytest.raises(ValueError, match="mask must have shape"):
    alfx.topk_bald(_lp(rng, n=6), 2, mask=jnp.ones(5, bool))


@pytest.mark.parametrize(
  "corrupt, match",
  [
    (lambda lp: lp.at[0, 0, 0].set(jnp.inf), r"contains 1 \+inf"),
    (lambda lp: jnp.exp(lp), "looks like probabilities"),
    (lambda lp: lp + 5.0, "looks like logits"),
    (lambda lp: lp - 1.0, "not the log of unnormalised scores"),
    (lambda lp: lp.at[:, :, :].set(-jnp.inf), "off by up to inf"),
  ],
)
def test_each_failure_keeps_its_message(rng, corrupt, match):
  with pytest.raises(ValueError, match=match):
    alfx.predictive_entropy(corrupt(_lp(rng)))


def test_probabilities_and_embeddings_checks(rng):
  x = jnp.asarray(rng.standard_normal((20, 5)), jnp.float32)
  p = jax.nn.softmax(jnp.asarray(rng.standard_normal((20, 3)), jnp.float32))
  key = jax.random.key(0)
  alfx.badge(x, p, 2, key=key)
  assert _transfers(lambda: alfx.badge(x, p, 2, key=key)) == 1
  with pytest.raises(ValueError, match="contains 1 -inf"):
    alfx.badge(x.at[1, 1].set(-jnp.inf), p, 2, key=key)
  with pytest.raises(ValueError, match="must be probabilities"):
    alfx.badge(x, p.at[0, 0].add(0.5), 2, key=key)
  with pytest.raises(ValueError, match="contains 1 NaN"):
    alfx.badge(x, p.at[0, 0].set(jnp.nan), 2, key=key)


def test_checks_need_module_level_functions():
  with pytest.raises(TypeError, match="module-level"):
    validation.value_check(
      lambda x: (True, {}), (jnp.ones(3),), str, "template"
    )


def test_checks_run_outside_a_fused_call(rng):
  """A validator called on its own (not inside a public call) still checks."""
  with pytest.raises(ValueError, match="contains 1 NaN"):
    validation.check_utilities(jnp.array([0.0, jnp.nan]))
  assert validation.check_utilities(jnp.array([0.0, 1.0])).shape == (2,)


def test_under_checked_the_checks_are_staged(rng):
  step = alfx.checked(lambda lp: alfx.topk_bald(lp, 2))
  lp = _lp(rng)
  np.testing.assert_array_equal(step(lp).indices, alfx.topk_bald(lp, 2).indices)
  with pytest.raises(Exception, match="NaN"):
    step(lp.at[0, 0, 0].set(jnp.nan))

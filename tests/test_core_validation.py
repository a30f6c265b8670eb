"""The input checks of the contract: honest messages, dtypes, NaN under jit, checked mode."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx


def _lp(rng, n=12, k=3, c=4, dtype=jnp.float32):
  return jax.nn.log_softmax(
    jnp.asarray(rng.standard_normal((n, k, c)) * 2, dtype)
  )


BALD_FAMILY = {
  "topk_bald": lambda lp, **kw: alfx.topk_bald(lp, 3, **kw),
  "batchbald": lambda lp, **kw: alfx.batchbald(lp, 3, **kw),
  "kbald": lambda lp, **kw: alfx.kbald(lp, 3, **kw),
  "kbald_dynamic": lambda lp, **kw: alfx.kbald_dynamic(
    lp, 3, tolerance=0.5, **kw
  ),
  "conservative_bald": lambda lp, **kw: alfx.conservative_bald(
    lp, 3, threshold=0.5, **kw
  ),
}


class TestLogProbMessages:
  def test_probabilities_passed_as_log_probabilities(self, rng):
    with pytest.raises(ValueError, match=r"looks like probabilities.*jnp\.log"):
      alfx.kbald(jnp.exp(_lp(rng)), 2)

  def test_logits_passed_as_log_probabilities(self, rng):
    with pytest.raises(ValueError, match=r"looks like logits.*log_softmax"):
      alfx.batchbald(_lp(rng) + 3.0, 2)

  def test_unnormalised_non_positive_scores(self, rng):
    with pytest.raises(ValueError, match="not the log of unnormalised"):
      alfx.bald(_lp(rng) * 2)

  @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
  def test_low_precision_log_softmax_is_accepted(self, rng, dtype):
    logits = jnp.asarray(rng.standard_normal((40, 3, 100)) * 8, dtype)
    lp = jax.nn.log_softmax(logits)
    sel = alfx.kbald(lp, 2)
    assert sel.valid.all() and sel.scores.dtype == dtype
    assert alfx.bald(lp).dtype == dtype

  def test_low_precision_tolerance_still_refuses_unnormalised(self, rng):
    lp = (
      jax.nn.log_softmax(
        jnp.asarray(rng.standard_normal((8, 2, 5)), jnp.bfloat16)
      )
      - 0.5
    )
    with pytest.raises(ValueError, match="off by up to 0.5"):
      alfx.bald(lp)

  def test_samples_first_layout_warns_with_the_fix(self, rng):
    lp = _lp(rng, n=3, k=20)
    with pytest.warns(UserWarning, match=r"\[K, N, C\].*jnp\.swapaxes"):
      alfx.topk_bald(lp, 2)

  def test_nan_is_named_with_its_count(self, rng):
    lp = _lp(rng).at[1, 0, 0].set(jnp.nan).at[2, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="contains 2 NaN"):
      alfx.kbald(lp, 2)
    with pytest.raises(ValueError, match=r"contains 1 \+inf"):
      alfx.kbald(_lp(rng).at[0, 0, 0].set(jnp.inf), 2)


class TestMasksAndScalars:
  def test_integer_mask_hint(self, rng):
    with pytest.raises(ValueError, match=r"dtype int64.*mask\.astype\(bool\)"):
      alfx.kbald(_lp(rng), 2, mask=np.ones(12, np.int64))

  def test_batchbald_key_message_names_the_switch(self, rng):
    lp = _lp(rng, n=30, k=3, c=10)
    with pytest.raises(
      ValueError,
      match=r"key is required: batch_size=6 with"
      r" C=10 classes switches to sampled label"
      r" configurations after 5 picks \(pick 6 would enumerate C\*\*5 ="
      r" 100000 configurations > num_configurations=10000\)",
    ):
      alfx.batchbald(lp, 6)

  @pytest.mark.parametrize(
    "fn,arg",
    [
      (lambda lp, v: alfx.kbald_dynamic(lp, 2, tolerance=v), "tolerance"),
      (lambda lp, v: alfx.conservative_bald(lp, 2, threshold=v), "threshold"),
      (
        lambda lp, v: alfx.stochastic_batch(
          alfx.bald(lp), 2, key=jax.random.key(0), beta=v
        ),
        "beta",
      ),
    ],
  )
  def test_scalars_none_or_nan(self, rng, fn, arg):
    lp = _lp(rng)
    with pytest.raises(ValueError, match=f"{arg} is required"):
      fn(lp, None)
    with pytest.raises(ValueError, match=f"{arg} must be a finite number"):
      fn(lp, float("nan"))
    with pytest.raises(ValueError, match=f"{arg} must be a real number"):
      fn(lp, "0.1")

  def test_max_configurations_none(self, rng):
    with pytest.raises(
      ValueError, match="max_configurations must be a positive static int"
    ):
      alfx.joint_entropy(_lp(rng, n=2), max_configurations=None)

  def test_huge_beta_still_fills_the_batch(self):
    u = jnp.array([0.5, 0.2, 0.9, 0.1, 0.3])
    for mode in ("power", "softmax", "softrank"):
      sel = alfx.stochastic_batch(
        u, 3, key=jax.random.key(0), mode=mode, beta=1e38
      )
      assert sel.valid.all(), mode
      np.testing.assert_array_equal(sel.indices, [2, 0, 4])


class TestNaNUnderJit:
  """Inside the caller's jit the value checks cannot run: NaN must show."""

  def test_kernels_propagate_nan(self, rng):
    lp = _lp(rng).at[0, 0, 0].set(jnp.nan)
    assert np.isnan(alfx.entropy(jnp.array([jnp.nan, 0.0])))
    assert np.isnan(jax.jit(alfx.bald)(lp)[0])
    assert np.isnan(jax.jit(alfx.mutual_information)(lp, lp)[0]).all()

  @pytest.mark.parametrize("name", sorted(BALD_FAMILY))
  def test_bald_family_marks_picks_invalid(self, rng, name):
    lp = _lp(rng).at[5, 1, 2].set(jnp.nan)
    sel = jax.jit(
      lambda x: (
        BALD_FAMILY[name](x, key=jax.random.key(0))
        if name == "batchbald"
        else BALD_FAMILY[name](x)
      )
    )(lp)
    assert not sel.valid.any()
    assert np.isnan(sel.scores).all()

  def test_top_b_and_stochastic_batch_mark_picks_invalid(self):
    u = jnp.array([0.1, jnp.nan, 0.3, 0.2])
    for fn in (
      lambda v: alfx.top_b(v, 2),
      lambda v: alfx.stochastic_batch(v, 2, key=jax.random.key(0)),
    ):
      sel = jax.jit(fn)(u)
      assert not sel.valid.any()

  def test_clean_input_is_untouched_under_jit(self, rng):
    lp = _lp(rng)
    np.testing.assert_array_equal(
      jax.jit(lambda x: alfx.kbald(x, 3))(lp), alfx.kbald(lp, 3)
    )

  def test_checked_raises_inside_jit(self, rng):
    step = alfx.checked(lambda x: alfx.kbald(x, 3).indices)
    lp = _lp(rng)
    np.testing.assert_array_equal(step(lp), alfx.kbald(lp, 3).indices)
    with pytest.raises(Exception, match="log_probs.*contains 1 NaN"):
      step(lp.at[0, 0, 0].set(jnp.nan))
    with pytest.raises(Exception, match="normalised"):
      step(lp + 1.0)
    too_few = alfx.checked(lambda x, m: alfx.top_b(x, 3, mask=m))
    with pytest.raises(Exception, match="batch_size=3 is larger"):
      too_few(jnp.arange(4.0), jnp.array([True, False, False, True]))


def test_co_information_compiles_a_bounded_number_of_programs(rng, caplog):
  """A few programs whatever B (it used to compile one per subset: 2**B).

  The count for B = 9 is absolute, not relative to the smaller B: programs
  an earlier test compiled (same shapes) are cached and not counted, so the
  first call's count depends on the order tests run in. The B = 3 call
  compiles the shape-independent helpers first.
  """
  counts = []
  for b in (3, 9):
    lp = jnp.asarray(rng.standard_normal((b, 5, 3)))
    lp = jax.nn.log_softmax(lp)
    caplog.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
      value = alfx.co_information(lp)
    assert np.isfinite(value)
    counts.append(sum("Compiling" in r.getMessage() for r in caplog.records))
  # 2**9 = 512 subsets: one program each would be far above this bound.
  assert counts[1] <= 8, counts

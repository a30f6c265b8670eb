"""The quick value tests are sound, and a missing mask costs no eager op.

A quick test may only say "certainly fine": wherever it passes, the precise
statistics (the ones that decide the error) must pass too, also for rows at
the tolerance boundary where rounding decides. ``mask=None`` in `top_b` and
`stochastic_batch` selects every point, built inside the core's program.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx._core import checking
from alfx._core import validation


def _boundary_rows(rng, rows, c, tol, dtype):
  """``[rows, 1, 1, C]`` log-probabilities whose logsumexp is ``+-tol``
  times a factor ``1 +- 10**u``, ``u`` uniform in ``[-7, 0]`` (half
  inside, half outside; most within a few percent of the boundary)."""
  logits = rng.standard_normal((rows, c)) * 3
  lp = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  side = rng.choice([-1.0, 1.0], rows)
  factor = 1 + rng.choice([-1, 1], rows) * 10 ** rng.uniform(-7, 0, rows)
  lp = lp + (side * factor * tol)[:, None]
  return jnp.asarray(lp[:, None, None, :], dtype)


def _verdicts(lp, tol):
  """(quick, precise) verdict of every row of ``lp[rows, 1, 1, C]``."""
  quick = jax.vmap(lambda x: validation._log_prob_quick(x, tol))(lp)
  precise = jax.vmap(lambda x: validation._log_prob_check(x, tol)[0])(lp)
  return np.asarray(quick), np.asarray(precise)


@pytest.mark.parametrize("c", [2, 10, 100, 1000])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_quick_log_prob_test_never_passes_what_the_precise_test_refuses(
  rng, c, dtype
):
  with jax.enable_x64(dtype == "float64"):
    tol = validation.tolerance(jnp.dtype(dtype))
    lp = _boundary_rows(rng, 4000, c, tol, jnp.dtype(dtype))
    quick, precise = _verdicts(lp, tol)
  assert not np.any(quick & ~precise), np.flatnonzero(quick & ~precise)
  # Not vacuous: rows on both sides of the boundary, some passing quickly.
  assert quick.sum() > 100 and (~precise).sum() > 100


def test_valid_log_probs_with_many_classes_take_the_quick_path(rng):
  """The rounding margin grows with C; log_softmax rows still pass."""
  logits = jnp.asarray(rng.standard_normal((50, 3, 1000)) * 3, jnp.float32)
  lp = jax.nn.log_softmax(logits)
  assert bool(validation._log_prob_quick(lp, validation.tolerance(lp.dtype)))
  bound = validation.log_prob_quick_bound(1e-3, 1000, jnp.float32)
  assert 0 < bound < -math.expm1(-1e-3)


@pytest.mark.parametrize(
  "select",
  [
    lambda u, mask: alfx.top_b(u, 4, mask=mask),
    lambda u, mask: alfx.stochastic_batch(
      u, 4, key=jax.random.key(3), mask=mask
    ),
  ],
  ids=["top_b", "stochastic_batch"],
)
def test_no_mask_selects_every_point(rng, select):
  u = jnp.asarray(rng.standard_normal(50), jnp.float32)
  expected = select(u, jnp.ones(50, bool))
  for got in (select(u, None), jax.jit(lambda u: select(u, None))(u)):
    for a, b in zip(got, expected):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="larger than the pool"):
    select(u[:3], None)
  with pytest.raises(ValueError, match="contains 1 NaN"):
    select(u.at[7].set(jnp.nan), None)


def _single_sample(rng, n=30, c=5, dtype=jnp.float32):
  logits = jnp.asarray(rng.standard_normal((n, 1, c)) * 3, jnp.float32)
  return jax.nn.log_softmax(logits).astype(dtype)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize(
  "dtype, offered", [(jnp.float32, True), (jnp.bfloat16, False)]
)
def test_single_sample_entropy_shares_its_row_sums(rng, dtype, offered, rank):
  """K = 1 or rank 2: the normalisation check reads the core's row sums
  (float32 and wider) instead of a pass of its own; float64 values."""
  got = []
  lp = _single_sample(rng, n=37 + 2 * rank + offered, c=7, dtype=dtype)
  original = validation.shared
  try:
    validation.shared = _recording(original, got)
    # A new shape: traced here.
    h = alfx.predictive_entropy(lp[:, 0] if rank == 2 else lp)
  finally:
    validation.shared = original
  assert got and all((s is not None) == offered for s in got), got
  p = np.exp(np.asarray(lp, np.float64))[:, 0]
  expected = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
  atol = 1e-5 if offered else 5e-2
  np.testing.assert_allclose(np.asarray(h, np.float64), expected, atol=atol)


def _recording(fn, log):
  def call(key, x):
    log.append(fn(key, x))
    return log[-1]

  return call


@pytest.mark.parametrize(
  "corrupt, match",
  [
    (lambda lp: lp.at[3, 0, 1].set(jnp.nan), "contains 1 NaN"),
    (lambda lp: lp.at[3, 0, 1].set(jnp.inf), r"contains 1 \+inf"),
    (lambda lp: jnp.exp(lp), "looks like probabilities"),
    (lambda lp: lp + 5.0, "looks like logits"),
    (lambda lp: lp.at[4].add(1.0002e-3), "off by up to 0.001"),
  ],
)
def test_single_sample_checks_keep_their_messages(rng, corrupt, match):
  lp = _single_sample(rng)
  alfx.predictive_entropy(lp.at[4].add(0.95e-3))  # inside: no error
  with pytest.raises(ValueError, match=match):
    alfx.top_b(alfx.predictive_entropy(corrupt(lp)), 2)


@jax.jit
def _row_sums_core(lp):
  sums = jnp.sum(jnp.exp(lp), axis=-1)
  validation.offer_row_sums(lp, sums)
  return sums


_apart_row_sums_core = validation.checks_apart(
  jax.jit(_row_sums_core.__wrapped__)
)


def _public(core):
  @validation.fused_checks
  def call(lp):
    return validation.run_core(core, validation.check_log_probs(lp))

  return call


@pytest.mark.parametrize("apart", [False, True])
def test_checks_apart_read_their_own_parameter_and_still_share(
  rng, monkeypatch, apart
):
  """`checks_apart`: the checked array enters the fused program as its own
  parameter (the same buffer as the core's argument); the quick test still
  finds the row sums the core offered for it, and bad input still raises."""
  lp = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((23, 3, 6))))
  passed, found = [], []
  fused = checking._core_and_checks

  def spy(args, checked, **kw):
    passed.append(checked)
    return fused(args, checked, **kw)

  monkeypatch.setattr(checking, "_core_and_checks", spy)
  monkeypatch.setattr(
    validation, "shared", _recording(validation.shared, found)
  )
  call = _public(_apart_row_sums_core if apart else _row_sums_core)
  np.testing.assert_allclose(call(lp), 1, atol=1e-6)
  [checked] = passed
  assert (checked[0] is lp) == apart and (checked[0] is None) != apart
  assert found and all(s is not None for s in found), found
  with pytest.raises(ValueError, match="looks like logits"):
    call(lp + 1.0)

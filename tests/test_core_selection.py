"""top_b, Selection, mask and batch-size validation, and the pool primitives."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx._core import pool as _pool
from tests.helpers import seed_for


def _numpy_top_b(u, b, mask):
  order = sorted(np.flatnonzero(mask), key=lambda i: (-u[i], i))
  return np.array(order[:b])


def test_top_b_matches_sorted_reference(rng):
  for _ in range(5):
    n = int(rng.integers(5, 60))
    u = rng.standard_normal(n).astype(np.float32)
    u[rng.random(n) < 0.2] = 0.5  # ties
    mask = rng.random(n) < 0.7
    mask[0] = True
    b = int(rng.integers(1, mask.sum() + 1))
    sel = alfx.top_b(u, b, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(sel.indices, _numpy_top_b(u, b, mask))
    np.testing.assert_array_equal(sel.scores, u[sel.indices])
    assert sel.valid.all() and sel.indices.dtype == jnp.int32


def test_top_b_ties_go_to_the_lower_index():
  sel = alfx.top_b(jnp.array([1.0, 3.0, 3.0, 0.0, 3.0]), 3)
  np.testing.assert_array_equal(sel.indices, [1, 2, 4])


def test_top_b_selectable_minus_inf_beats_masked_points():
  u = jnp.array([5.0, -jnp.inf, 4.0])
  sel = alfx.top_b(u, 2, mask=jnp.array([False, True, True]))
  np.testing.assert_array_equal(sel.indices, [2, 1])
  assert sel.valid.all()


def test_top_b_whole_pool_and_jit_vmap():
  u = jnp.arange(6.0)
  sel = alfx.top_b(u, 6)
  np.testing.assert_array_equal(sel.indices, [5, 4, 3, 2, 1, 0])
  batched = jax.vmap(lambda v: alfx.top_b(v, 2))(jnp.stack([u, -u]))
  np.testing.assert_array_equal(batched.indices, [[5, 4], [0, 1]])
  jitted = jax.jit(alfx.top_b, static_argnums=1)(u, 3)
  np.testing.assert_array_equal(jitted.indices, [5, 4, 3])


def test_top_b_under_jit_marks_picks_without_a_selectable_point():
  # Value checks cannot run under jit; the shortfall shows in `valid`.
  mask = jnp.array([True, False, False, True])
  sel = jax.jit(lambda u, m: alfx.top_b(u, 3, mask=m))(jnp.arange(4.0), mask)
  np.testing.assert_array_equal(sel.valid, [True, True, False])
  np.testing.assert_array_equal(sel.indices[:2], [3, 0])


def test_value_checks_run_on_constants_closed_over_in_a_trace():
  # Concrete arrays captured by someone's jit are still checked eagerly.
  u = jnp.arange(5.0)
  picks = jax.jit(lambda s: alfx.top_b(u, 2).indices)(1.0)
  np.testing.assert_array_equal(picks, [4, 3])
  empty = jnp.zeros(5, bool)
  with pytest.raises(ValueError, match="selects no points"):
    jax.jit(lambda s: alfx.top_b(u, 1, mask=empty).indices)(1.0)
  lp = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match="normalised"):
    jax.jit(lambda s: alfx.bald(lp) * s)(1.0)


class TestBadInput:
  def test_batch_larger_than_selectable(self):
    with pytest.raises(
      ValueError,
      match="batch_size=3 is larger than the"
      " number of selectable points: 2 of N=4",
    ):
      alfx.top_b(jnp.arange(4.0), 3, mask=jnp.array([1, 0, 0, 1], bool))
    with pytest.raises(ValueError, match="larger than the pool"):
      alfx.top_b(jnp.arange(4.0), 5)

  def test_empty_mask(self):
    with pytest.raises(ValueError, match="selects no points"):
      alfx.top_b(jnp.arange(4.0), 1, mask=jnp.zeros(4, bool))

  def test_mask_dtype_and_shape(self):
    with pytest.raises(ValueError, match="mask must be a boolean"):
      alfx.top_b(jnp.arange(4.0), 1, mask=jnp.ones(4))
    with pytest.raises(ValueError, match=r"mask must have shape \[N=4\]"):
      alfx.top_b(jnp.arange(4.0), 1, mask=jnp.ones(3, bool))

  def test_bad_batch_size(self):
    for bad in (0, -1, 2.0, True):
      with pytest.raises(ValueError, match="batch_size"):
        alfx.top_b(jnp.arange(4.0), bad)

  def test_nan_utilities(self):
    with pytest.raises(ValueError, match="utilities.*NaN"):
      alfx.top_b(jnp.array([0.0, jnp.nan]), 1)
    with pytest.raises(ValueError, match=r"utilities must have shape \[N\]"):
      alfx.top_b(jnp.zeros((2, 2)), 1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_chunked_map_equals_direct(rng, chunk):
  x = jnp.asarray(rng.standard_normal((23, 4)), jnp.float32)
  m = jnp.asarray(rng.random(23) < 0.5)
  got = _pool.chunked_map(
    lambda a, b: (jnp.tanh(a), jnp.where(b, a.sum(1), -1.0)),
    x,
    m,
    chunk_size=chunk,
  )
  want = (jnp.tanh(x), jnp.where(m, x.sum(1), -1.0))
  chex.assert_trees_all_close(got, want, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 9, 23, 40])
def test_chunked_sum_counts_every_row_once(rng, chunk):
  x = jnp.asarray(rng.standard_normal((23, 3)), jnp.float32)
  w = jnp.asarray(rng.random(23), jnp.float32)
  got = _pool.chunked_sum(
    lambda a, v, fresh: (
      jnp.sum(jnp.where(fresh[:, None], a * v[:, None], 0), 0),
      jnp.sum(fresh),
    ),
    x,
    w,
    chunk_size=chunk,
  )
  np.testing.assert_allclose(got[0], (x * w[:, None]).sum(0), rtol=1e-5)
  assert int(got[1]) == 23


def test_pool_top_k_matches_lax_top_k(rng):
  v = jnp.asarray(rng.standard_normal(30), jnp.float32)
  values, indices = _pool.top_k(v, 5)
  want_values, want_indices = jax.lax.top_k(v, 5)
  np.testing.assert_array_equal(indices, want_indices)
  np.testing.assert_array_equal(values, want_values)


def test_pool_primitives_single_device(rng):
  v = jnp.asarray([0.1, 0.9, 0.9, 0.3])
  index, value = _pool.argmax(v)
  assert int(index) == 1 and float(value) == pytest.approx(0.9)
  x = jnp.arange(12.0).reshape(4, 3)
  np.testing.assert_array_equal(_pool.take(x, jnp.int32(2)), x[2])
  np.testing.assert_array_equal(_pool.set_at(x, jnp.int32(1), 0.0)[1], 0.0)
  np.testing.assert_array_equal(_pool.global_indices(4), np.arange(4))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_pool_random_draws(dtype):
  """Counter-based noise: uniform on [0, 1) (mean 1/2, variance 1/12), Gumbel
  with mean Euler's gamma and variance pi^2 / 6; rows [s, s + n) of a draw
  are what a shard starting at row s draws; another key, another draw."""
  with jax.enable_x64(dtype == jnp.float64):
    _check_random_draws(dtype)


def _check_random_draws(dtype):
  key = jax.random.key(seed_for("pool_random_draws"))
  u = np.asarray(_pool.uniform(key, (100_000,), dtype), np.float64)
  assert u.min() >= 0 and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
  g = np.asarray(_pool.gumbel(key, (100_000,), dtype), np.float64)
  assert np.all(np.isfinite(g))
  assert abs(g.mean() - np.euler_gamma) < 0.03
  assert abs(g.var() - np.pi**2 / 6) < 0.1
  assert not np.array_equal(
    u,
    np.asarray(
      _pool.uniform(jax.random.fold_in(key, 1), (100_000,), dtype), np.float64
    ),
  )
  # A shard's rows: [5, 3] starting at row 7 of a [12, 3] draw.
  key_data = _pool._threefry_key(key)
  whole = _pool._bits_to_unit(_pool._counter_bits(key_data, 0, (12, 3)), dtype)
  part = _pool._bits_to_unit(_pool._counter_bits(key_data, 7, (5, 3)), dtype)
  np.testing.assert_array_equal(part, whole[7:12])


def test_pool_random_draws_other_prngs():
  """Raw uint32 keys are Threefry keys; a non-Threefry key falls back to
  jax.random's own draw."""
  raw = jax.random.PRNGKey(4)
  np.testing.assert_array_equal(
    _pool.uniform(raw, (6,)), _pool.uniform(jax.random.wrap_key_data(raw), (6,))
  )
  rbg = jax.random.key(4, impl="rbg")
  np.testing.assert_array_equal(
    _pool.uniform(rbg, (6,), jnp.float32),
    jax.random.uniform(rbg, (6,), jnp.float32),
  )

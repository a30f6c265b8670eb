"""The pool axis sharded over devices: `alfx.shard_pool` and sharded dispatch.

The multi-device checks (every acquisition on 4 forced devices and on 2
processes, the sharded programs' collectives, `shard_pool`'s padding, BAIT's
split scan state, the Flax helpers) run in test_conformance.py, one
subprocess per layout (tests/conformance_worker.py, tests/sharded_public.py).
The single-device behaviour of `shard_pool` and of the dispatcher runs here.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import alfx
from alfx._core import sharding as _sharding
from tests.helpers import compile_log

# --------------------------------------------------------------------------
# In this process (one device).


def test_shard_pool_on_one_device(rng):
  x = jnp.asarray(rng.standard_normal((7, 3)), jnp.float32)
  m = jnp.asarray(rng.random(7) < 0.5)
  pool = alfx.shard_pool(x, np.asarray(m))
  assert isinstance(pool, alfx.ShardedPool)
  assert pool.n == 7 and pool.axis_name == "pool"
  np.testing.assert_array_equal(pool.arrays[0], x)
  np.testing.assert_array_equal(pool.arrays[1], m)
  assert bool(jnp.all(pool.in_pool))
  assert pool.arrays[0].sharding.spec == P("pool")


def test_shard_pool_bad_inputs(rng):
  x = rng.standard_normal((5, 2))
  with pytest.raises(ValueError, match="at least one"):
    alfx.shard_pool()
  with pytest.raises(
    ValueError,
    match=r"arrays\[1\] must have the pool size"
    r" N=5",
  ):
    alfx.shard_pool(x, np.zeros(4, bool))
  with pytest.raises(ValueError, match="scalar"):
    alfx.shard_pool(x, 1.0)
  with pytest.raises(ValueError, match="empty pool"):
    alfx.shard_pool(np.zeros((0, 2)))
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match="axis_name='pool' is not one"):
    alfx.shard_pool(x, mesh=mesh)


def test_unsharded_inputs_take_the_plain_path(rng):
  """No sharding, no shard_map: the declared core runs as is."""
  calls = []

  @_sharding.pool_core(pool=("x",), static=("scale",), selection=False)
  def core(x, scale, axis_name=None):
    calls.append(axis_name)
    return x * scale

  x = jnp.asarray(rng.standard_normal(4), jnp.float32)
  np.testing.assert_array_equal(core(x, scale=2), 2 * x)
  assert calls == [None]


def test_one_device_mesh_runs_sharded_and_equal(rng):
  """A 1-device mesh goes through shard_map (axis_name set) with the same
  picks as the plain call, and compiles nothing for new values."""
  lp = jax.nn.log_softmax(
    jnp.asarray(rng.standard_normal((30, 4, 3)), jnp.float32)
  )
  pool = alfx.shard_pool(lp, mesh=jax.make_mesh((1,), ("pool",)))
  assert _sharding.pool_axis(pool.arrays[0])[1] == "pool"
  want = alfx.kbald(lp, 4, order=2)
  got = alfx.kbald(pool.arrays[0], 4, order=2, mask=pool.in_pool)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
  new_mask = pool.in_pool & (jnp.arange(30) > 0)
  with compile_log() as log:
    jax.block_until_ready(alfx.kbald(pool.arrays[0], 4, order=2, mask=new_mask))
  assert not log.names, log.names


def test_pool_axis_rejects_non_pool_shardings():
  mesh = jax.make_mesh((1,), ("pool",))
  x = jax.device_put(jnp.zeros((4, 2)), NamedSharding(mesh, P(None, "pool")))
  with pytest.raises(ValueError, match="only the pool axis"):
    _sharding.pool_axis(x)
  assert _sharding.pool_axis(jnp.zeros(3)) is None


def test_in_pool_weights_the_pool_fisher(rng):
  """F with in_pool equals F of the pool without the excluded rows (every
  path), and so do bait's picks and scores (structured topc here: the
  conformance suite's 4-device layout compares bait with in_pool on a padded
  pool against the unpadded pool for dense full/topc/binary, diagonal and
  structured full); bait's default mask becomes in_pool & ~labeled."""
  n, d, c, keep = 12, 3, 3, 9
  emb = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((n, c)), jnp.float32))
  in_pool = jnp.arange(n) < keep
  labeled = jnp.zeros(n, bool).at[0].set(True).at[4].set(True)
  for kind, method in (
    ("full", "dense"),
    ("diagonal", "auto"),
    ("full", "structured"),
    ("topc", "structured"),
  ):
    want = alfx.pool_fisher(
      emb[:keep], probs[:keep], fisher=kind, method=method
    )
    got = alfx.pool_fisher(
      emb, probs, fisher=kind, method=method, in_pool=in_pool
    )
    if kind == "topc":
      np.testing.assert_allclose(
        got.quad[:keep], want.quad, rtol=1e-5, atol=1e-7
      )
    else:
      np.testing.assert_allclose(got.blocks, want.blocks, rtol=1e-5, atol=1e-7)
    if kind != "topc":
      continue
    sel_want = alfx.bait(
      emb[:keep],
      probs[:keep],
      3,
      labeled=labeled[:keep],
      fisher=kind,
      method=method,
    )
    sel_got = alfx.bait(
      emb,
      probs,
      3,
      labeled=labeled,
      fisher=kind,
      method=method,
      in_pool=in_pool,
    )
    np.testing.assert_array_equal(sel_got.indices, sel_want.indices)
    np.testing.assert_allclose(sel_got.scores, sel_want.scores, rtol=1e-4)
    # mask=None: the default mask is in_pool & ~labeled.
    assert set(np.asarray(sel_got.indices).tolist()) <= (
      set(range(keep)) - {0, 4}
    )
  with pytest.raises(ValueError, match="in_pool must have shape"):
    alfx.bait(emb, probs, 2, labeled=labeled, in_pool=in_pool[:5])

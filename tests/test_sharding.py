"""The pool axis sharded over devices: `alfx.shard_pool` and sharded dispatch.

The multi-device checks run tests/sharded_public.py in a subprocess with 4
forced host CPU devices (the device count is fixed when JAX starts); the
single-device behaviour of `shard_pool` and of the dispatcher runs here.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import alfx
from alfx import _sharding
from conftest import seed_for

_SCRIPT = os.path.join(os.path.dirname(__file__), "sharded_public.py")


@functools.cache
def _run(full: bool):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, _SCRIPT, str(seed_for("sharding") % 1000),
       "full" if full else "fast"],
      capture_output=True, text=True, timeout=900, env=env, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _check_cases(out, expected):
  cases = out["cases"]
  assert set(cases) == set(expected)
  for name, case in cases.items():
    # (a) the same picks, in the same order, sharded or not, under jit or not.
    assert case["sharded"] == case["single"], (name, case)
    assert case["under_jit"] == case["single"], (name, case)
    assert case["valid_equal"], name
    assert case["score_diff"] < 1e-4, (name, case["score_diff"])
    # (b) N = 203 on 4 devices: the padding row (index 203) is never picked.
    assert not case["picked_padding"], name
    # (c) one SPMD program: no all-gather of a pool-sized operand, but the
    # small collectives of the pool-wide argmax / top-k are there. Softrank's
    # ranks need the order of the whole pool: it gathers the N utilities
    # (one scalar per point, f32[204]) and nothing else.
    if name == "stochastic_softrank":
      assert case["pool_gathers"], name
      for line in case["pool_gathers"]:
        assert "f32[204]{0} all-gather(" in line, line
    else:
      assert case["pool_gathers"] == [], (name, case["pool_gathers"])
    assert case["collectives"] > 0, name


def test_sharded_picks_equal_single_device():
  """BatchBALD, 2- and 3-BALD, BAIT full (dense and structured) and binary,
  BADGE, CoreSet, TypiClust, softrank sampling."""
  _check_cases(_run(False), _FAST)


_FAST = ("batchbald", "kbald2", "kbald3", "bait_full", "bait_binary",
         "bait_structured_full", "badge", "coreset", "stochastic_softrank",
         "typiclust")


@pytest.mark.slow
def test_every_sharded_strategy_equals_single_device():
  """Also sampled BatchBALD, top-k BALD, dynamic/conservative BALD, top_b,
  random and stochastic batches, BAIT topc and diagonal, TypiClust with
  subsampled candidates."""
  _check_cases(_run(True), _FAST + (
      "topk_bald", "batchbald_sampled", "kbald_dynamic", "conservative_bald",
      "top_b", "random_batch", "stochastic_power", "bait_topc",
      "bait_diagonal", "bait_structured_topc", "typiclust_subsampled"))


def test_gather_detector_and_padding_controls():
  """The checks above can fail: a resharding to replicated shows up as a
  gather of the pool, and ``mask=None`` on a padded pool does pick the
  padding (which is why ``in_pool`` / padded masks must be passed)."""
  out = _run(False)
  assert out["detector_finds_gather"]
  assert out["mask_none_picks_padding"]


def test_shard_pool_pads_and_places():
  out = _run(False)["shard_pool"]
  assert out["n"] == 203 and out["n_pad"] == 204
  assert out["specs"] == [["pool"]] * 6
  assert out["in_pool"] == [True] * 203 + [False]
  assert out["prefix_equal"]
  assert out["pad_float_is_last_row"]
  assert out["pad_bool_false"]
  assert out["shard_rows"] == [51] * 4 and out["devices"] == 4


def test_bait_scan_state_stays_sharded():
  """BAIT's per-point U_n, W_n live split over the devices (P('pool'), 51
  rows each) and equal the single-device state, on the dense and the
  structured paths; F (with the padding row weighted 0 through in_pool)
  equals the unpadded pool's F: the blocks replicated, structured topc's
  per-point V_n^T F V_n split like the pool."""
  states = _run(False)["bait_state"]
  assert set(states) == {"full_dense", "full_structured", "topc_structured"}
  for name, out in states.items():
    assert out["fisher_diff"] < 1e-5, (name, out["fisher_diff"])
    if out["fisher_field"] == "quad":
      assert out["fisher_spec"] == ["pool", None, None], name
    else:
      assert out["fisher_spec"] == [None, None, None], name  # replicated
    assert out["specs"] == {k: ["pool", None, None] for k in ("u", "w", "u0",
                                                              "w0")}, name
    assert out["shard_rows"] == [51] * 4, name
    # Structured topc forms W_n by cancelling terms: its float32 W differs
    # from float64 by 1.3e-4 on one device already (measured), so it gets
    # that precision's tolerance.
    w_tol = 1e-3 if name == "topc_structured" else 1e-4
    assert out["u_diff"] < 1e-4 and out["w_diff"] < w_tol, (name, out)


def test_flax_helpers_predict_sharded():
  """Each device predicts its own rows: outputs sharded P('pool'), equal to
  the single-device predictions (MC dropout included), same picks."""
  for name, out in _run(False)["flax"].items():
    assert out["specs"] == [["pool", None, None], ["pool", None],
                            ["pool", None]], name
    assert out["diff"] < 1e-5, (name, out["diff"])
    assert out["picks_equal"], name


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
  with pytest.raises(ValueError, match=r"arrays\[1\] must have the pool size"
                                       r" N=5"):
    alfx.shard_pool(x, np.zeros(4, bool))
  with pytest.raises(ValueError, match="scalar"):
    alfx.shard_pool(x, 1.0)
  with pytest.raises(ValueError, match="empty pool"):
    alfx.shard_pool(np.zeros((0, 2)))
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match="axis_name='pool' is not one"):
    alfx.shard_pool(x, mesh=mesh)


def test_unsharded_inputs_take_the_plain_path(rng):
  """No sharding, no shard_map: the dispatcher calls the core itself."""
  calls = []

  def core(x, *, scale, axis_name=None):
    calls.append(axis_name)
    return x * scale

  x = jnp.asarray(rng.standard_normal(4), jnp.float32)
  np.testing.assert_array_equal(_sharding.call(core, (x,), (True,), scale=2),
                                2 * x)
  assert calls == [None]


def test_one_device_mesh_runs_sharded_and_equal(rng):
  """A 1-device mesh goes through shard_map (axis_name set) with the same
  picks as the plain call, and compiles once for new values."""
  lp = jax.nn.log_softmax(
      jnp.asarray(rng.standard_normal((30, 4, 3)), jnp.float32))
  pool = alfx.shard_pool(lp, mesh=jax.make_mesh((1,), ("pool",)))
  assert _sharding.pool_axis(pool.arrays[0])[1] == "pool"
  want = alfx.kbald(lp, 4, order=2)
  got = alfx.kbald(pool.arrays[0], 4, order=2, mask=pool.in_pool)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
  before = _sharding._sharded._cache_size()
  alfx.kbald(pool.arrays[0], 4, order=2,
             mask=pool.in_pool & (jnp.arange(30) > 0))
  assert _sharding._sharded._cache_size() == before


def test_pool_axis_rejects_non_pool_shardings():
  mesh = jax.make_mesh((1,), ("pool",))
  x = jax.device_put(jnp.zeros((4, 2)), NamedSharding(mesh, P(None, "pool")))
  with pytest.raises(ValueError, match="only the pool axis"):
    _sharding.pool_axis(x)
  assert _sharding.pool_axis(jnp.zeros(3)) is None


def test_in_pool_weights_the_pool_fisher(rng):
  """F with in_pool equals F of the pool without the excluded rows (every
  path), and so do bait's picks and scores; bait's default mask becomes
  in_pool & ~labeled."""
  n, d, c, keep = 12, 3, 3, 9
  emb = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((n, c)),
                                     jnp.float32))
  in_pool = jnp.arange(n) < keep
  labeled = jnp.zeros(n, bool).at[0].set(True).at[4].set(True)
  for kind, method in (("full", "dense"), ("diagonal", "auto"),
                       ("full", "structured"), ("topc", "structured")):
    want = alfx.pool_fisher(emb[:keep], probs[:keep], kind=kind,
                            method=method)
    got = alfx.pool_fisher(emb, probs, kind=kind, method=method,
                           in_pool=in_pool)
    if kind == "topc":
      np.testing.assert_allclose(got.quad[:keep], want.quad, rtol=1e-5,
                                 atol=1e-7)
    else:
      np.testing.assert_allclose(got.blocks, want.blocks, rtol=1e-5,
                                 atol=1e-7)
    sel_want = alfx.bait(emb[:keep], probs[:keep], labeled[:keep], 3,
                         fisher=kind, method=method)
    sel_got = alfx.bait(emb, probs, labeled, 3, fisher=kind, method=method,
                        in_pool=in_pool)
    np.testing.assert_array_equal(sel_got.indices, sel_want.indices)
    np.testing.assert_allclose(sel_got.scores, sel_want.scores, rtol=1e-4)
  sel = alfx.bait(emb, probs, labeled, keep - 2, in_pool=in_pool)
  assert set(np.asarray(sel.indices).tolist()) == set(range(keep)) - {0, 4}
  with pytest.raises(ValueError, match="in_pool must have shape"):
    alfx.bait(emb, probs, labeled, 2, in_pool=in_pool[:5])

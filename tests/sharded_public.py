"""The public acquisitions on a pool sharded over 4 host CPU devices.

Executed in a subprocess by ``tests/test_sharding.py`` (the device count is
fixed when JAX starts). Prints one JSON object: per strategy, the
single-device and sharded picks, the score difference, whether a padding row
was picked, and the all-gathers of pool-sized operands in the compiled
sharded program; plus the checks of `alfx.shard_pool`, the sharded scan
state of BAIT and the Flax helpers.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import alfx  # noqa: E402
from alfx import _bait  # noqa: E402
from alfx import _sharding  # noqa: E402

N, K, C, D, B = 203, 5, 3, 6, 4  # N is not a multiple of 4: one padding row

#: The strategies of the default (fast) run; ``full`` runs every case.
FAST_CASES = ("batchbald", "kbald2", "kbald3", "bait_full", "bait_binary",
              "bait_structured_full", "badge", "coreset",
              "stochastic_softrank", "typiclust")


def spec_of(x):
  return [None if s is None else str(s) for s in x.sharding.spec]


def rel_diff(single, sharded):
  """Largest difference on the original rows, relative to the largest value
  (host arrays: slicing an explicitly sharded array is ambiguous)."""
  single, sharded = np.asarray(single), np.asarray(sharded)[:N]
  return float(np.max(np.abs(single - sharded)) / np.max(np.abs(single)))


def main(seed, full):
  assert jax.device_count() == 4, jax.devices()
  rng = np.random.default_rng(seed)
  out = {"cases": {}}
  lp = jax.nn.log_softmax(
      jnp.asarray(2.5 * rng.standard_normal((N, K, C)), jnp.float32))
  # Duplicates across shards: exact ties must go to the lower index.
  lp = lp.at[150:160].set(lp[10:20])
  emb = jnp.asarray(rng.standard_normal((N, D)) + 3.0, jnp.float32)
  probs = jax.nn.softmax(
      jnp.asarray(2 * rng.standard_normal((N, C)), jnp.float32))
  labeled = jnp.asarray(rng.random(N) < 0.1)
  mask = jnp.asarray(rng.random(N) < 0.9) & ~labeled
  key = jax.random.key(seed)

  pool = alfx.shard_pool(lp, emb, probs, labeled, mask)
  s_lp, s_emb, s_probs, s_labeled, s_mask = pool.arrays
  n_pad = s_lp.shape[0]

  # ---- shard_pool itself.
  out["shard_pool"] = dict(
      n=pool.n, n_pad=n_pad,
      specs=[spec_of(a) for a in pool.arrays + (pool.in_pool,)],
      in_pool=np.asarray(pool.in_pool).tolist(),
      prefix_equal=all(
          bool(np.array_equal(np.asarray(a)[:N], np.asarray(b)))
          for a, b in zip(pool.arrays, (lp, emb, probs, labeled, mask))),
      pad_float_is_last_row=bool(
          np.array_equal(np.asarray(s_lp)[N:], np.asarray(lp)[-1:].repeat(
              n_pad - N, 0))),
      pad_bool_false=bool(not np.asarray(s_mask)[N:].any()
                          and not np.asarray(s_labeled)[N:].any()),
      shard_rows=[int(s.data.shape[0]) for s in s_lp.addressable_shards],
      devices=len({s.device for s in s_lp.addressable_shards}))

  # ---- Every sharding strategy: picks equal, padding never picked, no
  # all-gather of the pool in the compiled program.
  util = alfx.bald(lp)
  s_util = alfx.bald(s_lp)
  cases = {
      "topk_bald": (lambda x, m: alfx.topk_bald(x, B, mask=m),
                    (lp, mask), (s_lp, s_mask)),
      "batchbald": (lambda x, m: alfx.batchbald(x, B, mask=m),
                    (lp, mask), (s_lp, s_mask)),
      "batchbald_sampled": (
          lambda x, m: alfx.batchbald(x, B, mask=m, num_samples=20, key=key),
          (lp, mask), (s_lp, s_mask)),
      "kbald2": (lambda x, m: alfx.kbald(x, B, order=2, mask=m),
                 (lp, mask), (s_lp, s_mask)),
      "kbald3": (lambda x, m: alfx.kbald(x, B, order=3, mask=m),
                 (lp, mask), (s_lp, s_mask)),
      "kbald_dynamic": (
          lambda x, m: alfx.kbald_dynamic(x, B, tolerance=0.5, mask=m),
          (lp, mask), (s_lp, s_mask)),
      "conservative_bald": (
          lambda x, m: alfx.conservative_bald(x, B, threshold=0.05, mask=m),
          (lp, mask), (s_lp, s_mask)),
      "top_b": (lambda u, m: alfx.top_b(u, B, mask=m),
                (util, mask), (s_util, s_mask)),
      "random_batch": (lambda m: alfx.random_batch(B, key=key, mask=m),
                       (mask,), (s_mask,)),
      "stochastic_power": (
          lambda u, m: alfx.stochastic_batch(u, B, key=key, mask=m),
          (util, mask), (s_util, s_mask)),
      "stochastic_softrank": (
          lambda u, m: alfx.stochastic_batch(u, B, key=key, mode="softrank",
                                             mask=m),
          (util, mask), (s_util, s_mask)),
      "badge": (lambda e, p, m: alfx.badge(e, p, B, key=key, mask=m),
                (emb, probs, mask), (s_emb, s_probs, s_mask)),
      "typiclust": (
          lambda e, l, m: alfx.typiclust(e, l, B, key=key, mask=m,
                                         block_size=8),
          (emb, labeled, mask), (s_emb, s_labeled, s_mask)),
      "typiclust_subsampled": (
          lambda e, l, m: alfx.typiclust(e, l, B, key=key, mask=m,
                                         block_size=8, max_candidates=3),
          (emb, labeled, mask), (s_emb, s_labeled, s_mask)),
      "coreset": (lambda e, l, m: alfx.coreset(e, l, B, mask=m, block_size=8),
                  (emb, labeled, mask), (s_emb, s_labeled, s_mask)),
  }
  for fisher in ("full", "binary", "topc", "diagonal"):
    cases[f"bait_{fisher}"] = (
        lambda e, p, l, m, ip=None, fisher=fisher: alfx.bait(
            e, p, l, B, fisher=fisher, mask=m, in_pool=ip),
        (emb, probs, labeled, mask),
        (s_emb, s_probs, s_labeled, s_mask, pool.in_pool))
  # The path of C * D > DENSE_MAX_DIM (forced here at a small shape); a
  # static labelled capacity, as under the caller's jit it would be N.
  for fisher in ("full", "topc"):
    cases[f"bait_structured_{fisher}"] = (
        lambda e, p, l, m, ip=None, fisher=fisher: alfx.bait(
            e, p, l, B, fisher=fisher, mask=m, in_pool=ip,
            method="structured", labeled_capacity=32),
        (emb, probs, labeled, mask),
        (s_emb, s_probs, s_labeled, s_mask, pool.in_pool))

  if not full:
    cases = {k: v for k, v in cases.items() if k in FAST_CASES}
  for name, (fn, single_args, sharded_args) in cases.items():
    single = fn(*single_args)
    split = fn(*sharded_args)
    split = fn(*sharded_args)
    jitted = jax.jit(fn)
    compiled = jitted.lower(*sharded_args).compile()
    under_jit = compiled(*sharded_args)
    scale = max(float(np.max(np.abs(np.where(single.valid, single.scores,
                                             0)))), 1e-30)
    out["cases"][name] = dict(
        single=np.asarray(single.indices).tolist(),
        sharded=np.asarray(split.indices).tolist(),
        under_jit=np.asarray(under_jit.indices).tolist(),
        valid_equal=bool(np.array_equal(single.valid, split.valid)),
        score_diff=float(np.max(np.abs(single.scores - split.scores))) / scale,
        picked_padding=bool(np.any(np.asarray(split.indices) >= N)),
        pool_gathers=_sharding.pool_gathers(compiled.as_text(), n_pad),
        collectives=sum(compiled.as_text().count(op) for op in
                        ("all-reduce(", "all-gather(")))

  # Negative controls: the gather detector finds a gather of the pool, and
  # mask=None on a padded pool does select padding (why in_pool exists).
  gather = jax.jit(lambda x: jax.reshard(x, NamedSharding(pool.mesh, P())))
  out["detector_finds_gather"] = bool(_sharding.pool_gathers(
      gather.lower(s_lp).compile().as_text(), n_pad))
  last_best = lp.at[N - 1].set(jnp.log(jnp.asarray(
      np.eye(C)[np.arange(K) % C] * 0.98 + 0.02 / C, jnp.float32)))
  (padded_best,) = alfx.shard_pool(last_best).arrays
  out["mask_none_picks_padding"] = bool(np.any(np.asarray(
      alfx.topk_bald(padded_best, 2).indices) >= N))

  # ---- The per-point state of BAIT's scan stays split over the devices
  # (dense full, structured full and topc: its per-point quad is split too).
  per_point = ("u", "w", "u0", "w0")
  state_specs = lambda axis: (P(), {  # noqa: E731
      k: (P(axis) if k in per_point else P()) for k in
      ("u", "w", "u0", "w0", "picks", "valid", "alive", "dropped", "zy",
       "s_inv", "wj")})
  out["bait_state"] = {}
  for kind, method, capacity in (("full", "dense", None),
                                 ("full", "structured", 32),
                                 ("topc", "structured", 32)):
    top_c = 2 if kind == "topc" else 1
    static = dict(batch_size=B, kind=kind, top_c=top_c, oversample=2,
                  method=method, chunk_size=None, capacity=capacity)
    stats = alfx.pool_fisher(emb, probs, kind=kind, top_c=top_c,
                             method=method)
    s_stats = alfx.pool_fisher(s_emb, s_probs, kind=kind, top_c=top_c,
                               method=method, in_pool=pool.in_pool)
    field = "quad" if kind == "topc" else "blocks"
    want, got = getattr(stats, field), getattr(s_stats, field)
    _, state = _bait._bait(emb, probs, labeled, mask, 1.0, stats, None,
                           stats.quad, with_state=True, **static)
    _, s_state = _sharding.call(
        _bait._bait, (s_emb, s_probs, s_labeled, s_mask, 1.0, s_stats,
                      pool.in_pool, s_stats.quad),
        (True, True, True, True, False, False, True, True),
        out_specs=state_specs, with_state=True, **static)
    out["bait_state"][f"{kind}_{method}"] = dict(
        fisher_field=field,
        fisher_diff=(rel_diff(want, got) if field == "quad" else float(
            jnp.max(jnp.abs(want - got)) / jnp.max(jnp.abs(want)))),
        fisher_spec=spec_of(got),
        specs={k: spec_of(s_state[k]) for k in per_point},
        shard_rows=[int(s.data.shape[0]) for s in
                    s_state["u"].addressable_shards],
        u_diff=rel_diff(state["u"], s_state["u"]),
        w_diff=rel_diff(state["w"], s_state["w"]))

  # ---- Flax helpers: each device predicts its rows; outputs stay sharded.
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class MLP(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = False):
      h = nn.relu(nn.Dense(8)(x))
      h = nn.Dropout(0.3, deterministic=not train)(h)
      return nn.Dense(C, name="head")(h)

  model = MLP()
  x = jnp.asarray(rng.standard_normal((N, 5)), jnp.float32)
  (s_x,) = alfx.shard_pool(x).arrays
  forward = alfx.linen_forward(model, train_kwargs={"train": True})
  params = alfx.init_ensemble(lambda k: model.init(k, x[:1]),
                              jax.random.key(1), K)
  one = jax.tree.map(lambda a: a[0], params)
  flax_out = {}
  for name, predict in {
      "ensemble": lambda xs: alfx.ensemble_predictions(
          forward, params, xs, chunk_size=16),
      "mc_dropout": lambda xs: alfx.mc_dropout_predictions(
          forward, one, xs, jax.random.key(2), num_samples=K, chunk_size=16),
  }.items():
    single, split = predict(x), predict(s_x)
    flax_out[name] = dict(
        specs=[spec_of(a) for a in split],
        diff=max(rel_diff(a, b) for a, b in zip(single, split)),
        picks_equal=bool(np.array_equal(
            alfx.batchbald(single.log_probs, B).indices,
            alfx.batchbald(split.log_probs, B,
                           mask=alfx.shard_pool(x).in_pool).indices)))
  out["flax"] = flax_out
  print(json.dumps(out))


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 0,
       len(sys.argv) > 2 and sys.argv[2] == "full")

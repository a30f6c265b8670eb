"""Checks of the sharded layouts besides the picks (run by the worker).

`tests/conformance_worker.py` calls `run` after the conformance rows, in the
same subprocess (so nothing compiles twice for it). ``devices4`` (4 forced
host devices):

* `alfx.shard_pool` pads N = 203 to 204 and places every array ``P('pool')``;
* BAIT's per-point scan state (``U_n``, ``W_n``) stays split over the devices
  and equals the single-device state (dense full, structured full and topc),
  and ``F`` with ``in_pool`` equals the unpadded pool's ``F``;
* the Flax helpers predict each device's rows (outputs ``P('pool')``), equal
  to the single-device predictions; `alfx.entropy` and `alfx.bald` give the
  single-device values;
* negative controls: the gather detector finds a resharding to replicated,
  and ``mask=None`` on a padded pool does pick the padding.

``multiprocess`` (2 processes x 2 devices): the Flax helpers and the
per-point kernels on global inputs equal their values on this process's own
device on the whole (host) input.

Each check's failure is recorded as a string, so one broken check does not
hide the others.
"""

import dataclasses
import sys
import time
import traceback

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

import alfx
from alfx._core import sharding as _sharding
from alfx.bait_family import _bait

N, K, C, D, B = 203, 5, 3, 6, 4


def spec_of(x):
  """The array's PartitionSpec, one entry per dimension (older jax drops
  trailing Nones)."""
  spec = list(x.sharding.spec)
  spec += [None] * (x.ndim - len(spec))
  return [None if s is None else str(s) for s in spec]


def host(x):
  """A host copy of a replicated or (process-local or global) sharded array."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def rel_diff(single, sharded):
  """Largest difference on the original rows, relative to the largest value
  (host arrays: slicing an explicitly sharded array is ambiguous)."""
  single, sharded = np.asarray(single), host(sharded)[:N]
  return float(np.max(np.abs(single - sharded)) / np.max(np.abs(single)))


def _inputs(seed):
  rng = np.random.default_rng(seed)
  lp = np.asarray(
    jax.nn.log_softmax(
      jnp.asarray(2.5 * rng.standard_normal((N, K, C)), jnp.float32)
    )
  )
  emb = np.asarray(rng.standard_normal((N, D)) + 3.0, np.float32)
  probs = np.asarray(
    jax.nn.softmax(jnp.asarray(2 * rng.standard_normal((N, C)), jnp.float32))
  )
  labeled = rng.random(N) < 0.1
  mask = (rng.random(N) < 0.9) & ~labeled
  x = np.asarray(rng.standard_normal((N, 5)), np.float32)
  return lp, emb, probs, labeled, mask, x


def _guard(fn):
  start = time.perf_counter()
  try:
    out = fn()
  except Exception as e:  # pylint: disable=broad-except
    out = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
  print(
    f"extras: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True
  )
  return out


def check_shard_pool(lp, emb, probs, labeled, mask):
  pool = alfx.shard_pool(lp, emb, probs, labeled, mask)
  s_lp, _, _, s_labeled, s_mask = pool.arrays
  n_pad = s_lp.shape[0]
  return dict(
    n=pool.n,
    n_pad=n_pad,
    specs=[spec_of(a) for a in pool.arrays + (pool.in_pool,)],
    in_pool=np.asarray(pool.in_pool).tolist(),
    prefix_equal=all(
      bool(np.array_equal(np.asarray(a)[:N], np.asarray(b)))
      for a, b in zip(pool.arrays, (lp, emb, probs, labeled, mask))
    ),
    pad_float_is_last_row=bool(
      np.array_equal(
        np.asarray(s_lp)[N:], np.asarray(lp)[-1:].repeat(n_pad - N, 0)
      )
    ),
    pad_bool_false=bool(
      not np.asarray(s_mask)[N:].any() and not np.asarray(s_labeled)[N:].any()
    ),
    shard_rows=[int(s.data.shape[0]) for s in s_lp.addressable_shards],
    devices=len({s.device for s in s_lp.addressable_shards}),
  )


def check_controls(lp):
  """The gather detector finds a gather of the pool; mask=None on a padded
  pool selects padding (why in_pool / padded masks must be passed)."""
  pool = alfx.shard_pool(lp)
  (s_lp,) = pool.arrays
  n_pad = s_lp.shape[0]
  # A replicated output of a computation on the split pool: XLA gathers it.
  gather = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(pool.mesh, P()))
  found = bool(
    _sharding.pool_gathers(gather.lower(s_lp).compile().as_text(), n_pad)
  )
  # The last row certain for every sample but disagreeing across samples:
  # the highest BALD score; its padding copy ties with it.
  best = np.asarray(
    np.log(np.eye(C)[np.arange(K) % C] * 0.98 + 0.02 / C), np.float32
  )
  last_best = np.asarray(lp).copy()
  last_best[N - 1] = best
  (padded,) = alfx.shard_pool(last_best).arrays
  picks_padding = bool(
    np.any(np.asarray(alfx.topk_bald(padded, 2).indices) >= N)
  )
  return dict(
    detector_finds_gather=found, mask_none_picks_padding=picks_padding
  )


def check_bait_state(emb, probs, labeled, mask):
  """BAIT's per-point state stays split (P('pool'), 51 rows a device) and
  equals the single-device state; F with in_pool equals the unpadded F.

  The state is internal: `_bait._bait.core` (the undecorated core of its
  `pool_core`) returns it with ``with_state=True``; run here under our own
  ``shard_map`` whose ``out_specs`` keep the per-point state split, as
  `bait` runs it on a sharded pool.
  """
  pool = alfx.shard_pool(emb, probs, labeled, mask)
  s_emb, s_probs, s_labeled, s_mask = pool.arrays
  per_point = ("u", "w", "u0", "w0")
  core = _bait._bait.core
  chunk_size = None  # the default: bait's own chunking
  out = {}
  for fisher, method, capacity in (
    ("full", "dense", None),
    ("full", "structured", 32),
    ("topc", "structured", 32),
  ):
    top_c = 2 if fisher == "topc" else 1
    static = dict(
      batch_size=B,
      kind=fisher,
      top_c=top_c,
      oversample=2,
      method=method,
      chunk_size=chunk_size,
      capacity=capacity,
      with_state=True,
    )
    stats = alfx.pool_fisher(
      emb, probs, fisher=fisher, top_c=top_c, method=method
    )
    s_stats = alfx.pool_fisher(
      s_emb,
      s_probs,
      fisher=fisher,
      top_c=top_c,
      method=method,
      in_pool=pool.in_pool,
    )
    field = "quad" if fisher == "topc" else "blocks"
    want, got = getattr(stats, field), getattr(s_stats, field)
    # As bait passes them: F replicated without its per-point quad, which
    # travels with the pool.
    rep = dataclasses.replace(stats, quad=None)
    s_rep = dataclasses.replace(s_stats, quad=None)
    _, state = jax.jit(
      lambda e, p, l, m, f, q: core(e, p, l, m, 1.0, f, None, q, **static)
    )(emb, probs, labeled, mask, rep, stats.quad)
    specs = {k: P("pool") if k in per_point else P() for k in state}
    split = P("pool")
    quad_spec = None if s_stats.quad is None else split
    run = jax.jit(
      jax.shard_map(
        lambda e, p, l, m, f, ip, q: core(
          e, p, l, m, 1.0, f, ip, q, axis_name="pool", **static
        ),
        mesh=pool.mesh,
        in_specs=(split,) * 4 + (P(), split, quad_spec),
        out_specs=(P(), specs),
        check_vma=False,
      )
    )
    _, s_state = run(
      s_emb, s_probs, s_labeled, s_mask, s_rep, pool.in_pool, s_stats.quad
    )
    out[f"{fisher}_{method}"] = dict(
      fisher_field=field,
      fisher_diff=(
        rel_diff(want, got)
        if field == "quad"
        else float(jnp.max(jnp.abs(want - got)) / jnp.max(jnp.abs(want)))
      ),
      fisher_spec=spec_of(got),
      specs={k: spec_of(s_state[k]) for k in per_point},
      shard_rows=[
        int(s.data.shape[0]) for s in s_state["u"].addressable_shards
      ],
      u_diff=rel_diff(state["u"], s_state["u"]),
      w_diff=rel_diff(state["w"], s_state["w"]),
    )
  return out


def _mlp():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      h = nn.relu(nn.Dense(8)(x))
      h = nn.Dropout(0.3, deterministic=not train)(h)
      return nn.Dense(C, name="head")(h)

  return MLP()


def check_flax(x, sharded_x):
  """Each device predicts its own rows; outputs P('pool'); the
  single-device predictions (MC dropout included)."""
  model = _mlp()
  forward = alfx.linen_forward(model, train_kwargs={"train": True})
  x = jnp.asarray(x)
  # One compiled init (eager linen init dispatches op by op: seconds).
  params = jax.jit(jax.vmap(lambda k: model.init(k, x[:1])))(
    jax.random.split(jax.random.key(1), K)
  )
  one = jax.tree.map(lambda a: a[0], params)
  out = {}
  for name, predict in {
    "ensemble": lambda xs: alfx.ensemble_predictions(
      forward, params, xs, chunk_size=16
    ),
    "mc_dropout": lambda xs: alfx.mc_dropout_predictions(
      forward, one, xs, key=jax.random.key(2), num_samples=K, chunk_size=16
    ),
  }.items():
    single, split = predict(x), predict(sharded_x)
    # Equal predictions (to float32 rounding) give the same picks: the
    # acquisitions on sharded pools are the conformance rows.
    out[name] = dict(
      specs=[spec_of(a) for a in split],
      diff=max(rel_diff(a, b) for a, b in zip(single, split)),
    )
  return out


#: The per-point kernels no conformance row calls directly (the uncertainty
#: scores run in the strategy rows: top-B of the score of the sharded pool).
KERNELS = ("entropy", "bald")


def check_kernels(lp, sharded_lp):
  """Called directly on the sharded pool: the single-device values, the
  output still split over the pool axis."""
  out = {}
  for name in KERNELS:
    single = getattr(alfx, name)(jnp.asarray(lp))
    split = getattr(alfx, name)(sharded_lp)
    out[name] = dict(
      spec=spec_of(split)[:1],
      diff=float(np.max(np.abs(np.asarray(single) - host(split)[:N]))),
    )
  return out


def _global(x, n_pad):
  """The README recipe: each process holds a contiguous block of rows."""
  devices = jax.device_count()
  mesh = jax.make_mesh((devices,), ("pool",))
  rows = n_pad // jax.process_count()
  pad = n_pad - x.shape[0]
  if x.dtype == bool:
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], bool)])
  else:
    x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
  lo = jax.process_index() * rows
  return jax.make_array_from_process_local_data(
    NamedSharding(mesh, P("pool")), x[lo : lo + rows]
  )


#: The checks of each mode (the names test_conformance asks for).
CHECKS = {
  "devices4": ("shard_pool", "controls", "bait_state", "kernels", "flax"),
  "multiprocess": ("kernels", "flax"),
}


def run(mode, seed, wanted=None):
  """The checks ``wanted`` (default all of ``mode``'s); JSON-able results."""
  lp, emb, probs, labeled, mask, x = _inputs(seed)
  if mode == "devices4":
    pool_of = lambda a: alfx.shard_pool(a).arrays[0]
  else:
    n_pad = -(-N // jax.device_count()) * jax.device_count()
    pool_of = lambda a: _global(a, n_pad)
  checks = {
    "shard_pool": lambda: check_shard_pool(lp, emb, probs, labeled, mask),
    "controls": lambda: check_controls(lp),
    "bait_state": lambda: check_bait_state(emb, probs, labeled, mask),
    "kernels": lambda: check_kernels(lp, pool_of(lp)),
    "flax": lambda: check_flax(x, pool_of(x)),
  }
  wanted = CHECKS.get(mode, ()) if wanted is None else wanted
  return {
    name: _guard(checks[name])
    for name in wanted
    if name in CHECKS.get(mode, ())
  }

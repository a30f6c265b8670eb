"""Benchmark of the baselines: scores, stochastic/random batches, BADGE, CoreSet, TypiClust.

Shapes: the CIFAR-10 setting of the Fast-Fishing paper (N=50,000 pool
points, D=384 DINOv2-ViT-S/14 features, C=10 classes, B=10 per round; K=20
posterior samples for the scores) and a pool of N=1,000,000. Embeddings are a
synthetic Gaussian mixture (10 components, so that k-means has structure to
find), probabilities a softmax of random logits.

Each strategy is timed as a user's jitted active-learning loop runs it:
``jax.jit`` around the public call with the arrays as arguments (so the
concrete-input value checks, one extra pass over the inputs, are skipped).
Compiled time is the best of 3 runs after a compiling call; eager time is one
call under ``jax.disable_jit()`` (op by op); peak memory is the resident-set
growth during the compiled runs (harness.py); the floor is the roofline of
the FLOPs, transcendentals and bytes counted below, on this machine's
measured peaks.

Usage:
  python benchmarks/baselines.py           # everything (several minutes)
  python benchmarks/baselines.py --quick   # N=50,000 only, no eager runs
"""

import functools
import inspect
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

import alfx

# TypiClust's own k-means, to count the work of the clustering a key
# produces (benchmark-only; every timed call goes through the public API).
from alfx.baselines._kmeans import kmeans

D, C, B, K = 384, 10, 10, 20
F32 = 4


def make_data(n, *, with_log_probs, seed=0):
  """Embeddings [n, D] (10-component mixture), probs [n, C], log_probs [n, K, C]."""
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(seed), 5)
  centres = 3.0 * jax.random.normal(k1, (10, D))
  comp = jax.random.randint(k2, (n,), 0, 10)
  x = jax.jit(lambda c, z: c[comp] + z)(centres, jax.random.normal(k3, (n, D)))
  w = jax.random.normal(k4, (D, C)) / jnp.sqrt(D)
  probs = jax.nn.softmax(x @ w, axis=-1)
  log_probs = None
  if with_log_probs:
    log_probs = jax.jit(
      lambda l, e: jax.nn.log_softmax(l[:, None, :] + e, axis=-1)
    )(x @ w, jax.random.normal(k5, (n, K, C)))
  return jax.block_until_ready((x, probs, log_probs))


def measure(
  name,
  config,
  fn,
  args,
  *,
  flops=0.0,
  transcendentals=0.0,
  bytes_moved=0.0,
  eager=True,
  note="",
  repeats=3,
):
  compiled, first, peak = harness.time_compiled(fn, *args, repeats=repeats)
  eager_s = None
  if eager:
    eager_s = harness.time_eager(fn, *args)
  floor = harness.floor_seconds(flops, transcendentals, bytes_moved)
  row = {
    "strategy": name,
    "config": config,
    "compiled": harness.fmt_seconds(compiled),
    "first call": harness.fmt_seconds(first),
    "eager": harness.fmt_seconds(eager_s) if eager else "skipped",
    "peak mem": harness.fmt_bytes(peak),
    "GFLOP": f"{flops / 1e9:.2f}",
    "GB moved": f"{bytes_moved / 1e9:.2f}",
    "floor": harness.fmt_seconds(floor),
    "x floor": f"{compiled / floor:.1f}" if floor > 0 else "-",
    "note": note,
  }
  print(
    f"  {name} [{config}]: {row['compiled']} (floor {row['floor']},"
    f" eager {row['eager']}, peak {row['peak mem']})",
    flush=True,
  )
  return row


def score_rows(n, log_probs, eager):
  rows = []
  elems = n * K * C
  read = elems * F32
  for name, fn, trans in [
    ("predictive_entropy", alfx.predictive_entropy, elems),
    ("margin", alfx.margin, elems),
    ("least_confidence", alfx.least_confidence, elems),
    ("variation_ratios", alfx.variation_ratios, 0),
    ("mean_std", alfx.mean_std, elems),
  ]:
    # The score and its top-B selection, as one program.
    run = jax.jit(lambda lp, fn=fn: alfx.top_b(fn(lp), B))
    rows.append(
      measure(
        f"{name} + top_b",
        f"N={n:,} K={K} C={C}",
        run,
        (log_probs,),
        flops=3 * elems,
        transcendentals=trans,
        bytes_moved=read,
        eager=eager,
        note="exp of every log-prob" if trans else "argmax votes, no exp",
      )
    )
  return rows


def selection_rows(n, log_probs, eager):
  rows = []
  u = jax.block_until_ready(alfx.bald(log_probs))
  key = jax.random.key(0)
  mask = jnp.ones((n,), bool)
  for mode in ("power", "softmax", "softrank"):
    run = jax.jit(
      functools.partial(alfx.stochastic_batch, batch_size=B, mode=mode)
    )
    rows.append(
      measure(
        f"stochastic_batch({mode})",
        f"N={n:,}",
        lambda u, k, m, run=run: run(u, key=k, mask=m),
        (u, key, mask),
        flops=10 * n,
        transcendentals=3 * n,
        bytes_moved=3 * n * F32,
        eager=eager,
        note="Gumbel noise: 2 logs/point"
        + ("; full sort of the pool" if mode == "softrank" else ""),
      )
    )
  run = jax.jit(functools.partial(alfx.random_batch, batch_size=B))
  rows.append(
    measure(
      "random_batch",
      f"N={n:,}",
      lambda k, m: run(m, key=k, mask=m),
      (key, mask),
      flops=2 * n,
      bytes_moved=2 * n * F32,
      eager=eager,
      note="uniform noise + top-k",
    )
  )
  return rows


def badge_row(n, x, probs, eager):
  key = jax.random.key(1)
  mask = jnp.ones((n,), bool)
  run = jax.jit(functools.partial(alfx.badge, batch_size=B))
  # Per pick: a pass over h [N, D] and a [N, C] (two matvecs, the
  # factorised distance), plus Gumbel noise and log D^2 for the draw.
  return measure(
    "badge",
    f"N={n:,} D={D} C={C} B={B}",
    lambda x, p, k, m: run(x, p, key=k, mask=m),
    (x, probs, key, mask),
    flops=B * n * (2 * D + 2 * C + 10),
    transcendentals=3 * B * n,
    bytes_moved=B * n * (D + C) * F32,
    eager=eager,
    note="B passes over h and a; never [N, C*D]",
  )


def coreset_row(n, x, n_labeled, eager):
  labeled = jnp.zeros((n,), bool).at[:: n // n_labeled].set(True)
  labeled = labeled & (jnp.cumsum(labeled) <= n_labeled)
  run = jax.jit(functools.partial(alfx.coreset, batch_size=B))
  # Initial min-distances: an N x L matmul in tiles; then B passes over x.
  flops = 2 * n * n_labeled * D + 3 * B * n * D
  return measure(
    "coreset",
    f"N={n:,} D={D} L={n_labeled:,} B={B}",
    lambda x, l: run(x, labeled=l),
    (x, labeled),
    flops=flops,
    bytes_moved=(B + 1) * n * D * F32,
    eager=eager,
    note="N x L tiles, then B passes; never N x N",
  )


def typiclust_row(n, x, n_labeled, eager, max_candidates=None, repeats=3):
  labeled = jnp.zeros((n,), bool).at[:n_labeled].set(True)
  key = jax.random.key(2)
  kwargs = dict(batch_size=B, max_candidates=max_candidates)
  run = jax.jit(functools.partial(alfx.typiclust, **kwargs))
  # Count the work from the clustering this key produces (the same k-means
  # call as inside typiclust) and the clusters the picks come from.
  n_active = min(n_labeled + B, 500)
  # typiclust's defaults: chunk_size (kmeans's) and block_size.
  block_size = (
    inspect.signature(alfx.typiclust).parameters["block_size"].default
  )
  _, labels, iters = jax.jit(
    functools.partial(
      kmeans,
      max_clusters=500,
      max_iterations=100,
      tol=1e-4,
      block_size=min(block_size, 500),
    )
  )(x, jnp.ones((n,), bool), jnp.int32(n_active), jax.random.fold_in(key, 0))
  sel = run(x, labeled=labeled, key=key)
  sizes = jnp.bincount(labels, length=501)
  m = [int(sizes[labels[i]]) for i in sel.indices]
  rows_eval = [min(mi, max_candidates or mi) for mi in m]
  iters = int(iters)
  knn_flops = sum(2 * r * mi * D for r, mi in zip(rows_eval, m))
  flops = iters * 2 * n * n_active * D + knn_flops
  bytes_moved = (n_active + 2 * iters) * n * D * F32
  cap = f" max_candidates={max_candidates}" if max_candidates else ""
  return measure(
    "typiclust",
    f"N={n:,} D={D} L={n_labeled} B={B}{cap}",
    lambda x, l, k: run(x, labeled=l, key=k),
    (x, labeled, key),
    flops=flops,
    bytes_moved=bytes_moved,
    eager=eager,
    repeats=repeats,
    note=(
      f"{n_active} clusters, {iters} Lloyd iters"
      f" ({iters * 2 * n * n_active * D / 1e9:.0f} GFLOP),"
      f" kNN in picked clusters of ~{sum(m) // len(m):,} pts"
      f" ({knn_flops / 1e9:.0f} GFLOP)"
    ),
  )


def main():
  args = harness.script_args(
    __doc__.split("\n")[0], "baselines.md", "N=50,000 only, no eager runs"
  )

  started, load_start, machine = harness.start()
  rows = []

  n = 50_000
  print(f"N={n:,}", flush=True)
  x, probs, log_probs = make_data(n, with_log_probs=True)
  eager = not args.quick
  rows += score_rows(n, log_probs, eager)
  rows += selection_rows(n, log_probs, eager)
  rows.append(badge_row(n, x, probs, eager))
  rows.append(coreset_row(n, x, 10, eager))
  rows.append(coreset_row(n, x, 1_000, eager))
  rows.append(typiclust_row(n, x, 10, eager))
  if not args.quick:
    # The reference's cap: 500 clusters (L + B >= 500). Eager skipped: op
    # by op, 500-cluster Lloyd iterations take many minutes.
    rows.append(typiclust_row(n, x, 490, False, repeats=1))
  del x, probs, log_probs

  if not args.quick:
    n = 1_000_000
    print(
      f"N={n:,} (eager skipped: op-by-op dispatch over 1M rows takes"
      " minutes per strategy)",
      flush=True,
    )
    x, probs, log_probs = make_data(n, with_log_probs=True)
    rows += score_rows(n, log_probs, False)
    rows += selection_rows(n, log_probs, False)
    del log_probs
    rows.append(badge_row(n, x, probs, False))
    rows.append(coreset_row(n, x, 1_000, False))
    # Minutes per call: timed once after the compiling call.
    rows.append(typiclust_row(n, x, 10, False, max_candidates=4096, repeats=1))
    del x, probs

  columns = ["strategy", "config", *harness.TIME_COLUMNS, "note"]
  table = harness.print_table(rows, columns)
  command = f"python benchmarks/baselines.py{' --quick' if args.quick else ''}"
  head = harness.report_head(
    "Baselines benchmark", machine, load_start, command, started
  )
  harness.write_page(args.out, [*head, table, ""])


if __name__ == "__main__":
  main()

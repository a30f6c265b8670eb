"""Benchmark of BAIT and its Fast-Fishing approximations (issue 4).

Shapes: CIFAR-10 (N=50,000, D=384, C=10, L=100 labelled, B=10) for full,
topc (c=2), binary and diagonal; CIFAR-100 (C=100) for topc and binary;
ImageNet (N=1,200,000, D=384, C=1,000) for binary; full and topc at C=100
with N=5,000. Random embeddings (standard normal) and logits (2 * standard
normal), softmaxed; the labelled set is 100 random points.

Each configuration is timed as a user's jitted active-learning loop runs it:
``jax.jit`` around ``alfx.bait`` with the arrays as arguments (the
concrete-input value checks, one cheap pass over the inputs, are skipped) and
``pool_fisher`` computed inside (column ``compiled``); ``F given`` is the same
call with ``alfx.pool_fisher`` precomputed once per model and passed in (its
own time in ``pool_fisher``). Compiled time is the best of a few runs after a
compiling call; eager time is one call under ``jax.disable_jit()`` (op by op);
peak memory is the resident-set growth during the compiled runs, inputs
excluded (harness.py). The floor is the roofline of the FLOPs and bytes
counted in `count` (the FLOPs this algorithm executes: block products of
symmetric ``D x D`` matrices at ``(nb + 1) / (2 nb)`` of the full product
with ``nb = D / 64`` block rows) on this machine's measured peaks.

Usage:
  python benchmarks/bait.py            # everything (ImageNet needs ~12 GB)
  python benchmarks/bait.py --quick    # CIFAR-10 shape at N=5,000 only
  python benchmarks/bait.py --only cifar10-full imagenet-binary
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

import alfx

F32 = 4
L = 100
B = 10
CAPACITY = 128  # static bound on the labelled set (structured path, jit)
RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "results", "bait.md"
)

# name: (fisher, N, D, C, eager?)
CONFIGS = {
  "cifar10-full": ("full", 50_000, 384, 10, True),
  "cifar10-topc": ("topc", 50_000, 384, 10, True),
  "cifar10-binary": ("binary", 50_000, 384, 10, True),
  "cifar10-diagonal": ("diagonal", 50_000, 384, 10, True),
  "cifar100-topc": ("topc", 50_000, 384, 100, False),
  "cifar100-binary": ("binary", 50_000, 384, 100, True),
  "c100-n5000-full": ("full", 5_000, 384, 100, False),
  "c100-n5000-topc": ("topc", 5_000, 384, 100, True),
  "imagenet-binary": ("binary", 1_200_000, 384, 1_000, False),
}
QUICK = {
  "quick-cifar10-full": ("full", 5_000, 384, 10, True),
  "quick-cifar10-topc": ("topc", 5_000, 384, 10, True),
  "quick-cifar10-binary": ("binary", 5_000, 384, 10, True),
  "quick-cifar10-diagonal": ("diagonal", 5_000, 384, 10, True),
}


def make_inputs(n, dim, c, seed=0):
  """Embeddings [n, dim], probs [n, c] (made in chunks), labelled mask."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  emb = jax.random.normal(k1, (n, dim), jnp.float32)
  rows = max(1, min(n, (1 << 26) // c))

  @jax.jit
  def probs_fn(key):
    def one(i):
      logits = 2.0 * jax.random.normal(jax.random.fold_in(key, i), (rows, c))
      return jax.nn.softmax(logits, axis=-1)

    n_chunks = -(-n // rows)
    return jax.lax.map(one, jnp.arange(n_chunks)).reshape(-1, c)[:n]

  probs = probs_fn(k2)
  labeled = (
    jnp.zeros((n,), bool)
    .at[jax.random.choice(k3, n, (L,), replace=False)]
    .set(True)
  )
  return jax.block_until_ready((emb, probs, labeled))


def count(kind, method, n, dim, c, top_c=2, oversample=2, b=B, lab=L):
  """(FLOPs, bytes, divisions) of one `alfx.bait` call with `pool_fisher`."""
  nb = max(1, round(dim / 64))
  sym = (nb + 1) / (2 * nb)  # block products of symmetric D x D matrices
  steps = oversample * b
  h_bytes = n * dim * F32
  if method == "diagonal":
    fisher = 2 * n * c * dim
    step = 5 * n * c * dim  # x and F/M x/(M + x): mul, mul, add, mul, add
    flops = 2 * fisher + steps * step
    bytes_ = 2 * h_bytes + steps * n * (c + dim) * F32
    # One division per element and step, counted at the measured x log x
    # rate (the division runs on the same vector units, at a similar rate).
    return flops, bytes_, steps * n * c * dim
  # The dense path drops the class null space 1_C of full/topc: C_f = C - 1.
  c_f = 1 if kind == "binary" else (c - 1 if method == "dense" else c)
  r = {"full": c, "topc": top_c, "binary": 1}[kind]
  d = c_f * dim
  t_c = c_f * (c_f + 1) // 2
  per_step = (
    4 * n * dim * c_f * r  # X_n^T [Z | Y]
    + 4 * n * c_f * r * r  # contraction with A_n
    + 10 * n * r * r
    + 2 * n * r**3
  )  # updates, r x r solves
  if method == "dense":
    setup = (
      2 * n * t_c * dim**2 * sym  # F
      + 2 * lab * t_c * dim**2 * sym  # labelled M
      + 2 * d**3  # LU inverse
      + 4 * d**3  # G = M^-1 F M^-1
      + 4 * n * t_c * dim**2 * sym  # block quadratic forms of M^-1, G
      + 4 * n * c_f * r * (c_f + r)
    )  # U_n, W_n
    per_step += 4 * d * d + 8 * steps * d * r * r
    bytes_ = (
      3 * h_bytes
      + 4 * d * d * F32  # F, quad pass; M^-1, G
      + steps * (h_bytes + 4 * n * r * r * F32)
    )
    return setup + steps * per_step, bytes_, 0
  # Structured (C = 100 shapes).
  cap = CAPACITY
  k_at = 1 if kind == "full" else top_c
  big_r = cap * k_at
  setup = (
    4 * n * dim * c * big_r  # F Ek
    + 2 * n * dim * c * big_r  # X_n^T K^-1 F Ek
    + 2 * n * big_r * big_r * r
    + 4 * n * c * big_r * r
  )
  per_step += 2 * n * dim * c * r + 4 * c * dim * dim * r + 4 * d * big_r * r
  if kind == "full":
    setup += (
      2 * n * n * c * dim
      + 4 * n * n * c * r  # the N^2 term
      + 2 * n * dim * c * big_r  # Ek^T X_n
      + 4 * n * c * dim * dim  # h^T K_a^-1 h, h^T K^-1 Fb K^-1 h
      + 2 * n * c * dim**2 * sym
      + 6 * c * dim**3
    )  # Fb, K^-1
  else:
    setup += (
      2 * n * n * dim
      + 2 * n * n * top_c * c * top_c  # pool quad
      + 2 * n * n * top_c**3
      + 2 * n * dim * cap
    )
  bytes_ = 4 * h_bytes + steps * (h_bytes + 4 * n * r * r * F32)
  return setup + steps * per_step, bytes_, 0


def run_config(name, kind, n, dim, c, eager, with_eager):
  print(
    f"\n== {name}: fisher={kind}, N={n}, D={dim}, C={c}, L={L}, B={B}",
    flush=True,
  )
  emb, probs, labeled = make_inputs(n, dim, c)
  # The path method='auto' takes: PoolFisher.method (static), read off the
  # traced output types (nothing is computed).
  pool_fisher = functools.partial(alfx.pool_fisher, fisher=kind)
  method = jax.eval_shape(pool_fisher, emb, probs).method
  capacity = CAPACITY if method == "structured" else None
  fn = jax.jit(
    lambda e, p, l: alfx.bait(
      e, p, B, labeled=l, fisher=kind, labeled_capacity=capacity
    )
  )
  stats_fn = jax.jit(pool_fisher)
  given_fn = jax.jit(
    lambda e, p, l, s: alfx.bait(
      e, p, B, labeled=l, fisher=kind, pool_fisher=s, labeled_capacity=capacity
    )
  )
  repeats = 1 if n * c > 20_000_000 or method == "structured" else 3
  best, first, peak = harness.time_compiled(
    fn, emb, probs, labeled, repeats=repeats
  )
  sel = fn(emb, probs, labeled)
  stats_t, _, _ = harness.time_compiled(stats_fn, emb, probs, repeats=repeats)
  stats = stats_fn(emb, probs)
  given_t, _, _ = harness.time_compiled(
    given_fn, emb, probs, labeled, stats, repeats=repeats
  )
  eager_t = None
  if with_eager and eager:
    eager_t = harness.time_eager(fn, emb, probs, labeled)
  flops, bytes_, divisions = count(kind, method, n, dim, c)
  floor = harness.floor_seconds(
    flops=flops, transcendentals=divisions, bytes_moved=bytes_
  )
  row = {
    "config": name,
    "fisher": kind,
    "method": method,
    "N x D x C": f"{n} x {dim} x {c}",
    "compiled": harness.fmt_seconds(best),
    "first call": harness.fmt_seconds(first),
    "pool_fisher": harness.fmt_seconds(stats_t),
    "F given": harness.fmt_seconds(given_t),
    "eager": harness.fmt_seconds(eager_t)
    if eager_t
    else ("skipped" if with_eager else "-"),
    "peak mem": harness.fmt_bytes(peak),
    "GFLOP": f"{flops / 1e9:.0f}",
    "GB": f"{bytes_ / 1e9:.1f}",
    "floor": harness.fmt_seconds(floor),
    "ratio": f"{best / floor:.2f}",
  }
  print(row, flush=True)
  print(
    "picks",
    np.asarray(sel.indices),
    "valid",
    bool(np.all(sel.valid)),
    flush=True,
  )
  return row


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-eager", action="store_true")
  parser.add_argument("--only", nargs="*")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  configs = QUICK if args.quick else CONFIGS
  if args.only:
    configs = {k: v for k, v in {**CONFIGS, **QUICK}.items() if k in args.only}
  print(harness.machine_description(), flush=True)
  rows = [
    run_config(name, *spec, with_eager=not args.no_eager)
    for name, spec in configs.items()
  ]
  columns = [
    "config",
    "fisher",
    "method",
    "N x D x C",
    "compiled",
    "first call",
    "pool_fisher",
    "F given",
    "eager",
    "peak mem",
    "GFLOP",
    "GB",
    "floor",
    "ratio",
  ]
  table = harness.print_table(rows, columns)
  out = args.out or (None if args.only or args.quick else RESULTS)
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
      f.write(f"Machine: {harness.machine_description()}\n\n{table}\n")


if __name__ == "__main__":
  main()

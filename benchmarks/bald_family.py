"""Benchmark of the BALD family: top-k BALD, 2-/3-BALD, BatchBALD.

Shapes (issue 3): N in {10,000, 60,000} pool points, K in {20, 100}
posterior samples, C = 10 classes, batch B in {5, 10}; BatchBALD with its
default ``num_configurations`` (10,000: exact up to 4 picked points at C = 10,
sampled afterwards). Predictions are MC-dropout-like: a per-point logit mean
plus per-sample noise, log-softmaxed.

Each method is timed as a user's jitted active-learning loop runs it:
``jax.jit`` around the public call with the arrays as arguments (so the
concrete-input value checks, one extra pass over the inputs, are skipped).
Compiled time is the best of up to 3 runs after a compiling call; eager time
is one call under ``jax.disable_jit()`` (op by op); peak memory is the
resident-set growth during the compiled runs (harness.py). The floor is the
roofline of the FLOPs, transcendentals (logs and exps) and bytes counted
below on this machine's measured peaks (``max`` of the three, harness.py);
``floor+`` adds the FLOP and transcendental times instead (on a CPU both run
on the same vector units, so they do not overlap), the more honest bound for
the entropy-heavy kernels.

Also: the k-BALD paper's Table 1 (BatchBALD against 2-BALD at acquisition
sizes 5 and 10, MNIST-sized pool), one sampled BatchBALD step with 100,000
configurations, and the dynamic-size methods.

Usage:
  python benchmarks/bald_family.py           # everything (about 20 minutes)
  python benchmarks/bald_family.py --quick   # N=10,000, K=20 only
"""

import argparse
import inspect
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

import alfx

# The work model (the floors) mirrors the implementation: how the table
# kernel tiles the pool (how often the probabilities are re-read) and where
# BatchBALD starts sampling. Benchmark-only reads of a private module; every
# timed call goes through the public API.
from alfx.bald_family._batchbald import DEFAULT_CHUNK_SIZE
from alfx.bald_family._batchbald import exact_steps
from alfx.bald_family._batchbald import tiling

C = 10
F32 = 4
#: `alfx.batchbald`'s default number of configurations.
NUM_CONFIGURATIONS = (
  inspect.signature(alfx.batchbald).parameters["num_configurations"].default
)
RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "results", "bald_family.md"
)


def make_log_probs(n, k, c=C, seed=0):
  """MC-dropout-like predictions: logits = mean[n] + noise[n, k]."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  mean = 3.0 * jax.random.normal(k1, (n, 1, c))
  spread = jax.random.uniform(k2, (n, 1, 1), minval=0.2, maxval=3.0)
  noise = jax.random.normal(k3, (n, k, c))
  return jax.block_until_ready(
    jax.jit(lambda m, s, e: jax.nn.log_softmax(m + s * e, axis=-1))(
      mean, spread, noise
    )
  )


# --------------------------------------------------------------------------
# Work counts: (flops, transcendentals, bytes) of each method as implemented.


def setup_work(n, k, c):
  """Entropies of every point and the transposed probabilities."""
  nkc = n * k * c
  return (4 * nkc, 3 * nkc + n * c, 3 * nkc * F32)


def table_work(n, k, c, rows, chunk_size=DEFAULT_CHUNK_SIZE):
  """One `table_entropy` call: candidates against an R-row table."""
  _, row_block = tiling(n, c, rows, chunk_size)
  n_blocks = -(-rows // row_block)
  return (
    2 * rows * k * c * n + 3 * rows * c * n,
    rows * c * n,
    n_blocks * n * k * c * F32 + rows * k * F32,
  )


def add_work(*works):
  return tuple(sum(w[i] for w in works) for i in range(3))


def work_topk(n, k, c, b):
  del b
  return setup_work(n, k, c)


def work_kbald(n, k, c, b, order):
  works = [setup_work(n, k, c)]
  for t in range(1, b):
    for u in range(1, min(order, b)):
      count = math.comb(t - 1, u - 1)
      if count:
        works.append(table_work(n, k, c, count * c**u))
  return add_work(*works)


def work_batchbald(n, k, c, b, num_configurations=NUM_CONFIGURATIONS):
  works = [setup_work(n, k, c)]
  n_exact = exact_steps(c, num_configurations, b)
  for s in range(1, b):
    works.append(
      table_work(n, k, c, c**s if s < n_exact else num_configurations)
    )
  if n_exact < b:  # sampled labels and table updates
    works.append(
      (
        0,
        (b - 1) * num_configurations * c,
        (b - 1) * 3 * num_configurations * k * F32,
      )
    )
  return add_work(*works)


# --------------------------------------------------------------------------


def floors(work):
  flops, trans, bytes_moved = work
  p = harness.machine_peaks()
  return (
    harness.floor_seconds(flops, trans, bytes_moved),
    max(
      flops / p["flops"] + trans / p["transcendentals"],
      bytes_moved / p["bandwidth"],
    ),
  )


def xla_temp_bytes(fn, *args):
  """Temporary buffers of the compiled program (XLA's own accounting).

  The resident-set growth of `harness.time_compiled` misses memory that the
  warm-up call already took from the OS and the allocator kept; this is the
  exact size of the program's temporaries, inputs and outputs excluded.
  """
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def measure(
  rows, method, config, fn, args, work, *, eager=True, repeats=3, note=""
):
  compiled, first, peak = harness.time_compiled(fn, *args, repeats=repeats)
  temp = xla_temp_bytes(fn, *args)
  eager_s = harness.time_eager(fn, *args) if eager else None
  floor, floor_sum = floors(work)
  flops, trans, bytes_moved = work
  row = {
    "method": method,
    "config": config,
    "compiled": harness.fmt_seconds(compiled),
    "eager": harness.fmt_seconds(eager_s) if eager else "skipped",
    "compile+run": harness.fmt_seconds(first),
    "peak mem": harness.fmt_bytes(peak),
    "XLA temp": harness.fmt_bytes(temp),
    "GFLOP": f"{flops / 1e9:.1f}",
    "G logs": f"{trans / 1e9:.2f}",
    "GB": f"{bytes_moved / 1e9:.2f}",
    "floor": harness.fmt_seconds(floor),
    "floor+": harness.fmt_seconds(floor_sum),
    "ratio": f"{compiled / floor:.1f}",
    "ratio+": f"{compiled / floor_sum:.2f}",
    "note": note,
  }
  rows.append(row)
  print(
    f"  {method:10s} {config:28s} compiled {row['compiled']:>9s}  eager"
    f" {row['eager']:>9s}  floor {row['floor']:>9s} floor+"
    f" {row['floor+']:>9s}  mem {row['peak mem']} temp {row['XLA temp']}",
    flush=True,
  )
  return compiled


COLUMNS = [
  "method",
  "config",
  "compiled",
  "eager",
  "peak mem",
  "XLA temp",
  "GFLOP",
  "G logs",
  "GB",
  "floor",
  "ratio",
  "floor+",
  "ratio+",
  "note",
]


def grid(quick, rows):
  ns = (10_000,) if quick else (10_000, 60_000)
  ks = (20,) if quick else (20, 100)
  times = {}
  for n in ns:
    for k in ks:
      lp = make_log_probs(n, k)
      for b in (5, 10):
        config = f"N={n} K={k} C={C} B={b}"
        big = n * k >= 6_000_000  # eager op-by-op takes minutes there
        fns = {
          "top-k BALD": (
            jax.jit(lambda x, b=b: alfx.topk_bald(x, b)),
            work_topk(n, k, C, b),
          ),
          "2-BALD": (
            jax.jit(lambda x, b=b: alfx.kbald(x, b, order=2)),
            work_kbald(n, k, C, b, 2),
          ),
          "3-BALD": (
            jax.jit(lambda x, b=b: alfx.kbald(x, b, order=3)),
            work_kbald(n, k, C, b, 3),
          ),
          "BatchBALD": (
            jax.jit(lambda x, key, b=b: alfx.batchbald(x, b, key=key)),
            work_batchbald(n, k, C, b),
          ),
        }
        for method, (fn, work) in fns.items():
          args = (lp, jax.random.key(0)) if method == "BatchBALD" else (lp,)
          slow = floors(work)[1] > 4
          eager = (
            not quick and not (method != "top-k BALD" and big) and not slow
          )
          times[(method, n, k, b)] = measure(
            rows,
            method,
            config,
            fn,
            args,
            work,
            eager=eager,
            repeats=1 if slow else 3,
            note="" if eager else "eager skipped (minutes op by op)",
          )
      del lp
  return times


def targets(rows):
  """Only the issue's target rows (a few minutes; for a quiet re-check)."""
  for method, n, k, b in (
    ("BatchBALD", 10_000, 20, 5),
    ("2-BALD", 60_000, 100, 10),
  ):
    lp = make_log_probs(n, k)
    if method == "BatchBALD":
      fn = jax.jit(lambda x, key: alfx.batchbald(x, b, key=key))
      args, work = (lp, jax.random.key(0)), work_batchbald(n, k, C, b)
    else:
      fn = jax.jit(lambda x: alfx.kbald(x, b, order=2))
      args, work = (lp,), work_kbald(n, k, C, b, 2)
    measure(
      rows,
      method,
      f"N={n} K={k} C={C} B={b}",
      fn,
      args,
      work,
      eager=False,
      repeats=3,
      note="eager not run (--targets)",
    )
    del lp


def sampled_step(rows):
  """One BatchBALD step against 100,000 sampled configurations."""
  n, k, m = 2_000, 20, 100_000
  lp = make_log_probs(n, k)
  # C**5 = 100,000 rows at step 5 (exact), step 6 is the first sampled one:
  # the difference of B = 7 and B = 6 is one sampled step (draws included).
  t = {}
  for b in (6, 7):
    fn = jax.jit(
      lambda x, key, b=b: alfx.batchbald(x, b, num_configurations=m, key=key)
    )
    t[b], _, peak = harness.time_compiled(fn, lp, jax.random.key(0))
  temp = xla_temp_bytes(fn, lp, jax.random.key(0))
  step = t[7] - t[6]
  work = add_work(table_work(n, k, C, m), (0, m * C, 3 * m * k * F32))
  floor, floor_sum = floors(work)
  rows.append(
    {
      "method": "BatchBALD step",
      "config": f"N={n} K={k} M={m} sampled",
      "compiled": harness.fmt_seconds(step),
      "eager": "-",
      "peak mem": harness.fmt_bytes(peak),
      "XLA temp": harness.fmt_bytes(temp),
      "GFLOP": f"{work[0] / 1e9:.1f}",
      "G logs": f"{work[1] / 1e9:.2f}",
      "GB": f"{work[2] / 1e9:.2f}",
      "floor": harness.fmt_seconds(floor),
      "ratio": f"{step / floor:.1f}",
      "floor+": harness.fmt_seconds(floor_sum),
      "ratio+": f"{step / floor_sum:.2f}",
      "note": f"B=7 minus B=6 ({harness.fmt_seconds(t[7])} -"
      f" {harness.fmt_seconds(t[6])}); peak mem of B=7",
    }
  )
  print(
    f"  sampled step: {harness.fmt_seconds(step)} (floor"
    f" {harness.fmt_seconds(floor)}, floor+"
    f" {harness.fmt_seconds(floor_sum)}), peak {harness.fmt_bytes(peak)}",
    flush=True,
  )


def dynamic_methods(rows, quick):
  n, k = (10_000, 20) if quick else (60_000, 100)
  lp = make_log_probs(n, k)
  for name, fn in [
    (
      "kbald_dynamic",
      jax.jit(lambda x: alfx.kbald_dynamic(x, 10, tolerance=0.1)),
    ),
    (
      "conservative",
      jax.jit(
        lambda x: alfx.conservative_bald(x, 10, threshold=0.05, budget=0.5)
      ),
    ),
  ]:
    compiled, _, peak = harness.time_compiled(fn, lp)
    size = int(jnp.sum(fn(lp).valid))
    rows.append(
      {
        "method": name,
        "config": f"N={n} K={k} C={C} B<=10",
        "compiled": harness.fmt_seconds(compiled),
        "eager": "-",
        "peak mem": harness.fmt_bytes(peak),
        "XLA temp": harness.fmt_bytes(xla_temp_bytes(fn, lp)),
        "note": f"picked {size} (data-dependent)",
      }
    )
    print(
      f"  {name}: {harness.fmt_seconds(compiled)}, picked {size}", flush=True
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="N=10,000, K=20 only, no eager runs"
  )
  parser.add_argument(
    "--targets", action="store_true", help="only the issue's target rows"
  )
  args = parser.parse_args()
  started, load_start, machine = harness.start()
  rows = []
  if args.targets:
    targets(rows)
    sampled_step(rows)
  else:
    times = grid(args.quick, rows)
    sampled_step(rows)
    dynamic_methods(rows, args.quick)
  command = (
    "python benchmarks/bald_family.py"
    f"{' --quick' if args.quick else ''}"
    f"{' --targets' if args.targets else ''}"
  )
  out = [
    *harness.report_head(
      "BALD family benchmark", machine, load_start, command, started
    ),
    harness.print_table(rows, COLUMNS),
    "",
  ]
  if not (args.quick or args.targets):
    paper = {
      ("BatchBALD", 5): "1 min",
      ("BatchBALD", 10): "30 min",
      ("2-BALD", 5): "1 min",
      ("2-BALD", 10): "2 min",
    }
    table1 = [
      {
        "method": m,
        "acq. size": str(b),
        "alfx (this CPU)": harness.fmt_seconds(times[(m, 60_000, 100, b)]),
        "k-BALD paper (RTX 2080 Super)": paper[(m, b)],
      }
      for m in ("BatchBALD", "2-BALD")
      for b in (5, 10)
    ]
    print("\nk-BALD paper, Table 1 (N=60,000, K=100, C=10):")
    out += [
      "## k-BALD paper, Table 1 (MNIST-sized: N=60,000, K=100, C=10)",
      "",
      harness.print_table(table1, list(table1[0])),
      "",
    ]
  path = RESULTS.replace(".md", "_quick.md") if args.quick else RESULTS
  path = RESULTS.replace(".md", "_targets.md") if args.targets else path
  harness.write_page(path, out)


if __name__ == "__main__":
  main()

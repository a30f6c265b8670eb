"""Benchmark of the value checks: a public call on concrete input against its jitted core.

A public acquisition called on concrete arrays first checks their values
(NaN, normalisation, enough selectable points) in one fused jitted reduction
and one small host transfer, then runs its jitted core. Under the caller's
``jax.jit`` the checks cannot run and are skipped, so ``jax.jit`` of the same
call times the core alone (plus the NaN guard every core carries under
``jit``). The ratio public / jitted is the cost of the checks and of the
per-call Python dispatch; the target is at most ~1.5 at N=60,000.

Each row alternates the two calls (best of ``--repeats`` rounds), so that a
change of the machine's load affects both alike; the load average is
printed with the table. ``recompiles`` counts the programs compiled by the
timed calls after the warm-up (must be 0: nothing recompiles per call).

Usage:
  python benchmarks/checks.py            # N=60,000 (about a minute)
  python benchmarks/checks.py --quick    # N=6,000
"""

import argparse
import logging
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bald_family
import harness

import alfx

C, B = 10, 10


def calls():
  """(name, K, fn of log_probs) for every measured acquisition."""
  key = jax.random.key(1)
  return [
    (
      "top_b(predictive_entropy)",
      1,
      lambda lp: alfx.top_b(alfx.predictive_entropy(lp), B),
    ),
    (
      "top_b(predictive_entropy)",
      20,
      lambda lp: alfx.top_b(alfx.predictive_entropy(lp), B),
    ),
    ("topk_bald", 20, lambda lp: alfx.topk_bald(lp, B)),
    ("top_b(bald)", 20, lambda lp: alfx.top_b(alfx.bald(lp), B)),
    ("top_b(margin)", 20, lambda lp: alfx.top_b(alfx.margin(lp), B)),
    (
      "stochastic_batch(predictive_entropy)",
      20,
      lambda lp: alfx.stochastic_batch(alfx.predictive_entropy(lp), B, key=key),
    ),
  ]


class _CompileCounter(logging.Handler):
  def __init__(self):
    super().__init__()
    self.count = 0

  def emit(self, record):
    if "Compiling" in record.getMessage():
      self.count += 1


def _once(fn, x) -> float:
  t0 = time.perf_counter()
  harness.block(fn(x))
  return time.perf_counter() - t0


def measure(name, n, k, fn, repeats):
  lp = bald_family.make_log_probs(n, k, C)
  jitted = jax.jit(fn)
  harness.block(fn(lp))  # compiles the checks and the cores
  harness.block(jitted(lp))
  counter = _CompileCounter()
  logger = logging.getLogger("jax")
  logger.addHandler(counter)
  best_public = best_jit = float("inf")
  try:
    with jax.log_compiles(True):
      for _ in range(repeats):
        best_public = min(best_public, _once(fn, lp))
        best_jit = min(best_jit, _once(jitted, lp))
  finally:
    logger.removeHandler(counter)
  return {
    "acquisition": name,
    "N x K x C": f"{n} x {k} x {C}",
    "public": harness.fmt_seconds(best_public),
    "jitted": harness.fmt_seconds(best_jit),
    "ratio": f"{best_public / best_jit:.2f}",
    "overhead": harness.fmt_seconds(best_public - best_jit),
    "recompiles": counter.count,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N=6,000")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--out", default=None, help="write the table here")
  args = parser.parse_args()
  n = 6_000 if args.quick else 60_000
  print(harness.machine_description(), flush=True)
  load = os.getloadavg()
  rows = [measure(name, n, k, fn, args.repeats) for name, k, fn in calls()]
  load_after = os.getloadavg()
  columns = [
    "acquisition",
    "N x K x C",
    "public",
    "jitted",
    "ratio",
    "overhead",
    "recompiles",
  ]
  table = harness.print_table(rows, columns)
  loads = (
    f"load average (1 min) {load[0]:.1f} before, {load_after[0]:.1f} after"
  )
  print(loads)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"Machine: {harness.machine_description()}; {loads}\n\n")
      f.write(table + "\n")


if __name__ == "__main__":
  main()

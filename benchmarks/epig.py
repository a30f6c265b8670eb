"""Benchmark of EPIG, BatchEPIG, 2-EPIG and PowerEPIG.

Shapes (issue 16): N = 10,000 pool points, M in {100, 1,000} target inputs,
K = 20 posterior samples, C = 10 classes, batch B = 10. Predictions are
MC-dropout-like (a per-point logit mean plus per-sample noise,
log-softmaxed; `bald_family.make_log_probs`); the targets are drawn the same
way with another seed.

Each method is timed as a user's jitted active-learning loop runs it:
``jax.jit`` around the public call with the arrays as arguments. Compiled
time is the best of up to 3 runs after a compiling call ("compile+run" is
that first call); eager time is one call under ``jax.disable_jit()`` (op by
op); peak memory is the resident-set growth during the compiled runs and
"XLA temp" the compiled program's temporaries (harness.py,
bald_family.py). The floor is the roofline of the FLOPs, logarithms and
bytes counted below on this machine's measured peaks; ``floor+`` adds the
FLOP and logarithm times (on a CPU both run on the same vector units).

Work of the table kernel on R rows: ``2 R K C N`` FLOPs, ``R C N`` logs.
EPIG is one kernel call on ``R = M C`` rows; a BatchEPIG step ``s`` on
``C**s (1 + M C)`` rows while exact (``M C**(s+1) <= 10,000``) and on
``2 * 10,000`` sampled rows after; a 2-EPIG step on ``C (1 + M C)`` rows.

Usage:
  python benchmarks/epig.py           # both M for every method, eager runs
  python benchmarks/epig.py --quick   # no eager runs of the scans; the
                                      # scans at M = 100 only
"""

import argparse
import inspect
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bald_family
import harness

import alfx

# The work model counts BatchEPIG's exact steps as the implementation does
# (benchmark-only; every timed call goes through the public API).
from alfx.bald_family._batch_epig import exact_steps

N, K, C, B = 10_000, 20, 10, 10
R = inspect.signature(alfx.batch_epig).parameters["num_configurations"].default
RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "results", "epig.md"
)

epig, batch_epig, kepig = alfx.epig, alfx.batch_epig, alfx.kepig
stochastic_batch = alfx.stochastic_batch


# --------------------------------------------------------------------------
# Work counts: (flops, logs, bytes) as implemented.


def work_epig(n, k, c, m):
  return bald_family.add_work(
    bald_family.setup_work(n, k, c), bald_family.table_work(n, k, c, m * c)
  )


def work_batch_epig(n, k, c, m, b, r=R):
  works = [work_epig(n, k, c, m)]
  n_exact = exact_steps(c, m, r, b)
  for s in range(1, b):
    rows = c**s * (1 + m * c) if s < n_exact else 2 * r
    works.append(bald_family.table_work(n, k, c, rows))
  if n_exact < b:  # sampled labels, target rows and table updates
    works.append((0, (b - 1) * r * c + r * c, (b - 1) * 5 * r * k * 4))
  return bald_family.add_work(*works)


def work_kepig2(n, k, c, m, b):
  works = [work_epig(n, k, c, m)]
  for _ in range(1, b):
    works.append(bald_family.table_work(n, k, c, c * (1 + m * c)))
  return bald_family.add_work(*works)


# bald_family's columns, with the first call's compile and run beside them.
COLUMNS = bald_family.COLUMNS[:4] + ["compile+run"] + bald_family.COLUMNS[4:]


def run(quick):
  rows = []
  lp = bald_family.make_log_probs(N, K, C, seed=0)
  key = jax.random.key(0)
  for m in (100, 1_000):
    tlp = bald_family.make_log_probs(m, K, C, seed=1)
    config = f"N={N} M={m} K={K} C={C} B={B}"
    n_exact = exact_steps(C, m, R, B)
    methods = {
      "EPIG": (
        jax.jit(lambda x, t, key: epig(x, t)),
        work_epig(N, K, C, m),
        True,
        "",
      ),
      "PowerEPIG": (
        jax.jit(lambda x, t, key: stochastic_batch(epig(x, t), B, key=key)),
        work_epig(N, K, C, m),
        False,
        "",
      ),
      "BatchEPIG": (
        jax.jit(lambda x, t, key: batch_epig(x, t, B, key=key)),
        work_batch_epig(N, K, C, m, B),
        False,
        f"{n_exact} exact steps, {B - n_exact} sampled ({R} rows)",
      ),
      "2-EPIG": (
        jax.jit(lambda x, t, key: kepig(x, t, B, order=2)),
        work_kepig2(N, K, C, m, B),
        False,
        "",
      ),
    }
    for method, (fn, work, cheap, note) in methods.items():
      if quick and not cheap and method != "PowerEPIG" and m > 100:
        continue
      slow = bald_family.floors(work)[1] > 4
      eager = cheap or not quick
      bald_family.measure(
        rows,
        method,
        config,
        fn,
        (lp, tlp, key),
        work,
        eager=eager,
        repeats=1 if slow else 3,
        note=note
        + ("" if eager else ("; " if note else "") + "eager skipped (--quick)"),
      )
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="no eager runs of the scans; scans at M=100 only",
  )
  args = parser.parse_args()
  started, load_start, machine = harness.start()
  rows = run(args.quick)
  command = f"python benchmarks/epig.py{' --quick' if args.quick else ''}"
  out = [
    *harness.report_head(
      "EPIG benchmark", machine, load_start, command, started
    ),
    harness.print_table(rows, COLUMNS),
    "",
  ]
  path = RESULTS.replace(".md", "_quick.md") if args.quick else RESULTS
  harness.write_page(path, out)


if __name__ == "__main__":
  main()

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
``2 * 10,000`` sampled rows after; a 2-EPIG step on ``C (1 + M C)`` rows,
and with ``S`` sampled target labels per row (``kepig(...,
target_label_samples=S)``, the row "2-EPIG (S=1)") on ``C (1 + M S)`` rows.

Side by side with baal (the one peer that ships EPIG; it needs torch and
numpy < 2, so it runs in its own interpreter, given by ``--baal-python``):
the same predictions are saved, `peers/baal_epig.py` times
``baal.active.heuristics.EPIG().compute_score`` there (best of 3 after a
warm-up; the conversion to its ``[N, C, K]`` probabilities not timed), and
this script compares its scores with ``jax.jit(alfx.epig)``'s, timed in the
same run: the ratio of the times, the largest score difference, whether the
top-B points agree and the rank correlation. baal forms the whole ``[N, C,
M C]`` joint at once (4 GB at M = 1,000); alfx's memory is bounded by
``chunk_size``.

Usage:
  python benchmarks/epig.py           # both M for every method, eager runs
  python benchmarks/epig.py --quick   # no eager runs of the scans; the
                                      # scans at M = 100 only
  python benchmarks/epig.py --baal-python /path/to/venv/bin/python \\
      --peers-only                    # EPIG against baal's only
  python benchmarks/epig.py --quick --targets 100 \\
      --methods "2-EPIG,2-EPIG (S=1)" --out /tmp/epig.md   # two rows
"""

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

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


def work_kepig2(n, k, c, m, b, s=None):
  """2-EPIG, exact (``s=None``) or with ``s`` sampled target labels."""
  s = c if s is None else s
  works = [work_epig(n, k, c, m)]
  for _ in range(1, b):
    works.append(bald_family.table_work(n, k, c, c * (1 + m * s)))
  return bald_family.add_work(*works)


# bald_family's columns, with the first call's compile and run beside them.
COLUMNS = bald_family.COLUMNS[:4] + ["compile+run"] + bald_family.COLUMNS[4:]


def run(quick, only=None, targets=(100, 1_000)):
  """The table's rows; ``only``: the methods to time (all when None)."""
  rows = []
  lp = bald_family.make_log_probs(N, K, C, seed=0)
  key = jax.random.key(0)
  for m in targets:
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
      "2-EPIG (S=1)": (
        jax.jit(
          lambda x, t, key: kepig(
            x, t, B, key=key, order=2, target_label_samples=1
          )
        ),
        work_kepig2(N, K, C, m, B, s=1),
        False,
        "1 sampled target label per row",
      ),
    }
    for method, (fn, work, cheap, note) in methods.items():
      if quick and not cheap and method != "PowerEPIG" and m > 100:
        continue
      if only is not None and method not in only:
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


PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")


def baal_rows(python, quick):
  """EPIG side by side with baal's on the same inputs (module docstring)."""
  rows = []
  lp = bald_family.make_log_probs(N, K, C, seed=0)
  fn = jax.jit(epig)
  for m in (100,) if quick else (100, 1_000):
    tlp = bald_family.make_log_probs(m, K, C, seed=1)
    compiled, _, _ = harness.time_compiled(fn, lp, tlp)
    ours = np.asarray(fn(lp, tlp), np.float64)
    with tempfile.TemporaryDirectory() as folder:
      np.save(os.path.join(folder, "log_probs.npy"), np.asarray(lp))
      np.save(os.path.join(folder, "target_log_probs.npy"), np.asarray(tlp))
      subprocess.run(
        [python, os.path.join(PEER, "baal_epig.py"), folder],
        check=True,
        timeout=1800,
      )
      theirs = np.load(os.path.join(folder, "baal_scores.npy"))
      with open(os.path.join(folder, "baal.json")) as f:
        info = json.load(f)
    ranks = [np.argsort(np.argsort(-v)) for v in (ours, theirs)]
    top = [set(np.argsort(-v)[:B].tolist()) for v in (ours, theirs)]
    row = {
      "method": "EPIG",
      "config": f"N={N} M={m} K={K} C={C}",
      "alfx": harness.fmt_seconds(compiled),
      "baal": harness.fmt_seconds(info["seconds"]),
      "baal / alfx": f"{info['seconds'] / compiled:.1f}",
      "max abs diff": f"{np.max(np.abs(ours - theirs)):.1e}",
      "top-B equal": str(top[0] == top[1]),
      "rank corr.": f"{np.corrcoef(*ranks)[0, 1]:.6f}",
      "note": f"baal {info['baal']}, torch {info['torch']}"
      f" ({info['threads']} threads)",
    }
    print(row, flush=True)
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="no eager runs of the scans; scans at M=100 only",
  )
  parser.add_argument(
    "--baal-python",
    help="an interpreter with baal installed: EPIG side by side with baal's",
  )
  parser.add_argument(
    "--peers-only", action="store_true", help="only the side by side"
  )
  parser.add_argument(
    "--methods",
    help="comma-separated methods to time (e.g. '2-EPIG,2-EPIG (S=1)');"
    " default all",
  )
  parser.add_argument(
    "--targets",
    default="100,1000",
    help="comma-separated numbers of targets M (default 100,1000)",
  )
  parser.add_argument(
    "--out", help="write the table here instead of benchmarks/results/"
  )
  args = parser.parse_args()
  if args.peers_only and not args.baal_python:
    parser.error("--peers-only needs --baal-python")
  started, load_start, machine = harness.start()
  only = None if args.methods is None else args.methods.split(",")
  targets = tuple(int(m) for m in args.targets.split(","))
  rows = [] if args.peers_only else run(args.quick, only, targets)
  peers = baal_rows(args.baal_python, args.quick) if args.baal_python else []
  command = " ".join(["python benchmarks/epig.py", *sys.argv[1:]])
  out = harness.report_head(
    "EPIG benchmark", machine, load_start, command, started
  )
  if rows:
    out += [harness.print_table(rows, COLUMNS), ""]
  if peers:
    out += ["Side by side with baal:", ""]
    out += [harness.print_table(peers, list(peers[0])), ""]
  path = RESULTS.replace(".md", "_quick.md") if args.quick else RESULTS
  path = path.replace(".md", "_peers.md") if args.peers_only else path
  path = args.out or path
  harness.write_page(path, out)


if __name__ == "__main__":
  main()

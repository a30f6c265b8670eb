"""The issues' targets table on whatever accelerator JAX sees, in one short run.

One command, under 8 minutes on one GPU (``--quick``: tiny shapes of every
row, under 2 minutes on a 2-core CPU):

  python benchmarks/device_targets.py            # writes results/device.md
  python benchmarks/device_targets.py --quick    # writes results/device_quick.md

Rows (shapes, inputs and FLOP counts are those of the per-family scripts,
imported from them): BatchBALD (N=10,000 K=20 B=5; N=60,000 K=100 B=10) and
2-BALD (N=60,000 K=100 B=10) from ``bald_family.py``; BAIT full, topc (c=2)
and binary at the CIFAR-10 shape, topc and full at the CIFAR-100 shape and
binary at the ImageNet shape from ``bait.py``; BADGE and CoreSet at
N=10^6 from ``baselines.py``; the scaling curve (7 strategies at N=10^4,
10^5, 10^6) from ``scaling.py``.

Each call is timed as a user's jitted loop runs it (``jax.jit`` around the
public call). ``first call`` is the compiling call (compile and run);
``compiled`` the best of up to 3 further runs. ``peak mem`` is the device's
``memory_stats()`` where it has them (``peak_bytes_in_use`` above the bytes
in use before the row's first call: the inputs excluded; when the row does
not raise the process's peak it is given as an upper bound, ``<=``), else
the resident-set growth of `harness.PeakMemory` (the CPU backend keeps no
allocator statistics); the ``mem source`` column says which. The floor is the
roofline of the scripts' work counts at this device's peaks, measured here
(a matmul chain, chained logarithms and a copy, each repeated inside one
program so that dispatch does not count).

Every row has a time budget: a row's sweep (its further timed runs, the
larger N of a scaling curve) stops once its budget is spent, and rows not
started within the total budget are listed as skipped, so that a slow device
cannot run past the total. Progress is printed as it goes.
"""

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from unittest import mock

import jax
from jax import lax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bait
import bald_family
import baselines
import harness
import scaling

import alfx

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: Total seconds (rows not started by then are skipped): the full run must
#: end within 8 minutes on one GPU, --quick within 2 minutes on a CPU.
TOTAL_BUDGET = {False: 420.0, True: 110.0}


@dataclasses.dataclass
class Spec:
  """One timed call: ``fn(*args)`` and its ``(flops, trans, bytes)``."""

  config: str
  fn: object
  args: tuple
  work: tuple
  sweep: str = ""  # calls of one sweep share the row's budget


# --------------------------------------------------------------------------
# The rows. Each is a generator of Specs (inputs are made lazily, one shape
# at a time, and freed before the next).


def _bald(method, n, k, b):
  lp = bald_family.make_log_probs(n, k)
  config = f"N={n:,} K={k} C={bald_family.C} B={b}"
  if method == "BatchBALD":
    fn = jax.jit(lambda x, key: alfx.batchbald(x, b, key=key))
    work = bald_family.work_batchbald(n, k, bald_family.C, b)
    return Spec(config, fn, (lp, jax.random.key(0)), work)
  fn = jax.jit(lambda x: alfx.kbald(x, b, order=2))
  return Spec(
    config, fn, (lp,), bald_family.work_kbald(n, k, bald_family.C, b, 2)
  )


def _bait(kind, n, dim, c, method="auto"):
  """`alfx.bait` as ``bait.py`` times it (``pool_fisher`` inside the call)."""
  emb, probs, labeled = bait.make_inputs(n, dim, c)
  pool_fisher = functools.partial(alfx.pool_fisher, fisher=kind, method=method)
  method = jax.eval_shape(pool_fisher, emb, probs).method
  capacity = bait.CAPACITY if method == "structured" else None
  fn = jax.jit(
    lambda e, p, l: alfx.bait(
      e,
      p,
      bait.B,
      labeled=l,
      fisher=kind,
      method=method,
      labeled_capacity=capacity,
    )
  )
  flops, bytes_, divisions = bait.count(kind, method, n, dim, c)
  return Spec(
    f"{method}, N={n:,} D={dim} C={c} L={bait.L} B={bait.B}",
    fn,
    (emb, probs, labeled),
    (flops, divisions, bytes_),
  )


def _baseline(row_fn, n, *extra):
  """A ``baselines.py`` row's call and work, captured instead of timed."""
  x, probs, _ = baselines.make_data(n, with_log_probs=False)
  captured = {}

  def capture(name, config, fn, args, **kw):
    captured.update(name=name, config=config, fn=fn, args=args, **kw)

  with mock.patch.object(baselines, "measure", capture):
    row_fn(n, x, *((probs,) if row_fn is baselines.badge_row else extra), False)
  work = tuple(
    captured.get(k, 0.0) for k in ("flops", "transcendentals", "bytes_moved")
  )
  return Spec(captured["config"], captured["fn"], captured["args"], work)


def scaling_curve(sizes):
  for n in sizes:
    data = scaling.make_data(n)
    for name in scaling.STRATEGIES:
      fn, args = scaling.calls(name, data)
      yield Spec(
        f"{name}, N={n:,}", fn, args, scaling.work(name, n), sweep=name
      )
    del data


def rows(quick):
  """``{row name: (budget seconds, generator of Specs)}``, in run order."""
  q = quick
  # (method, N, K, B) at the target shape, and the tiny shape of --quick.
  bald = (
    (("BatchBALD", 10_000, 20, 5), (300, 8, 3)),
    (("BatchBALD", 60_000, 100, 10), (600, 10, 4)),
    (("2-BALD", 60_000, 100, 10), (600, 10, 4)),
  )
  c10 = (400, 32, 10) if q else (50_000, 384, 10)
  # --quick: C=100 is minutes per call on the structured path even at tiny
  # N; the same path at C=12 (forced: C D is below the automatic switch).
  c100 = (200, 24, 12, "structured") if q else (50_000, 384, 100)
  imagenet = (2_000, 32, 50) if q else (1_200_000, 384, 1_000)
  big = 2_000 if q else 1_000_000
  labelled = 20 if q else 1_000
  table = {}
  for (method, n, k, b), tiny in bald:
    table[f"{method} N={n:,} K={k} B={b}"] = (
      20 if n * k < 10**6 else 40,
      lambda a=(method, *(tiny if q else (n, k, b))): iter([_bald(*a)]),
    )
  for kind in ("full", "topc", "binary"):
    table[f"BAIT {kind}, CIFAR-10 shape"] = (
      30,
      lambda kind=kind: iter([_bait(kind, *c10)]),
    )
  table["BAIT binary, ImageNet shape"] = (
    40,
    lambda: iter([_bait("binary", *imagenet)]),
  )
  table["BADGE N=10^6"] = (
    20,
    lambda: iter([_baseline(baselines.badge_row, big)]),
  )
  table["CoreSet N=10^6"] = (
    20,
    lambda: iter([_baseline(baselines.coreset_row, big, labelled)]),
  )
  table["BAIT topc, CIFAR-100 shape"] = (
    40,
    lambda: iter([_bait("topc", *c100)]),
  )
  sizes = (1_000,) if q else (10_000, 100_000, 1_000_000)
  table["scaling curve"] = (
    # Per strategy (a sweep over N).
    15 if q else 20,
    lambda: scaling_curve(sizes),
  )
  table["BAIT full, CIFAR-100 shape"] = (
    120,
    lambda: iter([_bait("full", *c100)]),
  )
  return table


ROW_NAMES = tuple(rows(True))


# --------------------------------------------------------------------------
# Measurement.


def _memory_stats():
  try:
    return jax.local_devices()[0].memory_stats() or None
  except Exception:  # a backend without allocator statistics
    return None


def device_peaks() -> dict:
  """Peak matmul FLOP/s, logarithms/s and copy bytes/s of the default device.

  On CPU, `harness.machine_peaks`. On an accelerator one call of harness's
  size takes ~0.1 ms, about its dispatch cost, so each operation is repeated
  inside one compiled program (a chain: nothing can be hoisted).
  """
  if jax.default_backend() == "cpu":
    return harness.machine_peaks()
  reps = 20

  def best_of(fn, *args):
    best, _, _ = harness.time_compiled(fn, *args, repeats=5)
    return best

  n = 8192
  a = jnp.ones((n, n), jnp.float32) / n
  chain = jax.jit(lambda a: lax.fori_loop(0, reps, lambda i, x: x @ a, a))
  flops = reps * 2 * n**3 / best_of(chain, a)
  x = jnp.linspace(1.0, 2.0, 1 << 26, dtype=jnp.float32)
  logs = 16  # chained per element: register-bound, not memory-bound
  chained = jax.jit(
    lambda x: functools.reduce(lambda y, _: jnp.log(y + 1.5), range(logs), x)
  )
  transcendentals = logs * x.size / best_of(chained, x)
  # The barrier keeps XLA from fusing the (possibly unrolled) loop's adds
  # into one pass.
  copies = jax.jit(
    lambda x: lax.fori_loop(
      0, reps, lambda i, y: lax.optimization_barrier(y + 1.0), x
    )
  )
  bandwidth = reps * 2 * 4 * x.size / best_of(copies, x)
  return {
    "flops": flops,
    "transcendentals": transcendentals,
    "bandwidth": bandwidth,
  }


def timed(spec: Spec, deadline: float) -> dict:
  """First call and best of up to 3 runs (while time is left), peak memory."""
  before = _memory_stats()
  t0 = time.perf_counter()
  harness.block(spec.fn(*spec.args))
  first = time.perf_counter() - t0
  best, runs = math.inf, 0
  with harness.PeakMemory() as rss:
    while runs < 3 and (runs == 0 or time.perf_counter() + best < deadline):
      t0 = time.perf_counter()
      harness.block(spec.fn(*spec.args))
      best = min(best, time.perf_counter() - t0)
      runs += 1
  after = _memory_stats()
  if before and after and "peak_bytes_in_use" in after:
    extra = after["peak_bytes_in_use"] - before.get("bytes_in_use", 0)
    raised = after["peak_bytes_in_use"] > before.get("peak_bytes_in_use", 0)
    peak = (
      harness.fmt_bytes(extra) if raised else f"<= {harness.fmt_bytes(extra)}"
    )
    source = "device"
  else:
    peak, source = harness.fmt_bytes(rss.peak_bytes), "RSS"
  flops, trans, bytes_ = spec.work
  floor = harness.floor_seconds(flops, trans, bytes_)
  return {
    "config": spec.config,
    "compiled": harness.fmt_seconds(best),
    "first call": harness.fmt_seconds(first),
    "runs": runs,
    "peak mem": peak,
    "mem source": source,
    "GFLOP": f"{flops / 1e9:.3g}",
    "floor": harness.fmt_seconds(floor),
    "x floor": f"{best / floor:.2f}" if floor > 0 else "-",
    "_seconds": (best, first, floor),
  }


def run(quick: bool, only=None, budget=None) -> list[dict]:
  start = time.perf_counter()
  total = start + (budget or TOTAL_BUDGET[quick])
  out = []
  for name, (budget, specs) in rows(quick).items():
    if only and not any(o.lower() in name.lower() for o in only):
      continue
    now = time.perf_counter()
    if total - now < (0 if quick else budget / 2):  # too little left
      out.append({"row": name, "status": "skipped (total budget spent)"})
      print(f"[{now - start:6.1f} s] {name}: skipped", flush=True)
      continue
    print(f"[{now - start:6.1f} s] {name} (budget {budget} s)", flush=True)
    spent = {}
    for spec in specs():
      sweep_start = spent.setdefault(spec.sweep, time.perf_counter())
      deadline = min(sweep_start + budget, total)
      if time.perf_counter() > deadline:
        out.append(
          {"row": name, "config": spec.config, "status": "skipped (budget)"}
        )
        print(f"    {spec.config}: skipped (budget spent)", flush=True)
        continue
      try:
        result = {"row": name, **timed(spec, deadline), "status": "ok"}
      except Exception as e:  # e.g. out of memory: the other rows still run
        result = {"row": name, "config": spec.config, "status": "error"}
        print(f"    {spec.config}: {type(e).__name__}: {e}"[:2000], flush=True)
        out.append(result)
        continue
      out.append(result)
      print(
        f"    {result['config']}: compiled {result['compiled']}, first call"
        f" {result['first call']}, peak {result['peak mem']}"
        f" ({result['mem source']}), floor {result['floor']}",
        flush=True,
      )
  print(f"[{time.perf_counter() - start:6.1f} s] done", flush=True)
  return out


COLUMNS = [
  "row",
  "config",
  "compiled",
  "first call",
  "runs",
  "peak mem",
  "mem source",
  "GFLOP",
  "floor",
  "x floor",
  "status",
]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="tiny shapes of every row (CPU)"
  )
  parser.add_argument("--only", nargs="*", help="rows whose name contains")
  parser.add_argument("--out", default=None)
  parser.add_argument(
    "--budget",
    type=float,
    default=None,
    help="total seconds for the rows (default 420; --quick 110)",
  )
  args = parser.parse_args()
  out = args.out or os.path.join(
    RESULTS, "device_quick.md" if args.quick else "device.md"
  )
  started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  t0 = time.perf_counter()
  peaks = device_peaks()
  # The floors of every script's counts at this device's peaks.
  harness.machine_peaks = lambda: peaks
  device = jax.devices()[0]
  print(harness.machine_description(), flush=True)
  load = os.getloadavg()
  results = run(args.quick, args.only, args.budget)
  table = harness.print_table(results, COLUMNS)
  header = (
    f"# Device targets{' (--quick)' if args.quick else ''}\n\n"
    f"Device: {device.device_kind} ({device.platform}); "
    f"{harness.machine_description()}.\n\n"
    f"Run {started}, {time.perf_counter() - t0:.0f} s in all; load average"
    f" at start {load[0]:.1f} ({os.cpu_count()} cores).\n\n"
  )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write(header + table + "\n")
  print(f"wrote {out}")
  return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())

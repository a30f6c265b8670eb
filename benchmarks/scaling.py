"""Scaling benchmark: time vs pool size N, and 1 vs 2 vs 4 devices.

Part 1, one device: each strategy at N = 10^4, 10^5, 10^6 (K=20 posterior
samples, C=10 classes, D=64 embedding dims, B=10; 5% of the pool labelled
for CoreSet and BAIT). Timed as a user's jitted round runs it: ``jax.jit``
around the public call. Compiled time is the best of the runs after a
compiling call; eager time (``jax.disable_jit()``) only at N=10^4 (op by op,
every scan step dispatched from Python; minutes at larger N); peak memory is
the resident-set growth during the compiled runs (harness.py); the floor is
the roofline of the FLOPs, transcendentals and bytes counted in `work`, on
this machine's measured peaks.

Part 2, the pool sharded: at the largest N, each strategy in a fresh process
with ``--xla_force_host_platform_device_count=P`` for P = 1, 2, 4, the pool
placed by ``alfx.shard_pool`` on a P-device mesh (P=1 also goes through
``shard_map``). Forced host devices share the same CPU cores (2 here), so
this measures the overhead of the SPMD program (per-step all-reduces,
per-device thread pools), not a speed-up.

batchbald uses num_configurations=1,000 (5 of its 10 steps are sampled at C=10).

Writes benchmarks/results/scaling{,_quick}.md and a PNG plot of time vs N.

Usage:
  python benchmarks/scaling.py           # N up to 10^6, devices at 10^6
  python benchmarks/scaling.py --quick   # N up to 10^5, devices at 10^5
"""

import argparse
import json
import os
import subprocess
import sys
import time

if "--worker" in sys.argv:  # the device count is fixed when JAX starts
  _P = int(sys.argv[sys.argv.index("--devices") + 1])
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={_P}"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

import alfx  # noqa: E402

K, C, D, B = 20, 10, 64, 10
F32 = 4
# batchbald's sampled configurations (its default is 10,000): 1,000 keeps
# the sampled steps (5 of the 10 at C=10) at 2e4 K C N FLOPs each.
NUM_CONFIGURATIONS = 1_000

STRATEGIES = (
  "topk_bald",
  "kbald-2",
  "batchbald",
  "badge",
  "coreset",
  "bait-binary",
  "bait-full",
)


def make_data(n, seed=0):
  """log_probs [n, K, C], embeddings [n, D], probs [n, C], labeled [n]."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)

  @jax.jit
  def make(k1, k2, k3, k4):
    x = jax.random.normal(k1, (n, D))
    w = jax.random.normal(k2, (D, C)) / jnp.sqrt(D)
    logits = 2.0 * (x @ w)
    lp = jax.nn.log_softmax(
      logits[:, None, :] + jax.random.normal(k3, (n, K, C)), axis=-1
    )
    labeled = jax.random.uniform(k4, (n,)) < 0.05
    return lp, x, jax.nn.softmax(logits, axis=-1), labeled

  return jax.block_until_ready(make(k1, k2, k3, k4))


def work(name, n):
  """``(flops, transcendentals, bytes)`` of one call, counted by hand.

  The floors count the dominant terms only (documented per strategy).
  """
  nkc = n * K * C
  if name == "topk_bald":
    # exp of every log-prob, C logs of the mean; read the input once, then
    # B argmax passes over [N].
    return 4 * nkc, nkc + n * C, nkc * F32 + B * n * F32
  if name == "kbald-2":
    # prepare (exp, transposed copy), then per step the table kernel with
    # R = C rows: 2 R K C N FLOPs, R C N x log x, one read of p [N, C, K].
    return (
      4 * nkc + B * 2 * C * nkc,
      nkc + B * C * C * n,
      2 * nkc * F32 + B * nkc * F32,
    )
  if name == "batchbald":
    rows = [min(C**s, NUM_CONFIGURATIONS) for s in range(B)]
    return (
      4 * nkc + sum(2 * r * nkc for r in rows[1:]),
      nkc + sum(r * C * n for r in rows[1:]),
      2 * nkc * F32 + B * nkc * F32,
    )
  if name == "badge":
    # per pick: two matvecs over h [N, D] and a [N, C], Gumbel noise, log D^2.
    return (B * n * (2 * D + 2 * C + 10), 3 * B * n, B * n * (D + C) * F32)
  if name == "coreset":
    # labelled-to-pool distances (L = 5% of N) as tiles, then B matvecs.
    labelled = 0.05 * n
    return (2 * n * labelled * D + B * 2 * n * D, 0, n * D * F32 * (B + 1))
  if name.startswith("bait"):
    c_f, r = (1, 1) if name == "bait-binary" else (C, C)
    t_c = c_f * (c_f + 1) // 2
    d = c_f * D
    steps = 2 * B  # oversample 2: forward picks
    setup = 2 * n * D**2 * t_c + 4 * n * D**2 * t_c + 5 * d**3
    step = 4 * n * D * c_f * r + 10 * n * r**3 + 4 * d * d
    state = 2 * n * r * r * F32  # U_n, W_n
    return (
      setup + steps * step,
      0,
      3 * n * D * F32 + steps * (n * D * F32 + 2 * state),
    )
  raise ValueError(name)


def calls(name, data, in_pool=None):
  """``(jitted fn, args)`` running strategy ``name`` on ``data``."""
  lp, x, probs, labeled = data
  mask = ~labeled if in_pool is None else in_pool & ~labeled
  key = jax.random.key(0)
  if name == "topk_bald":
    return jax.jit(lambda lp, m: alfx.topk_bald(lp, B, mask=m)), (lp, mask)
  if name == "kbald-2":
    return jax.jit(lambda lp, m: alfx.kbald(lp, B, order=2, mask=m)), (lp, mask)
  if name == "batchbald":
    return (
      jax.jit(
        lambda lp, m, k: alfx.batchbald(
          lp, B, mask=m, key=k, num_configurations=NUM_CONFIGURATIONS
        )
      ),
      (lp, mask, key),
    )
  if name == "badge":
    return (
      jax.jit(lambda x, p, m, k: alfx.badge(x, p, B, key=k, mask=m)),
      (x, probs, mask, key),
    )
  if name == "coreset":
    return (
      jax.jit(lambda x, l, m: alfx.coreset(x, B, labeled=l, mask=m)),
      (x, labeled, mask),
    )
  if name.startswith("bait"):
    fisher = name.split("-")[1]
    if in_pool is None:
      fn = lambda x, p, l, m: alfx.bait(
        x, p, B, labeled=l, fisher=fisher, mask=m
      )
      return jax.jit(fn), (x, probs, labeled, mask)
    fn = lambda x, p, l, m, ip: alfx.bait(
      x, p, B, labeled=l, fisher=fisher, mask=m, in_pool=ip
    )
    return jax.jit(fn), (x, probs, labeled, mask, in_pool)
  raise ValueError(name)


# Skipped configurations, with the reason: none (every strategy runs at
# every N; batchbald and bait-full take 1-2 minutes per call at N=10^6).
SKIP = {}
#: Not run on forced devices.
DEVICE_SKIP = set()
#: Not run on forced devices in --quick mode.
QUICK_DEVICE_SKIP = {"batchbald", "bait-full"}
#: Eager runs that take minutes even at N=10^4.
EAGER_SKIP = {"batchbald"}


def measure(name, n, data, *, eager, repeats, in_pool=None):
  fn, args = calls(name, data, in_pool)
  best, first, peak = harness.time_compiled(fn, *args, repeats=repeats)
  eager_s = harness.time_eager(fn, *args) if eager else None
  flops, trans, moved = work(name, n)
  floor = harness.floor_seconds(flops, trans, moved)
  return dict(
    strategy=name,
    n=n,
    compiled=best,
    first=first,
    peak=peak,
    eager=eager_s,
    flops=flops,
    trans=trans,
    bytes=moved,
    floor=floor,
  )


def worker(devices, n, names):
  """One process with ``devices`` forced host devices: sharded timings."""
  assert jax.device_count() == devices, jax.devices()
  data = make_data(n)
  pool = alfx.shard_pool(*data, mesh=jax.make_mesh((devices,), ("pool",)))
  rows = []
  for name in names:
    row = measure(
      name, n, pool.arrays, eager=False, repeats=2, in_pool=pool.in_pool
    )
    row["devices"] = devices
    rows.append(row)
    print(json.dumps(row), flush=True)


def fmt_row(r):
  return {
    "strategy": r["strategy"],
    "N": f"{r['n']:,}",
    "devices": r.get("devices", 1),
    "compiled": harness.fmt_seconds(r["compiled"]),
    "first call": harness.fmt_seconds(r["first"]),
    "eager": harness.fmt_seconds(r["eager"]) if r["eager"] else "skipped",
    "peak mem": harness.fmt_bytes(r["peak"]),
    "GFLOP": f"{r['flops'] / 1e9:.1f}",
    "GB moved": f"{r['bytes'] / 1e9:.2f}",
    "floor": harness.fmt_seconds(r["floor"]),
    "x floor": f"{r['compiled'] / r['floor']:.1f}",
  }


def plot(rows, path):
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  single = [r for r in rows if "devices" not in r]
  for name in STRATEGIES:
    pts = sorted(
      (r["n"], r["compiled"], r["floor"])
      for r in single
      if r["strategy"] == name
    )
    if not pts:
      continue
    (line,) = ax.plot(
      [p[0] for p in pts], [p[1] for p in pts], "o-", label=name
    )
    ax.plot(
      [p[0] for p in pts], [p[2] for p in pts], ":", color=line.get_color()
    )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("pool size N")
  ax.set_ylabel("compiled time per call (s)")
  ax.set_title(
    f"one device (CPU); dotted: roofline floor\nK={K} C={C} D={D} B={B}"
  )
  ax.legend(fontsize=8)
  sharded = [r for r in rows if "devices" in r]
  names = [s for s in STRATEGIES if any(r["strategy"] == s for r in sharded)]
  counts = sorted({r["devices"] for r in sharded})
  width = 0.8 / max(len(counts), 1)
  for i, p in enumerate(counts):
    base = {
      r["strategy"]: r["compiled"] for r in sharded if r["devices"] == counts[0]
    }
    vals = [
      next(
        (
          r["compiled"] / base[s]
          for r in sharded
          if r["strategy"] == s and r["devices"] == p
        ),
        0,
      )
      for s in names
    ]
    ax2.bar(
      [j + i * width for j in range(len(names))],
      vals,
      width,
      label=f"{p} device(s)",
    )
  ax2.set_xticks([j + width * (len(counts) - 1) / 2 for j in range(len(names))])
  ax2.set_xticklabels(names, rotation=30, fontsize=8)
  ax2.set_ylabel(f"time relative to {counts[0] if counts else 1} device")
  n_dev = sharded[0]["n"] if sharded else 0
  ax2.set_title(
    f"pool sharded over forced CPU devices, N={n_dev:,}\n"
    "(same 2 cores: overhead, not speed-up)"
  )
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--worker", action="store_true")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--n", type=int, default=0)
  parser.add_argument("--strategies", default=",".join(STRATEGIES))
  args = parser.parse_args()
  names = args.strategies.split(",")
  if args.worker:
    worker(args.devices, args.n, names)
    return

  sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6]
  load = os.getloadavg()
  print(harness.machine_description(), flush=True)
  print(
    f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    flush=True,
  )
  rows, skipped = [], []
  for n in sizes:
    data = make_data(n)
    for name in names:
      reason = SKIP.get((name, n))
      if reason:
        skipped.append(f"{name} at N={n:,}: {reason}")
        continue
      t0 = time.time()
      row = measure(
        name,
        n,
        data,
        eager=(n == 10**4 and name not in EAGER_SKIP),
        repeats=3 if n < 10**5 else 1,
      )
      rows.append(row)
      print(
        f"  {name} N={n:,}: {harness.fmt_seconds(row['compiled'])}"
        f" (floor {harness.fmt_seconds(row['floor'])}, eager"
        f" {harness.fmt_seconds(row['eager'])}, wall"
        f" {time.time() - t0:.0f} s)",
        flush=True,
      )
    del data

  n_dev = sizes[-1]
  dev_skip = QUICK_DEVICE_SKIP if args.quick else DEVICE_SKIP
  dev_names = [s for s in names if s not in dev_skip]
  skipped += [
    f"{s} on forced devices (minutes per call)" for s in names if s in dev_skip
  ]
  for p in (1, 2, 4) if dev_names else ():
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--worker",
      "--devices",
      str(p),
      "--n",
      str(n_dev),
      "--strategies",
      ",".join(dev_names),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      print(out.stderr[-3000:], flush=True)
    for line in out.stdout.splitlines():
      if line.startswith("{"):
        row = json.loads(line)
        rows.append(row)
        print(
          f"  {row['strategy']} N={n_dev:,} on {p} device(s):"
          f" {harness.fmt_seconds(row['compiled'])}",
          flush=True,
        )

  end_load = os.getloadavg()
  columns = ["strategy", "N", "devices", *harness.TIME_COLUMNS]
  print()
  table1 = harness.print_table(
    [fmt_row(r) for r in rows if "devices" not in r], columns
  )
  print()
  table2 = harness.print_table(
    [fmt_row(r) for r in rows if "devices" in r], columns
  )
  suffix = "_quick" if args.quick else ""
  results = os.path.join(ROOT, "benchmarks", "results")
  os.makedirs(results, exist_ok=True)
  png = os.path.join(results, f"scaling{suffix}.png")
  plot(rows, png)
  with open(os.path.join(results, f"scaling{suffix}.md"), "w") as f:
    f.write(f"# Scaling{' (quick)' if args.quick else ''}\n\n")
    f.write(f"Machine: {harness.machine_description()}\n\n")
    f.write(
      f"Load average (1/5/15 min) at start {load[0]:.2f} {load[1]:.2f}"
      f" {load[2]:.2f}, at end {end_load[0]:.2f} {end_load[1]:.2f}"
      f" {end_load[2]:.2f} (a shared machine: timings are noisy).\n\n"
    )
    f.write(
      f"K={K} C={C} D={D} B={B}; 5% labelled. Plot:"
      f" `scaling{suffix}.png`.\n\n## Time vs N, one device\n\n"
    )
    f.write(table1 + "\n\n")
    f.write(
      f"batchbald with num_configurations={NUM_CONFIGURATIONS:,}; its eager run"
      " is skipped (minutes: every table block dispatched op by op)."
      "\n\n"
    )
    if skipped:
      f.write("Skipped: " + "; ".join(skipped) + ".\n\n")
    f.write(
      f"## The pool sharded over forced host CPU devices, N={n_dev:,}"
      "\n\nForced host devices share the same cores: this is the"
      " overhead of the SPMD program (per-step all-reduces, one thread"
      " pool per device), not a speed-up. P=1 also runs through"
      " shard_map.\n\n"
    )
    f.write(table2 + "\n")
  print(f"\nwrote {png}", flush=True)


if __name__ == "__main__":
  main()

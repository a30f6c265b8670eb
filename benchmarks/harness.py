"""Shared measurement harness for the benchmarks in this folder.

Every benchmark reports, per configuration: the compiled time (best of a few
runs after a warm-up call that compiles), the eager time (the same call under
``jax.disable_jit()``, op by op, where it finishes in reasonable time), the
peak extra resident memory during the compiled runs, the FLOP / byte floor of
the computation on this machine, and the ratios.

Peak memory is sampled from ``/proc/self/statm`` every millisecond by a
background thread (the CPU backend keeps no allocator statistics): the peak
resident set during the timed runs minus the resident set just before them.
It includes XLA's temporaries and outputs, not the inputs.

The floor is a roofline: ``max(flops / peak_flops, transcendentals /
peak_transcendentals, bytes / bandwidth)`` with the peaks measured on this
machine by `machine_peaks` (a large float32 matmul, ``x log x`` over a large
vector, a large copy).
"""

import argparse
import contextlib
import functools
import os
import platform
import threading
import time

import jax
import jax.numpy as jnp

_PAGE = os.sysconf("SC_PAGE_SIZE")

#: The measurement columns of a results table, after the configuration's.
TIME_COLUMNS = [
  "compiled",
  "first call",
  "eager",
  "peak mem",
  "GFLOP",
  "GB moved",
  "floor",
  "x floor",
]


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * _PAGE


class PeakMemory(contextlib.AbstractContextManager):
  """Samples the resident set size; ``.peak_bytes`` is the peak above entry."""

  def __init__(self, interval: float = 0.001):
    self.interval = interval
    self.peak_bytes = 0

  def __enter__(self):
    self._base = _rss_bytes()
    self._peak = self._base
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.is_set():
      self._peak = max(self._peak, _rss_bytes())
      time.sleep(self.interval)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, _rss_bytes())
    self.peak_bytes = self._peak - self._base
    return False


def block(x):
  return jax.block_until_ready(x)


def time_compiled(fn, *args, repeats: int = 3):
  """(best seconds, first-call seconds incl. compile, peak extra bytes)."""
  t0 = time.perf_counter()
  block(fn(*args))
  first = time.perf_counter() - t0
  best = float("inf")
  with PeakMemory() as mem:
    for _ in range(repeats):
      t0 = time.perf_counter()
      block(fn(*args))
      best = min(best, time.perf_counter() - t0)
  return best, first, mem.peak_bytes


def time_eager(fn, *args):
  """Seconds for one call under ``jax.disable_jit()`` (op-by-op dispatch)."""
  with jax.disable_jit():
    t0 = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t0


@functools.cache
def machine_peaks() -> dict:
  """Measured peak rates of this machine: matmul FLOP/s, x log x /s, bytes/s."""
  a = jnp.ones((3072, 3072), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  t, _, _ = time_compiled(mm, a)
  flops = 2 * 3072**3 / t
  x = jnp.linspace(0.01, 1.0, 40_000_000, dtype=jnp.float32)
  xl = jax.jit(lambda x: jnp.sum(x * jnp.log(x)))
  t, _, _ = time_compiled(xl, x)
  transcendentals = x.size / t
  cp = jax.jit(lambda x: x + 1.0)
  t, _, _ = time_compiled(cp, x)
  bandwidth = 2 * 4 * x.size / t
  return {
    "flops": flops,
    "transcendentals": transcendentals,
    "bandwidth": bandwidth,
  }


def floor_seconds(
  flops: float = 0.0, transcendentals: float = 0.0, bytes_moved: float = 0.0
) -> float:
  """Roofline lower bound on this machine for the given work."""
  p = machine_peaks()
  return max(
    flops / p["flops"],
    transcendentals / p["transcendentals"],
    bytes_moved / p["bandwidth"],
  )


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  p = machine_peaks()
  return (
    f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on"
    f" {devices[0].platform} ({len(devices)} device(s)); measured peaks:"
    f" {p['flops'] / 1e9:.0f} GFLOP/s matmul,"
    f" {p['transcendentals'] / 1e9:.2f} G x*log(x)/s,"
    f" {p['bandwidth'] / 1e9:.1f} GB/s copy"
  )


def fmt_seconds(s) -> str:
  if s is None:
    return "-"
  if s < 1e-3:
    return f"{s * 1e6:.0f} us"
  if s < 1:
    return f"{s * 1e3:.1f} ms"
  return f"{s:.2f} s"


def fmt_bytes(b) -> str:
  if b is None:
    return "-"
  for unit in ("B", "KB", "MB", "GB"):
    if abs(b) < 1024 or unit == "GB":
      return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
    b /= 1024
  return f"{b:.1f} GB"


def print_table(rows: list[dict], columns: list[str]) -> str:
  """Prints (and returns) a Markdown table of the given columns."""
  widths = {
    c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in columns
  }
  lines = [
    "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |",
    "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|",
  ]
  for r in rows:
    lines.append(
      "| "
      + " | ".join(str(r.get(c, "-")).ljust(widths[c]) for c in columns)
      + " |"
    )
  text = "\n".join(lines)
  print(text, flush=True)
  return text


def script_args(description: str, out_name: str, quick_help: str):
  """``--quick`` and ``--out``, parsed.

  ``--out`` defaults to ``results/<out_name>``, or ``results/<stem>_quick.md``
  with ``--quick``, so that a quick run never overwrites the full page.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument(
    "--out", default=None, help="the results page (default: results/)"
  )
  args = parser.parse_args()
  if args.out is None:
    stem, ext = os.path.splitext(out_name)
    name = f"{stem}_quick{ext}" if args.quick else out_name
    args.out = os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", name
    )
  return args


def load_average() -> str:
  return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def report_head(
  title: str, machine: str, load_start: str, command: str, started: float
) -> list[str]:
  """The first lines of a results page: machine, load, command, duration."""
  return [
    f"# {title}",
    "",
    f"Machine: {machine}.",
    "",
    f"Load average at start {load_start}, at end {load_average()} (2 cores:"
    " a load above 2 means other processes shared the cores, and the"
    " peaks, floors and times above are all affected).",
    "",
    f"Command: `{command}` ({time.time() - started:.0f} s, run"
    f" {time.strftime('%Y-%m-%d %H:%M')}).",
    "",
  ]


def start() -> tuple[float, str, str]:
  """``(time, load average, machine description)`` at a run's start; prints
  the machine."""
  started, load = time.time(), load_average()
  machine = machine_description()
  print(machine, flush=True)
  return started, load, machine


def write_page(path: str, lines: list[str]) -> None:
  """Writes a results page (creating its folder) and says where."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  print(f"\nwritten to {path}")

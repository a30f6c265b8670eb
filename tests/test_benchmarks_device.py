"""``benchmarks/device_targets.py --quick`` runs every row and writes its table.

The script measures the targets table on an accelerator in one command; its
``--quick`` mode (tiny shapes of every row) is what can run here, on the
CPU. It compiles some twenty programs (about two minutes on 2 cores), so it
is in the slow suite. A generous total budget keeps a loaded machine from
skipping rows (the script's own default is what bounds a device run).
"""

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_targets.py"


def _row_names():
  spec = importlib.util.spec_from_file_location("device_targets", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.ROW_NAMES


def _seconds(text: str) -> float:
  value, unit = text.split()
  return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


@pytest.mark.slow
def test_quick_run_has_every_row_with_finite_numbers(tmp_path):
  out = tmp_path / "device.md"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]
    + ["--budget", "1500"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  text = out.read_text()
  header, _, *body = [l for l in text.splitlines() if l.startswith("|")]

  def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]

  table = [dict(zip(cells(header), cells(line))) for line in body]
  names = _row_names()
  assert set(names) <= {r["row"] for r in table}, (names, text)
  scaling = [r for r in table if r["row"] == "scaling curve"]
  assert len(scaling) == 7, text  # every strategy of scaling.py
  for r in table:
    assert r["status"] == "ok", r
    for column in ("compiled", "first call", "floor"):
      assert math.isfinite(_seconds(r[column])) and _seconds(r[column]) > 0, r
    assert math.isfinite(float(r["x floor"])), r
    assert math.isfinite(float(r["GFLOP"])), r
    assert r["mem source"] in ("device", "RSS"), r
    assert re.fullmatch(r"(<= )?-?[\d.]+ [KMG]?B", r["peak mem"]), r
  assert "Device:" in text and "GFLOP/s matmul" in text

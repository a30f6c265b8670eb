"""The documentation: the site builds with warnings as errors, and the
PyTorch/NumPy example runs and picks the same points from both frameworks.

Both run as subprocesses of this interpreter, with timeouts. The build needs
the `docs` extra (Sphinx, MyST, furo) and is skipped without it; the example
needs only alfx and NumPy (it uses torch when torch is installed).
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
BUILD_TIMEOUT_S = 600
EXAMPLE_TIMEOUT_S = 600


def _missing(*modules):
  return [m for m in modules if importlib.util.find_spec(m) is None]


# Slow: .ci/run builds the docs (-W) as a step of its own, outside the
# default suite's time budget; `pytest -m slow` runs it here too.
@pytest.mark.slow
def test_docs_build_has_no_warnings(tmp_path):
  missing = _missing("sphinx", "myst_parser", "furo")
  if missing:
    pytest.skip(
      f"{', '.join(missing)} not installed: pip install -e"
      " '.[docs]' to build the documentation"
    )
  # A fresh build (own doctree cache) into tmp_path: every page and
  # docstring is read again, so every warning shows.
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sphinx",
      "-W",
      "--keep-going",
      "-q",
      "-b",
      "html",
      "-d",
      str(tmp_path / "doctrees"),
      str(DOCS),
      str(tmp_path / "html"),
    ],
    capture_output=True,
    text=True,
    timeout=BUILD_TIMEOUT_S,
    check=False,
  )
  assert result.returncode == 0, (
    f"sphinx-build failed ({result.returncode}):\n{result.stderr[-8000:]}"
  )
  assert (tmp_path / "html" / "index.html").exists()
  assert (tmp_path / "html" / "api" / "bald_family.html").exists()


def _picks(stdout, label):
  for line in stdout.splitlines():
    if line.startswith(f"{label} picks:"):
      return json.loads(line.split(":", 1)[1])
  raise AssertionError(f"no '{label} picks:' line in:\n{stdout}")


def test_from_torch_example(tmp_path):
  result = subprocess.run(
    [sys.executable, str(DOCS / "examples" / "from_torch.py")],
    capture_output=True,
    text=True,
    timeout=EXAMPLE_TIMEOUT_S,
    cwd=tmp_path,
    check=False,
  )
  assert result.returncode == 0, (
    f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-8000:]}"
  )
  numpy_picks = _picks(result.stdout, "numpy")
  for name in ("kbald", "bait"):
    assert len(numpy_picks[name]) == 10
    assert len(set(numpy_picks[name])) == 10
    assert min(numpy_picks[name]) >= 20  # the first 20 points are labelled
  if importlib.util.find_spec("torch") is None:
    assert "skipped: torch not installed" in result.stdout
  else:
    assert _picks(result.stdout, "torch") == numpy_picks

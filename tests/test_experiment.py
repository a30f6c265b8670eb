"""The alfx-experiment command: data loading, bad data, a tiny end-to-end run."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from alfx import experiment
from alfx.experiment import cli
from alfx.experiment import datasets
from alfx.experiment import report
from alfx.experiment import run

TINY = [
  "--rounds",
  "2",
  "--batch-size",
  "5",
  "--initial",
  "10",
  "--seeds",
  "2",
  "--train-steps",
  "3",
  "--train-batch-size",
  "8",
  "--hidden",
  "8",
  "--no-progress",
]


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def check_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert np.ptp(image[..., :3]) > 0.5  # not blank: lines were drawn


def test_cli_smoke_writes_csv_png_and_summary(tmp_path, capsys):
  out = tmp_path / "run"
  rc = experiment.main(
    [
      "--datasets",
      "digits",
      "--strategies",
      "random,bald",
      "--ensemble",
      "2",
      "--out",
      str(out),
    ]
    + TINY
  )
  assert rc == 0
  rows = read_csv(out / "results.csv")
  assert list(rows[0]) == list(report.CSV_COLUMNS)
  assert len(rows) == 2 * 2 * 3  # strategies x seeds x (rounds + 1)
  for row in rows:
    assert row["dataset"] == "digits"
    assert row["strategy"] in ("random", "bald")
    assert int(row["num_labeled"]) == 10 + 5 * int(row["round"])
    assert 0.0 <= float(row["accuracy"]) <= 1.0
    if int(row["round"]) < 2:
      assert float(row["acquisition_seconds"]) >= 0
      assert np.isfinite(float(row["train_loss"]))
    else:
      assert row["acquisition_seconds"] == ""
  # Round 0 trains on the same initial set with the same keys whatever the
  # strategy: a paired comparison.
  first = {
    (r["dataset"], r["seed"], r["strategy"]): r["accuracy"]
    for r in rows
    if r["round"] == "0"
  }
  for (dataset, seed, _), acc in first.items():
    assert acc == first[(dataset, seed, "random")]
  check_png(out / "learning_curves.png")
  text = capsys.readouterr().out
  assert "| dataset | strategy |" in text and "AULC" in text
  for name in ("random", "bald"):
    assert f"| digits | {name} |" in text


def test_cli_mc_dropout_and_npz_with_test_split(tmp_path, rng):
  x = rng.standard_normal((60, 3, 4)).astype(np.float32)  # "images"
  y = rng.integers(0, 3, 60)
  x_test = rng.standard_normal((15, 3, 4))
  y_test = rng.integers(0, 3, 15)
  path = tmp_path / "mine.npz"
  np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
  out = tmp_path / "run"
  rc = experiment.main(
    [
      "--data",
      str(path),
      "--strategies",
      "bald",
      "--mc-dropout",
      "3",
      "--out",
      str(out),
      "--no-plot",
      "--initial",
      "9",
      "--batch-size",
      "4",
      "--rounds",
      "2",
      "--seeds",
      "2",
      "--train-steps",
      "3",
      "--hidden",
      "8",
      "--no-progress",
    ]
  )
  assert rc == 0
  rows = read_csv(out / "results.csv")
  assert {r["dataset"] for r in rows} == {"mine"}
  assert [int(r["num_labeled"]) for r in rows if r["seed"] == "0"] == [
    9,
    13,
    17,
  ]
  assert not (out / "learning_curves.png").exists()


def test_digits_loaders():
  plain = datasets.load_digits_data()
  rep = datasets.load_digits_data(repeated=True)
  n = len(plain.pool_y)
  assert n + len(plain.test_y) == 1797 and len(plain.test_y) == 500
  assert len(rep.pool_y) == 3 * n and rep.pool_x.shape[1] == 64
  np.testing.assert_array_equal(rep.pool_y, np.tile(plain.pool_y, 3))
  np.testing.assert_array_equal(rep.test_x, plain.test_x)
  # Every copy is its image plus N(0, 0.1) noise, independent across copies.
  for c in range(3):
    noise = rep.pool_x[c * n : (c + 1) * n] - plain.pool_x
    assert abs(noise.std() - 0.1) < 0.005 and abs(noise.mean()) < 0.005
  assert abs(plain.pool_x.mean()) < 1e-5 and abs(plain.pool_x.std() - 1) < 1e-4


def _npz(tmp_path, **arrays):
  path = tmp_path / "data.npz"
  np.savez(path, **arrays)
  return str(path)


def test_bad_user_data(tmp_path, rng):
  x = rng.standard_normal((40, 5))
  y = rng.integers(0, 3, 40)
  with pytest.raises(
    ValueError,
    match=r"no array named 'y' or 'labels'.*"
    r"holds \['features'\]",
  ):
    datasets.load_npz_data(_npz(tmp_path, features=x))
  with pytest.raises(ValueError, match="no array named 'x'"):
    datasets.load_npz_data(_npz(tmp_path, y=y))
  with pytest.raises(ValueError, match="x has 40 points but y has 39 labels"):
    datasets.load_npz_data(_npz(tmp_path, x=x, y=y[:39]))
  with pytest.raises(ValueError, match="integer class labels"):
    datasets.load_npz_data(_npz(tmp_path, x=x, y=y + 0.5))
  with pytest.raises(ValueError, match="contains NaN"):
    datasets.load_npz_data(_npz(tmp_path, x=np.where(x > 2, np.nan, x), y=y))
  with pytest.raises(ValueError, match="both x_test and y_test"):
    datasets.load_npz_data(_npz(tmp_path, x=x, y=y, x_test=x))
  with pytest.raises(ValueError, match="x_test has 40 points but y_test"):
    datasets.load_npz_data(_npz(tmp_path, x=x, y=y, x_test=x, y_test=y[:3]))
  with pytest.raises(ValueError, match="no such file"):
    datasets.load_npz_data(str(tmp_path / "missing.npz"))
  data = datasets.load_npz_data(_npz(tmp_path, x=x, y=y.astype(float)))
  assert len(data.pool_y) == 32 and len(data.test_y) == 8  # 20% held out
  with pytest.raises(
    ValueError,
    match=r"the pool has 32 points but the"
    r" budget needs 35 \(--initial 5 \+ --rounds 3 x"
    r" --batch-size 10\)",
  ):
    datasets.check_budget(data, 5, 3, 10)


def test_cli_reports_errors(tmp_path, capsys):
  path = _npz(tmp_path, x=np.ones((12, 2)), y=np.arange(12) % 2)
  rc = experiment.main(["--data", path, "--out", str(tmp_path / "o")] + TINY)
  assert rc == 2
  assert "budget needs 20" in capsys.readouterr().err
  rc = experiment.main(
    ["--strategies", "random,nope", "--out", str(tmp_path / "o")] + TINY
  )
  assert rc == 2
  err = capsys.readouterr().err
  assert "unknown strategy 'nope'" in err and "bald" in err
  with pytest.raises(SystemExit):
    experiment.main(["--batch-size", "0"])


def test_cli_mc_dropout_needs_a_model_with_dropout(capsys):
  # A linear model has no dropout layer: its K MC-dropout samples would be
  # identical (BALD = 0 everywhere), so this is refused up front.
  with pytest.raises(SystemExit):
    experiment.main(["--model", "linear", "--mc-dropout", "10"])
  err = capsys.readouterr().err
  assert "--mc-dropout 10 with --model linear" in err
  assert "MC dropout needs a model with dropout" in err
  with pytest.raises(SystemExit):
    experiment.main(["--mc-dropout", "4", "--dropout", "0"])
  assert "--dropout 0" in capsys.readouterr().err
  # A linear model with an ensemble is fine (parses and checks).
  p = cli.build_parser()
  args = p.parse_args(["--model", "linear", "--ensemble", "3"])
  cli._check_args(p, args)  # pylint: disable=protected-access
  assert args.hidden == []


def test_cli_batchbald_num_configurations():
  p = cli.build_parser()
  args = p.parse_args(["--num-configurations", "64"])
  cli._check_args(p, args)  # pylint: disable=protected-access
  assert run.strategy_options("batchbald", args) == {"num_configurations": 64}
  assert run.strategy_options("bald", args) == {}
  assert args.chunk_size is None  # the library default (1024 rows)
  with pytest.raises(SystemExit):  # the old flag is gone
    p.parse_args(["--num-samples", "64"])
  with pytest.raises(SystemExit):
    experiment.main(["--num-configurations", "0"])
  with pytest.raises(SystemExit):
    experiment.main(["--chunk-size", "0"])


def test_area_under_curve():
  labels = np.array([10, 20, 40])
  acc = np.array([[0.5, 0.7, 0.9], [0.4, 0.4, 0.4]])
  expected = [((0.5 + 0.7) / 2 * 10 + (0.7 + 0.9) / 2 * 20) / 30, 0.4]
  np.testing.assert_allclose(report.area_under_curve(labels, acc), expected)


def test_module_entry_point_lists_strategies():
  out = subprocess.run(
    [sys.executable, "-m", "alfx.experiment", "--list"],
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  ).stdout
  assert "random" in out and "bald" in out


EXAMPLES = [
  ("mc_dropout_batchbald.py", ["--rounds", "1"], "batchbald"),
  (
    "ensemble_bait.py",
    ["--rounds", "1", "--strategies", "random,bait-full"],
    "bait-full",
  ),
  ("vmap_seeds.py", ["--seeds", "2", "--rounds", "1"], "bald"),
  ("nnx_active_learning.py", ["--rounds", "1"], "kbald-2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script,args,needs", EXAMPLES)
def test_examples_run(script, args, needs):
  import alfx  # pylint: disable=g-import-not-at-top

  if needs not in alfx.strategy_names():
    pytest.skip(f"{needs} is not registered in this build")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
    [sys.executable, os.path.join(root, "examples", script)] + args,
    capture_output=True,
    text=True,
    cwd=root,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "accuracy" in result.stdout

"""alfx-experiment's command line: flags, presets, durable runs, the report.

The end-to-end runs use scikit-learn's digits and tiny models; the kill and
resume test runs the command in subprocesses (bounded waits, every process
killed on the way out).
"""

import contextlib
import csv
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alfx import experiment
from alfx.experiment import cli
from alfx.experiment import durable
from alfx.experiment import presets
from alfx.experiment import report
from alfx.experiment import run
from tests import test_experiment

# test_experiment's tiny run, on digits only, with a 2-member ensemble.
# (--rounds stays at index 2: a test changes it by position.)
TINY = ["--datasets", "digits", *test_experiment.TINY, "--ensemble", "2"]
TIMING = ("acquisition_seconds",)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def without_timing(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ----------------------------------------------------------------------------
# Flags


def test_every_flag_has_help():
  missing = [
    "/".join(a.option_strings) or a.dest
    for a in cli.build_parser()._actions  # pylint: disable=protected-access
    if not (a.help and a.help.strip())
  ]
  assert not missing, f"flags without help text: {missing}"


def test_strategy_options_parsed_merged_and_checked(tmp_path, capsys):
  p = cli.build_parser()
  argv = [
    "--strategies",
    "batchbald,kbald-dynamic",
    "--strategy-option",
    "kbald-dynamic:tolerance=0.1",
    "--strategy-option",
    "batchbald:num_configurations=64",
  ]
  args = p.parse_args(argv)
  cli._check_args(p, args, argv)  # pylint: disable=protected-access
  assert run.strategy_options("kbald-dynamic", args) == {"tolerance": 0.1}
  # The explicit option wins over --num-configurations (1000 by default).
  assert run.strategy_options("batchbald", args) == {"num_configurations": 64}
  assert run.strategy_options("bald", args) == {}
  # An option the strategy does not take: the message names the valid ones.
  out = str(tmp_path / "o")
  rc = experiment.main(
    TINY
    + [
      "--strategies",
      "random,kbald-dynamic",
      "--strategy-option",
      "kbald-dynamic:tolerence=0.1",
      "--out",
      out,
    ]
  )
  assert rc == 2
  err = capsys.readouterr().err
  assert "--strategy-option kbald-dynamic:tolerence=0.1" in err
  assert "valid options: tolerance" in err
  assert not os.path.exists(os.path.join(out, "run.json"))  # nothing started
  with pytest.raises(SystemExit):  # not NAME:KEY=VALUE
    experiment.main(["--strategy-option", "tolerance=0.1", "--out", out])
  assert "expected NAME:KEY=VALUE" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # a strategy that is not run
    experiment.main(
      ["--strategies", "bald", "--strategy-option", "powerbald:beta=2"]
    )
  assert "powerbald, which is not among" in capsys.readouterr().err


def test_data_and_datasets_together_is_an_error(tmp_path, capsys):
  path = tmp_path / "d.npz"
  np.savez(path, x=np.ones((40, 3)), y=np.arange(40) % 2)
  for flag in (["--datasets", "digits"], ["--datasets=digits"]):
    with pytest.raises(SystemExit):
      experiment.main(["--data", str(path)] + flag)
    assert "--data and --datasets both given" in capsys.readouterr().err
  p = cli.build_parser()
  with pytest.raises(SystemExit):  # no abbreviations: --data is not --datas
    p.parse_args(["--datas", "digits"])


def test_progress_is_one_line_per_round_off_a_terminal(capsys, monkeypatch):
  bar = run.progress_bar(3, True)  # capsys's stderr is not a terminal
  bar.set_description("digits/bald")
  for r in range(3):
    bar.set_postfix_str(f"accuracy 0.{r}")
    bar.update(1)
  bar.close()
  err = capsys.readouterr().err
  assert "\r" not in err
  assert err.splitlines() == [
    line
    for line in err.splitlines()
    if line.startswith("digits/bald: ") and "rounds, accuracy 0." in line
  ]
  assert len(err.splitlines()) == 3 and "3/3 rounds" in err.splitlines()[-1]
  quiet = run.progress_bar(3, False)
  quiet.update(1)
  assert capsys.readouterr().err == ""
  tqdm = pytest.importorskip("tqdm")

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  monkeypatch.setattr(sys, "stderr", Terminal())
  bar = run.progress_bar(3, True)
  assert isinstance(bar, tqdm.tqdm)
  bar.close()


# ----------------------------------------------------------------------------
# The report


def _rows(rng, strategies, seeds, rounds, datasets=("digits",)):
  return [
    {
      "dataset": d,
      "strategy": s,
      "seed": seed,
      "round": r,
      "num_labeled": 10 + 5 * r,
      "accuracy": float(rng.uniform(0.3, 0.9)),
      "train_loss": "",
      "acquisition_seconds": "",
    }
    for d in datasets
    for s in strategies
    for seed in range(seeds)
    for r in range(rounds + 1)
  ]


def test_plot_title_is_never_clipped(rng):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = _rows(rng, ["random", "bald"], 2, 3)
  title = (
    "batchbald-repeated-mnist: mlp [64] MC dropout K=10 (rate 0.5); B=10,"
    " 28 rounds from 20 labels; 5 seeds; 500 Adam steps (lr 0.001, batch"
    " 64) " + "x" * 150  # and one word too long for any line
  )
  for datasets in (("digits",), ("digits", "repeated-digits")):
    fig = report.figure(
      [dict(r, dataset=d) for d in datasets for r in rows], title
    )
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()  # pylint: disable=protected-access
    assert box.x0 >= 0 and box.y0 >= 0, box
    assert box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, box
    for ax in fig.axes:  # the title does not cover the panels' titles
      assert ax.title.get_window_extent().y1 <= box.y0 + 1
    plt.close(fig)


def _exact_bootstrap_means(d):
  """Every resample of the seeds (S**S, equally likely) and its mean."""
  s = len(d)
  return np.array(
    [d[list(i)].mean() for i in itertools.product(range(s), repeat=s)]
  )


def test_paired_difference_against_the_exact_bootstrap(rng):
  for s in (3, 5):
    a, b = rng.uniform(0.5, 0.9, s), rng.uniform(0.5, 0.9, s)
    diff = report.paired_difference(a, b)
    d = a.astype(np.float64) - b
    np.testing.assert_allclose(diff.mean, np.mean(d), rtol=1e-12)
    # The interval's ends are the 2.5% and 97.5% quantiles of the exact
    # bootstrap distribution (all S**S resamples), up to Monte Carlo error.
    exact = _exact_bootstrap_means(d)
    eps = 1e-12
    for end, q in ((diff.low, 0.025), (diff.high, 0.975)):
      assert np.mean(exact <= end + eps) >= q - 0.01
      assert np.mean(exact < end - eps) <= q + 0.01
    assert diff.low <= diff.mean <= diff.high
    # A fixed bootstrap seed: the same interval every time.
    assert report.paired_difference(a, b) == diff
  same = report.paired_difference(np.ones(4), np.ones(4))
  assert same == (0.0, 0.0, 0.0)
  with pytest.raises(ValueError, match="paired"):
    report.paired_difference(np.ones(3), np.ones(4))


def test_summary_table_paired_aulc_differences(rng):
  strategies, seeds, rounds = ["random", "bald", "batchbald"], 4, 3
  rows = _rows(rng, strategies, seeds, rounds)
  # Brute force: each seed's trapezoid area by hand, then the differences.
  aulc = {}
  for s in strategies:
    per_seed = []
    for seed in range(seeds):
      pts = sorted(
        (r["num_labeled"], r["accuracy"])
        for r in rows
        if r["strategy"] == s and r["seed"] == seed
      )
      area = sum(
        (x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:])
      )
      per_seed.append(area / (pts[-1][0] - pts[0][0]))
    aulc[s] = np.array(per_seed)
  best = max(strategies, key=lambda s: aulc[s].mean())
  table = report.summary_table(rows, [])
  lines = {line.split(" | ")[1]: line for line in table.splitlines()[2:5]}
  for s in strategies:
    cells = [c.strip() for c in lines[s].split("|")]
    vs_random = report.paired_difference(aulc[s], aulc["random"])
    vs_best = report.paired_difference(aulc[s], aulc[best])
    fmt = lambda d: f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    assert cells[6] == fmt(vs_random)
    assert cells[7] == fmt(vs_best)
  assert f"best by mean AULC: digits: {best}" in table


# ----------------------------------------------------------------------------
# Presets


def test_kbald_presets_differ_only_in_batch_size():
  b5, b10 = (presets.get_preset(f"kbald-mnist-b{b}") for b in (5, 10))
  for p, b in ((b5, 5), (b10, 10)):
    assert p.values["batch_size"] == b
    # From 20 labels to the papers' 300.
    assert p.values["initial"] + p.values["rounds"] * b == 300
  same = lambda v: {
    k: x for k, x in v.items() if k not in ("batch_size", "rounds")
  }
  assert same(b5.values) == same(b10.values)
  bb = presets.get_preset("batchbald-repeated-mnist").values
  assert bb["initial"] + bb["rounds"] * bb["batch_size"] == 300


def _run_preset_in_miniature(name, tmp_path, model=None):
  preset = presets.get_preset(name)
  out = tmp_path / "run"
  argv = [
    "--preset",
    name,
    "--datasets",
    "digits",
    "--rounds",
    "1",
    "--seeds",
    "1",
    "--initial",
    "10",
    "--batch-size",
    "2",
    "--train-steps",
    "2",
    "--no-plot",
    "--no-progress",
    "--out",
    str(out),
  ]
  overridden = {"datasets", "rounds", "seeds", "initial", "batch_size"}
  overridden |= {"train_steps", "mc_dropout"}
  if preset.values.get("mc_dropout"):
    argv += ["--mc-dropout", "3"]
  if model is not None:
    argv += ["--model", model]
    overridden.add("model")
  assert experiment.main(argv) == 0
  config = json.loads((out / "run.json").read_text())["config"]
  assert config["preset"] == name
  # The preset's values, except where a flag overrides them.
  for key, value in preset.values.items():
    if key == "strategies":
      assert config[key] == value.split(",")
    elif key == "strategy_option":
      for item in value:
        s, _, pair = item.partition(":")
        k, _, v = pair.partition("=")
        assert config["strategy_options"][s][k] == json.loads(v)
    elif key not in overridden:
      assert config[key] == value, key
  assert config["batch_size"] == 2 and config["rounds"] == 1
  rows = read_csv(out / "results.csv")
  assert [r["strategy"] for r in rows] == [
    s for s in preset.values["strategies"].split(",") for _ in range(2)
  ]
  assert {r["num_labeled"] for r in rows} == {"10", "12"}


# kbald-mnist-b10 runs the same miniature as kbald-mnist-b5 (the flags that
# differ are overridden): one of them is enough. The MNIST presets' CNN
# costs a minute of compilation: an MLP stands in here, the CNN runs in the
# slow test below.
@pytest.mark.parametrize(
  "name", [n for n in presets.preset_names() if n != "kbald-mnist-b10"]
)
def test_preset_runs_in_miniature(name, tmp_path):
  cnn = presets.get_preset(name).values.get("model") == "cnn"
  _run_preset_in_miniature(name, tmp_path, model="mlp" if cnn else None)


@pytest.mark.slow
def test_preset_runs_in_miniature_with_its_cnn(tmp_path):
  _run_preset_in_miniature("batchbald-repeated-mnist", tmp_path)


def test_preset_needing_features_says_so(capsys):
  with pytest.raises(SystemExit):
    experiment.main(["--preset", "fast-fishing"])
  assert "--data FILE.npz" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Durable runs


def _manifest_for(argv, out):
  p = cli.build_parser()
  args = p.parse_args(argv)
  cli._check_args(p, args, argv)  # pylint: disable=protected-access
  os.makedirs(out, exist_ok=True)
  durable.write_manifest(
    out, durable.new_manifest(cli.run_config(args, ["random", "bald"]))
  )


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
  out = str(tmp_path / "run")
  argv = TINY + ["--strategies", "random,bald", "--out", out]
  _manifest_for(argv, out)
  rc = experiment.main(argv[:3] + ["3"] + argv[4:] + ["--resume"])
  assert rc == 2
  err = capsys.readouterr().err
  assert "different configuration (rounds: 2 -> 3)" in err
  # Without --resume an unfinished run is not overwritten silently.
  assert experiment.main(argv) == 2
  err = capsys.readouterr().err
  assert "unfinished run" in err and "--resume" in err and "--overwrite" in err
  manifest = durable.read_manifest(out)
  assert manifest is not None and manifest["config"]["rounds"] == 2
  assert set(manifest["versions"]) == {"alfx", "jax", "python"}
  with pytest.raises(SystemExit):
    experiment.main(argv + ["--resume", "--overwrite"])


def test_ctrl_c_leaves_csv_and_plot_and_resume_completes(
  tmp_path, monkeypatch, capsys
):
  argv = TINY + ["--strategies", "random,bald"]
  base = tmp_path / "base"
  assert experiment.main(argv + ["--out", str(base)]) == 0
  expected = read_csv(base / "results.csv")
  assert json.loads((base / "run.json").read_text())["finished"]

  out = tmp_path / "run"
  save = durable.save_checkpoint
  calls = []

  def interrupt_on_fifth(path, **arrays):
    calls.append(path)
    if len(calls) == 5:  # random's 3 rounds, bald's first; then Ctrl-C
      raise KeyboardInterrupt
    save(path, **arrays)

  monkeypatch.setattr(durable, "save_checkpoint", interrupt_on_fifth)
  assert experiment.main(argv + ["--out", str(out)]) == 130
  text = capsys.readouterr().out
  assert "interrupted after" in text and "--resume" in text
  monkeypatch.setattr(durable, "save_checkpoint", save)
  partial = read_csv(out / "results.csv")
  # Rows of whole rounds, all valid: random's 3 and bald's first 2 (the
  # second's rows were flushed before the interrupt hit its checkpoint).
  assert without_timing(partial) == without_timing(expected[: 2 * 5])
  assert (out / "learning_curves.png").stat().st_size > 1000
  assert not json.loads((out / "run.json").read_text())["finished"]
  # A kill in the middle of writing a row leaves a torn line: dropped.
  with open(out / "results.csv", "a") as f:
    f.write("digits,bald,0,2,2")
  assert experiment.main(argv + ["--out", str(out), "--resume"]) == 0
  resumed = read_csv(out / "results.csv")
  assert without_timing(resumed) == without_timing(expected)
  manifest = json.loads((out / "run.json").read_text())
  assert manifest["finished"] and len(manifest["resumed"]) == 1
  # Resuming a finished run recomputes nothing and reports it again.
  assert experiment.main(argv + ["--out", str(out), "--resume"]) == 0
  assert read_csv(out / "results.csv") == resumed
  assert "| digits | bald |" in capsys.readouterr().out


def test_sigterm_stops_a_run_like_ctrl_c():
  before = signal.getsignal(signal.SIGTERM)
  undo = durable.interrupt_on_sigterm()
  try:
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # the handler raises before this ends
  finally:
    undo()
  assert signal.getsignal(signal.SIGTERM) == before


@contextlib.contextmanager
def _process(cmd, **kwargs):
  proc = subprocess.Popen(cmd, **kwargs)
  try:
    yield proc
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait(timeout=60)


def _data_rows(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max(0, sum(1 for line in f if line.endswith("\n")) - 1)


def test_killed_run_resumes_to_the_uninterrupted_csv(tmp_path):
  argv = [a for a in TINY if a != "--no-progress"] + [
    "--strategies",
    "random,bald,entropy",
    "--rounds",
    "3",
    "--train-steps",
    "5",
  ]
  cmd = [sys.executable, "-m", "alfx.experiment"] + argv
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base, out = tmp_path / "base", tmp_path / "run"
  logs = {name: open(tmp_path / f"{name}.err", "w") for name in "abc"}
  try:
    # The uninterrupted run and the one to kill, side by side.
    with (
      _process(
        cmd + ["--out", str(base)],
        stdout=subprocess.DEVNULL,
        stderr=logs["a"],
        env=env,
      ) as full,
      _process(
        cmd + ["--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=logs["b"],
        env=env,
      ) as victim,
    ):
      deadline = time.monotonic() + 400
      while _data_rows(out / "results.csv") == 0:
        assert victim.poll() is None, (tmp_path / "b.err").read_text()
        assert time.monotonic() < deadline, "no rows after 400 s"
        time.sleep(0.01)
      victim.send_signal(signal.SIGKILL)
      victim.wait(timeout=60)
      assert full.wait(timeout=400) == 0, (tmp_path / "a.err").read_text()
    expected = read_csv(base / "results.csv")
    assert len(expected) == 3 * 2 * 4  # strategies x seeds x (rounds + 1)
    assert 0 < _data_rows(out / "results.csv") < len(expected)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["finished"] is False
    with _process(
      cmd + ["--out", str(out), "--resume"],
      stdout=subprocess.DEVNULL,
      stderr=logs["c"],
      env=env,
    ) as resumed:
      assert resumed.wait(timeout=400) == 0, (tmp_path / "c.err").read_text()
  finally:
    for f in logs.values():
      f.close()
  assert without_timing(read_csv(out / "results.csv")) == without_timing(
    expected
  )
  # Off a terminal the progress is one line per round, never redrawn.
  err = (tmp_path / "a.err").read_text()
  progress = [line for line in err.splitlines() if " rounds" in line]
  assert len(progress) == 3 * 4 and "\r" not in err
  assert "resuming the run started" in (tmp_path / "c.err").read_text()


def test_image_datasets_from_a_data_dir_subsampled(tmp_path, capsys, rng):
  # Tiny MNIST files in the exact IDX format; nothing touches the network.
  from tests.test_experiment_datasets import fake_idx_dataset

  folder = tmp_path / "data" / "mnist"
  folder.mkdir(parents=True)
  fake_idx_dataset(str(folder), rng, n_train=40, n_test=20)
  out = tmp_path / "run"
  argv = ["--datasets", "mnist", "--data-dir", str(tmp_path / "data")]
  argv += ["--pool-size", "30", "--test-size", "10", "--strategies"]
  argv += ["random", "--rounds", "1", "--seeds", "1", "--initial", "10"]
  argv += ["--batch-size", "2", "--train-steps", "2", "--no-plot"]
  argv += ["--no-progress", "--out", str(out)]
  assert experiment.main(argv) == 0
  printed = capsys.readouterr().out
  assert "mnist: pool 30, test 10, inputs [28, 28, 1], 10 classes" in printed
  config = json.loads((out / "run.json").read_text())["config"]
  assert config["pool_size"] == 30 and config["test_size"] == 10
  assert "data_dir" not in config  # where the files are is not the config
  assert len(read_csv(out / "results.csv")) == 2
  # Missing files: the error names where to put them and --download.
  empty = tmp_path / "empty"
  argv[3] = str(empty)
  assert experiment.main(argv[:-1] + [str(tmp_path / "run2")]) == 2
  err = capsys.readouterr().err
  assert str(empty / "mnist") in err and "--download" in err
  with pytest.raises(SystemExit):
    experiment.main(["--pool-size", "0"])
  assert "--pool-size must be >= 1" in capsys.readouterr().err

"""alfx-select: every input form, the picks against direct calls, every error.

Tiny pools written to ``tmp_path``; most tests call `alfx.select.main` in
process (fast), a few run ``python -m alfx.select`` as a user would.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import alfx
from alfx.select import arrays
from alfx.select import cli
from alfx.select import inputs
from alfx.select import strategies
from tests import conformance_cases

N, K, C, D, B = 24, 4, 3, 5, 3


def _log_probs(rng, n=N, k=K, c=C):
  x = rng.normal(size=(n, k, c)) * 2
  return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


@pytest.fixture
def data(rng, tmp_path):
  lp = _log_probs(rng)
  labeled = np.zeros(N, bool)
  labeled[rng.choice(N, 5, replace=False)] = True
  emb = rng.normal(size=(N, D)).astype(np.float32)
  paths = {}
  for name, arr in (("lp", lp), ("labeled", labeled), ("emb", emb)):
    paths[name + "_file"] = str(tmp_path / f"{name}.npy")
    np.save(paths[name + "_file"], arr)
  return dict(lp=lp, labeled=labeled, emb=emb, dir=tmp_path, **paths)


def run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def picks(out):
  lines = out.strip().splitlines()
  assert lines[0] == "rank,index,score", out
  rows = [ln.split(",") for ln in lines[1:]]
  assert [int(r[0]) for r in rows] == list(range(len(rows)))
  return [int(r[1]) for r in rows], np.array([float(r[2]) for r in rows])


def assert_same(out, sel, labeled=None):
  indices, scores = picks(out)
  assert indices == np.asarray(sel.indices).tolist()
  np.testing.assert_allclose(scores, np.asarray(sel.scores), rtol=1e-5)
  if labeled is not None:
    assert not labeled[indices].any()


def test_batchbald_equals_the_direct_call(data, capsys):
  rc, out, err = run(
    capsys, "--log-probs", data["lp_file"], "--labeled", data["labeled_file"],
    "--strategy", "batchbald", "--batch-size", B, "--seed", 3,
  )  # fmt: skip
  assert rc == 0, err
  sel = alfx.batchbald(
    data["lp"], B, key=jax.random.key(3), mask=~data["labeled"]
  )
  assert_same(out, sel, data["labeled"])


@pytest.mark.parametrize(
  "form", ["probs", "logits", "knc", "npz", "npz-array", "npz-colon"]
)
def test_every_predictions_form_gives_the_same_picks(data, capsys, form):
  lp, d = data["lp"], data["dir"]
  flag, extra = "--log-probs", []
  if form == "probs":
    flag, path = "--probs", d / "p.npy"
    np.save(path, np.exp(lp.astype(np.float64)))
  elif form == "logits":
    flag, path = "--logits", d / "z.npy"
    np.save(path, lp + np.arange(N * K).reshape(N, K, 1))
  elif form == "knc":
    path, extra = d / "knc.npy", ["--layout", "KNC"]
    np.save(path, np.swapaxes(lp, 0, 1))
  elif form == "npz":
    path = d / "one.npz"
    np.savez_compressed(path, preds=lp)
  else:
    path = d / "two.npz"
    np.savez(path, pool=lp, other=lp[:2])
    if form == "npz-array":
      extra = ["--array", "pool"]
    else:
      path = f"{path}:pool"
  rc, out, err = run(
    capsys, flag, path, "--strategy", "bald", "--batch-size", B, *extra
  )
  assert rc == 0, err
  assert_same(out, alfx.topk_bald(lp, B))


def test_half_precision_probabilities_are_accepted(data, capsys):
  # float16 rows sum to 1 only within ~1e-3: checked at float16's tolerance,
  # then renormalised so that alfx's float32 checks pass too.
  p16 = np.exp(data["lp"]).astype(np.float16)
  assert np.abs(p16.astype(np.float32).sum(-1) - 1).max() > 2e-4
  np.save(data["dir"] / "p16.npy", p16)
  rc, out, err = run(
    capsys, "--probs", data["dir"] / "p16.npy", "--strategy", "bald",
    "--batch-size", B,
  )  # fmt: skip
  assert rc == 0, err
  p = p16.astype(np.float64)
  lp = np.log(p / p.sum(-1, keepdims=True)).astype(np.float32)
  assert_same(out, alfx.topk_bald(lp, B))


def test_one_model_predictions_are_k_equals_1(data, capsys):
  path = data["dir"] / "nc.npy"
  np.save(path, data["lp"][:, 0])
  rc, out, err = run(
    capsys, "--log-probs", path, "--strategy", "entropy", "--batch-size", B
  )
  assert rc == 0, err
  scores = alfx.predictive_entropy(data["lp"][:, :1])
  assert_same(out, alfx.top_b(scores, B))


@pytest.mark.parametrize("form", ["mask", "npy", "txt", "csv"])
def test_labeled_as_mask_or_indices(data, capsys, form):
  labeled, d = data["labeled"], data["dir"]
  idx = np.flatnonzero(labeled)
  path = {"mask": d / "m.npy", "npy": d / "i.npy", "txt": d / "i.txt"}.get(
    form, d / "i.csv"
  )
  if form == "mask":
    np.save(path, labeled)
  elif form == "npy":
    np.save(path, idx)
  elif form == "txt":
    path.write_text("\n".join(map(str, idx)) + "\n")
  else:  # alfx-select's own output format, fed back
    path.write_text(
      "rank,index,score\n"
      + "".join(f"{r},{i},0.5\n" for r, i in enumerate(idx))
    )
  rc, out, err = run(
    capsys, "--log-probs", data["lp_file"], "--labeled", path,
    "--strategy", "kbald-2", "--batch-size", B,
  )  # fmt: skip
  assert rc == 0, err
  assert_same(out, alfx.kbald(data["lp"], B, mask=~labeled), labeled)


def test_labeled_files_add_up(data, capsys):
  # Round 2: the first labelled set plus round 1's picks (its own CSV).
  common = ["--log-probs", data["lp_file"], "--strategy", "bald"]
  common += ["--batch-size", B, "--labeled", data["labeled_file"]]
  rc, first, err = run(capsys, *common)
  assert rc == 0, err
  (data["dir"] / "round1.csv").write_text(first)
  rc, second, err = run(
    capsys, *common, "--labeled", data["dir"] / "round1.csv"
  )
  assert rc == 0, err
  labeled = data["labeled"].copy()
  labeled[picks(first)[0]] = True
  assert_same(second, alfx.topk_bald(data["lp"], B, mask=~labeled), labeled)


def test_mask_restricts_the_candidates(data, capsys):
  path = data["dir"] / "sel.txt"
  allowed = [1, 4, 7, 9, 20]
  path.write_text(",".join(map(str, allowed)))
  rc, out, err = run(
    capsys, "--log-probs", data["lp_file"], "--mask", path,
    "--strategy", "bald", "--batch-size", B,
  )  # fmt: skip
  assert rc == 0, err
  mask = np.isin(np.arange(N), allowed)
  assert_same(out, alfx.topk_bald(data["lp"], B, mask=mask))
  assert set(picks(out)[0]) <= set(allowed)


def test_bait_takes_embeddings_and_the_mean_prediction(data, capsys):
  lp, emb, labeled = data["lp"], data["emb"], data["labeled"]
  probs = np.exp(lp).mean(1)
  common = ["--log-probs", data["lp_file"], "--embeddings", data["emb_file"]]
  common += ["--labeled", data["labeled_file"], "--batch-size", B]
  rc, out, err = run(capsys, *common, "--strategy", "bait-full")
  assert rc == 0, err
  sel = alfx.bait(emb, probs, B, labeled=labeled, mask=~labeled)
  assert_same(out, sel, labeled)
  # --embedding-probs: the probabilities of the network behind the embeddings.
  own = np.exp(lp[:, 1]).astype(np.float32)
  np.save(data["dir"] / "own.npy", own)
  rc, out, err = run(
    capsys, *common, "--strategy", "bait-full",
    "--embedding-probs", data["dir"] / "own.npy",
  )  # fmt: skip
  assert rc == 0, err
  assert_same(out, alfx.bait(emb, own, B, labeled=labeled, mask=~labeled))


def test_epig_strategies_use_the_given_targets(data, capsys, rng):
  lp, labeled = data["lp"], data["labeled"]
  targets = _log_probs(rng, n=7)
  path = data["dir"] / "targets.npy"
  np.save(path, targets)
  common = ["--log-probs", data["lp_file"], "--labeled", data["labeled_file"]]
  common += ["--targets", path, "--batch-size", B, "--seed", 2]
  rc, out, err = run(capsys, *common, "--strategy", "epig")
  assert rc == 0, err
  expected = alfx.top_b(alfx.epig(lp, targets), B, mask=~labeled)
  assert_same(out, expected, labeled)
  rc, out, err = run(
    capsys, *common, "--strategy", "batch-epig",
    "--option", "num_configurations=50",
  )  # fmt: skip
  assert rc == 0, err
  expected = alfx.batch_epig(
    lp, targets, B, key=jax.random.key(2), mask=~labeled, num_configurations=50
  )
  assert_same(out, expected, labeled)
  rc, out, err = run(capsys, *common, "--strategy", "kepig-2")
  assert rc == 0, err
  assert_same(out, alfx.kepig(lp, targets, B, mask=~labeled), labeled)


def test_epig_without_targets_runs_the_registry_strategy(data, capsys):
  rc, out, err = run(
    capsys, "--log-probs", data["lp_file"], "--strategy", "epig",
    "--batch-size", B, "--option", "num_targets=10",
  )  # fmt: skip
  assert rc == 0, err
  strategy = alfx.get_strategy("epig", num_targets=10)
  context = alfx.StrategyContext(
    log_probs=jax.numpy.asarray(data["lp"]),
    embeddings=np.zeros((N, 0), np.float32),
    probs=np.zeros((N, 0), np.float32),
    labeled=np.zeros(N, bool),
  )
  sel = strategy(context, B, key=jax.random.key(0), mask=np.ones(N, bool))
  assert_same(out, sel)


def test_output_formats(data, capsys):
  d = data["dir"]
  common = [
    "--log-probs",
    data["lp_file"],
    "--strategy",
    "bald",
    "--batch-size",
    B,
  ]
  sel = alfx.topk_bald(data["lp"], B)
  rc, out, err = run(capsys, *common, "--out", d / "p.csv")
  assert rc == 0 and out == "" and "wrote 3 picks" in err, err
  assert_same((d / "p.csv").read_text(), sel)
  rc, out, err = run(capsys, *common, "--format", "json")
  assert rc == 0, err
  got = json.loads(out)
  assert got["indices"] == np.asarray(sel.indices).tolist()
  np.testing.assert_allclose(got["scores"], sel.scores, rtol=1e-5)
  assert (got["strategy"], got["batch_size"]) == ("bald", B)
  # The format follows --out's extension unless --format says otherwise.
  rc, _, err = run(capsys, *common, "--out", d / "p.npy")
  assert rc == 0, err
  loaded = np.load(d / "p.npy")
  assert loaded.dtype == np.int64
  assert loaded.tolist() == np.asarray(sel.indices).tolist()
  rc, _, err = run(capsys, *common, "--out", d / "p.json")
  assert rc == 0 and json.loads((d / "p.json").read_text())["indices"]


def test_only_valid_picks_are_written_and_the_shortfall_is_said(data, capsys):
  rc, out, err = run(
    capsys, "--log-probs", data["lp_file"], "--strategy", "kbald-dynamic",
    "--batch-size", 12, "--option", "tolerance=1e-6",
  )  # fmt: skip
  assert rc == 0, err
  sel = alfx.kbald_dynamic(data["lp"], 12, tolerance=1e-6)
  valid = np.asarray(sel.valid)
  assert 0 < valid.sum() < 12  # the case under test
  assert picks(out)[0] == np.asarray(sel.indices)[valid].tolist()
  assert f"returned {valid.sum()} valid picks of --batch-size 12" in err


def test_options_are_typed(data, capsys):
  assert strategies.parse_option("num-configurations=10") == (
    "num_configurations",
    10,
  )
  assert strategies.parse_option("beta=0.5") == ("beta", 0.5)
  assert strategies.parse_option("x=True") == ("x", True)
  assert strategies.parse_option("budget=none") == ("budget", None)
  rc, out, err = run(
    capsys, "--log-probs", data["lp_file"], "--strategy", "powerbald",
    "--batch-size", B, "--option", "beta=2", "--seed", 4,
  )  # fmt: skip
  assert rc == 0, err
  scores = alfx.bald(data["lp"])
  sel = alfx.stochastic_batch(scores, B, key=jax.random.key(4), beta=2.0)
  assert_same(out, sel)


def test_warnings_say_the_fix_once(rng, tmp_path, capsys):
  # [K, N, C] saved, read as NKC: more samples than points.
  path = tmp_path / "knc.npy"
  np.save(path, _log_probs(rng, n=3, k=8))  # [3, 8, C]: K > N is suspect
  rc, _, err = run(
    capsys, "--log-probs", path, "--strategy", "bald", "--batch-size", 1
  )
  assert rc == 0, err
  assert err.count("warning") == 1 and "--layout KNC" in err, err
  rc, _, err = run(
    capsys, "--log-probs", path, "--strategy", "bald", "--batch-size", 1,
    "--layout", "KNC",
  )  # fmt: skip
  assert rc == 0 and "warning" not in err, err  # [N=8, K=3]: fine
  np.save(path, _log_probs(rng)[:, 0])
  rc, _, err = run(
    capsys, "--log-probs", path, "--strategy", "bald", "--batch-size", 1
  )
  assert rc == 0 and "one posterior sample (K=1)" in err, err


def _errors(d, lp):
  """(name, argv, what the message must say) for every malformed input."""
  j = lambda name: str(d / name)
  np.save(j("4d.npy"), lp[None])
  np.save(j("short_emb.npy"), np.ones((N - 1, D), np.float32))
  np.save(j("nan_emb.npy"), np.full((N, D), np.nan, np.float32))
  np.save(j("short_mask.npy"), np.zeros(N - 2, bool))
  np.save(j("int_mask.npy"), (np.arange(N) % 2).astype(np.int64))
  np.save(j("far.npy"), np.array([0, N]))
  np.save(j("probs.npy"), np.exp(lp))
  np.save(j("half.npy"), np.exp(lp) / 2)
  np.save(j("logits.npy"), lp + 3)
  np.save(j("ints.npy"), np.ones((N, K, C), np.int64))
  nan = lp.copy()
  nan[3, 1, 0] = np.nan
  np.save(j("nan.npy"), nan)
  np.save(j("targets_k.npy"), lp[:4, :2])
  np.savez(j("two.npz"), a=lp, b=lp)
  (d / "x.pt").write_bytes(b"\x80\x02")
  (d / "bad.npy").write_bytes(b"not numpy")
  lpf = j("lp.npy")
  bald = ["--strategy", "bald", "--batch-size", B]
  return [
    ("missing", ["--log-probs", j("nope.npy"), *bald], "no such file"),
    ("extension", ["--log-probs", j("x.pt"), *bald], "expected a .npy or .npz"),
    ("not-npy", ["--log-probs", j("bad.npy"), *bald], "not a readable .npy"),
    ("npz-several", ["--log-probs", j("two.npz"), *bald], "2 arrays (a, b)"),
    ("npz-name", ["--log-probs", j("two.npz"), "--array", "c", *bald],
     "has no array 'c'; it holds: a, b"),
    ("ndim", ["--log-probs", j("4d.npy"), *bald], "expected [N, K, C]"),
    ("dtype", ["--log-probs", j("ints.npy"), *bald], "floating-point"),
    ("nan", ["--log-probs", j("nan.npy"), *bald], "NaN (first at pool point 3)"),
    ("probs-sum", ["--probs", j("half.npy"), *bald], "sum to 1"),
    ("probs-as-lp", ["--log-probs", j("probs.npy"), *bald], "pass --probs"),
    ("logits-as-lp", ["--log-probs", j("logits.npy"), *bald], "pass --logits"),
    ("emb-n", ["--log-probs", lpf, "--embeddings", j("short_emb.npy"),
               "--strategy", "coreset", "--batch-size", B],
     f"{N - 1} rows but the predictions have N={N}"),
    ("emb-nan", ["--log-probs", lpf, "--embeddings", j("nan_emb.npy"),
                 "--strategy", "coreset", "--batch-size", B], "NaN"),
    ("needs-emb", ["--log-probs", lpf, "--strategy", "bait-full",
                   "--batch-size", B], "needs --embeddings"),
    ("mask-n", ["--log-probs", lpf, "--labeled", j("short_mask.npy"), *bald],
     f"mask of length {N - 2}, but the predictions have N={N}"),
    ("sel-mask-n", ["--log-probs", lpf, "--mask", j("short_mask.npy"), *bald],
     "--mask: a boolean mask of length"),
    ("int-mask", ["--log-probs", lpf, "--labeled", j("int_mask.npy"), *bald],
     "save it as bool"),
    ("index-range", ["--log-probs", lpf, "--labeled", j("far.npy"), *bald],
     f"index {N} is outside the pool [0, {N})"),
    ("too-many", ["--log-probs", lpf, "--strategy", "bald",
                  "--batch-size", N + 1], f"only {N} of N={N} points"),
    ("strategy", ["--log-probs", lpf, "--strategy", "nope", "--batch-size", B],
     "unknown strategy 'nope'"),
    ("option", [*bald, "--log-probs", lpf, "--option", "foo=1"],
     "does not accept option(s) foo"),
    ("option-syntax", [*bald, "--log-probs", lpf, "--option", "beta"],
     "KEY=VALUE"),
    ("option-twice", ["--log-probs", lpf, "--strategy", "powerbald",
                      "--batch-size", B, "--option", "beta=1",
                      "--option", "beta=2"], "given twice"),
    ("targets-not-epig", [*bald, "--log-probs", lpf, "--targets", lpf],
     "does not use target inputs"),
    ("targets-k", ["--log-probs", lpf, "--strategy", "epig", "--batch-size",
                   B, "--targets", j("targets_k.npy")], "K=2"),
    ("num-targets", ["--log-probs", lpf, "--strategy", "epig", "--batch-size",
                     B, "--targets", lpf, "--option", "num_targets=5"],
     "drop it"),
    ("npy-stdout", [*bald, "--log-probs", lpf, "--format", "npy"],
     "give --out FILE.npy"),
    ("out-dir", [*bald, "--log-probs", lpf, "--out", j("no/such/p.csv")],
     "does not exist"),
    # A check of alfx's own (lam must be positive), surfaced as one line.
    ("alfx-check", ["--log-probs", lpf, "--embeddings", j("emb.npy"),
                    "--strategy", "bait-full", "--batch-size", B,
                    "--option", "lam=-1"], "strategy 'bait-full': lam"),
  ]  # fmt: skip


def test_every_malformed_input_is_one_clear_line(data, capsys):
  for name, argv, expected in _errors(data["dir"], data["lp"]):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (name, err)
    assert out == "", name
    assert err.startswith("alfx-select: error: "), (name, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
    assert expected in err, (name, expected, err)


def test_usage_errors_exit_2(data, capsys):
  for argv in (
    ["--strategy", "bald", "--batch-size", "3"],  # no predictions
    ["--log-probs", data["lp_file"], "--batch-size", "3"],  # no strategy
    ["--log-probs", data["lp_file"], "--strategy", "bald"],  # no batch size
    [
      "--log-probs",
      data["lp_file"],
      "--probs",
      data["lp_file"],
      "--strategy",
      "bald",
    ],
    ["--log-probs", data["lp_file"], "--strategy", "bald", "--batch-size", "0"],
  ):
    with pytest.raises(SystemExit) as e:
      cli.main([str(a) for a in argv])
    assert e.value.code == 2
    assert "alfx-select: error:" in capsys.readouterr().err


def test_list_names_every_strategy(capsys):
  rc, out, _ = run(capsys, "--list")
  assert rc == 0
  listed = [ln.split()[0] for ln in out.splitlines()]
  assert listed == list(alfx.strategy_names())
  assert "[needs --embeddings]" in out and "[takes --targets]" in out


def test_what_each_strategy_needs_agrees_with_the_conformance_table():
  # alfx-select names the embedding and EPIG strategies by name; the
  # conformance table says what each registered strategy reads. A new
  # strategy must be added to both.
  for name in alfx.strategy_names():
    needs = conformance_cases.STRATEGY_TRAITS[name][0]
    assert strategies.needs_embeddings(name) == ("embeddings" in needs), name
    assert strategies.is_epig(name) == ("epig" in name), name


def test_large_files_are_memory_mapped(rng, tmp_path, monkeypatch):
  lp = _log_probs(rng)
  np.save(tmp_path / "a.npy", lp)
  np.save(tmp_path / "knc.npy", np.swapaxes(lp, 0, 1))
  np.savez(tmp_path / "b.npz", x=lp, y=lp[:1])
  np.savez_compressed(tmp_path / "c.npz", x=lp)
  a = inputs.load_array(str(tmp_path / "a.npy"), "--f")
  b = inputs.load_array(str(tmp_path / "b.npz") + ":y", "--f")
  c = inputs.load_array(str(tmp_path / "c.npz"), "--f")
  assert isinstance(a, np.memmap) and isinstance(b, np.memmap)
  assert not isinstance(c, np.memmap)  # compressed: read into memory
  np.testing.assert_array_equal(a, lp)
  np.testing.assert_array_equal(b, lp[:1])
  np.testing.assert_array_equal(c, lp)
  # Chunked conversion (5 rows per chunk, also the KNC view of the file):
  # the same array as in one chunk, and a bad row found in a later chunk.
  monkeypatch.setattr(arrays, "CHUNK_ELEMENTS", K * C * 5)
  chunked = arrays.to_log_probs(np.exp(a), "probs", "--p")
  np.testing.assert_allclose(chunked, lp, atol=1e-6)
  knc = np.load(tmp_path / "knc.npy", mmap_mode="r")
  chunked = arrays.to_log_probs(knc, "log-probs", "--p", layout="KNC")
  np.testing.assert_allclose(chunked, lp, atol=1e-6)
  bad = np.exp(lp)
  bad[13, 2] *= 2
  with pytest.raises(inputs.InputError, match="pool point 13 .sample 2."):
    arrays.to_log_probs(bad, "probs", "--p")


def _subprocess(*argv, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "alfx.select", *map(str, argv)],
    capture_output=True,
    text=True,
    timeout=240,
    cwd=cwd,
    env=env,
    check=False,
  )


def test_python_dash_m_as_a_user_runs_it(data):
  lp = data["lp"]
  done = _subprocess(
    "--log-probs", "lp.npy", "--labeled", "labeled.npy",
    "--strategy", "batchbald", "--batch-size", B, cwd=data["dir"],
  )  # fmt: skip
  assert done.returncode == 0, done.stderr
  sel = alfx.batchbald(lp, B, key=jax.random.key(0), mask=~data["labeled"])
  assert_same(done.stdout, sel, data["labeled"])
  done = _subprocess(
    "--probs", "lp.npy", "--strategy", "bald", "--batch-size", B,
    cwd=data["dir"],
  )  # fmt: skip
  assert done.returncode == 2
  assert done.stderr.startswith("alfx-select: error: --probs:"), done.stderr
  assert "Traceback" not in done.stderr

"""BAIT (issue 4) against the dense float64 reference in reference_bait.py.

Picks and scores equal the reference's on every path, with and without a
backward pass, masks, zero probabilities, chunking and op by op. Problems
share a few static shapes (reference_bait.N, D, C) so that the suite compiles
each path only a handful of times; values (seeds, lam, the labelled set,
masks) vary freely.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from tests import reference_bait as ref
from tests.reference_bait import B
from tests.reference_bait import C
from tests.reference_bait import CAP
from tests.reference_bait import N
from tests.reference_bait import PATH_IDS
from tests.reference_bait import PATHS
from tests.reference_bait import PER_KIND
from tests.reference_bait import PER_KIND_IDS


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_float64_picks_and_scores_equal_reference(rng, kind, method):
  with jax.enable_x64(True):
    for trial in range(4):
      # lam != 1, L = 0 (trial 1), a large labelled set (trial 3).
      frac = (0.2, 0.0, 0.1, 0.4)[trial]
      emb, probs, labeled = ref.problem(rng, labeled_fraction=frac)
      lam = float(rng.uniform(0.2, 3.0))
      want = ref.bait(emb, probs, labeled, B, kind=kind, lam=lam)
      got = ref.run(emb, probs, labeled, B, kind, method, jnp.float64, lam=lam)
      assert got.scores.dtype == np.float64
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)
      assert got.valid.all()


@pytest.mark.parametrize("kind,method", PER_KIND, ids=PER_KIND_IDS)
def test_float64_oversample_one_equals_reference(rng, kind, method):
  # oversample = 1: forward picks only, no backward pass.
  with jax.enable_x64(True):
    for frac in (0.2, 0.0):
      emb, probs, labeled = ref.problem(rng, labeled_fraction=frac)
      want = ref.bait(emb, probs, labeled, B, kind=kind, lam=0.6, oversample=1)
      got = ref.run(
        emb, probs, labeled, B, kind, method, jnp.float64, lam=0.6, oversample=1
      )
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


def test_float64_oversample_three_equals_reference(rng):
  # Two backward rounds per kept pick.
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng)
    want = ref.bait(emb, probs, labeled, B, kind="full", oversample=3)
    got = ref.run(
      emb, probs, labeled, B, "full", "structured", jnp.float64, oversample=3
    )
    np.testing.assert_array_equal(got.indices, want["indices"])
    np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)
    assert len(want["dropped"]) == 2 * B


@pytest.mark.slow
@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_float64_larger_problem_and_oversample_variants(rng, kind, method):
  # N up to a few hundred, C = 5, D = 8; oversample = 1 (no backward pass)
  # and 3 (two backward rounds).
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng, n=240, dim=8, c=5)
    for oversample in (1, 3):
      want = ref.bait(
        emb, probs, labeled, 4, kind=kind, lam=0.7, oversample=oversample
      )
      got = ref.run(
        emb,
        probs,
        labeled,
        4,
        kind,
        method,
        jnp.float64,
        lam=0.7,
        oversample=oversample,
      )
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


@pytest.mark.slow
def test_topc_with_more_classes_kept(rng):
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng, n=80, dim=4, c=5)
    for method in ("dense", "structured"):
      want = ref.bait(emb, probs, labeled, 3, kind="topc", top_c=3)
      got = ref.run(
        emb, probs, labeled, 3, "topc", method, jnp.float64, top_c=3
      )
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_zero_probability_classes_give_no_nan(rng, kind, method):
  emb, probs, labeled = ref.problem(rng)
  probs[:10] = np.eye(C)[rng.integers(0, C, 10)]  # confident: p = 0 and 1
  probs[10:20, 0] = 0
  probs[10:20] /= probs[10:20].sum(-1, keepdims=True)
  with jax.enable_x64(True):
    want = ref.bait(emb, probs, labeled, B, kind=kind)
    got = ref.run(emb, probs, labeled, B, kind, method, jnp.float64)
    np.testing.assert_array_equal(got.indices, want["indices"])
  got32 = ref.run(emb, probs, labeled, B, kind, method, jnp.float32)
  assert np.isfinite(got32.scores).all()


# ---------------------------------------------------------------------------
# Masks, chunks, op by op, jit and vmap.


@pytest.mark.parametrize("kind,method", PATHS, ids=PATH_IDS)
def test_mask_respected_and_no_duplicates(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng)
    mask = (rng.random(N) < 0.4) & ~labeled
    want = ref.bait(emb, probs, labeled, B, kind=kind, mask=mask)
    got = ref.run(
      emb, probs, labeled, B, kind, method, jnp.float64, mask=jnp.asarray(mask)
    )
    np.testing.assert_array_equal(got.indices, want["indices"])
    assert mask[got.indices].all()
    assert len(set(got.indices.tolist())) == B


def test_fewer_selectable_than_oversample_times_batch(rng):
  # 4 selectable, B = 3: the forward pass picks all 4, the backward drops 1.
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng)
    mask = np.zeros(N, bool)
    mask[rng.choice(np.flatnonzero(~labeled), 4, replace=False)] = True
    for kind, method in PATHS:
      want = ref.bait(emb, probs, labeled, B, kind=kind, mask=mask)
      got = ref.run(
        emb,
        probs,
        labeled,
        B,
        kind,
        method,
        jnp.float64,
        mask=jnp.asarray(mask),
      )
      np.testing.assert_array_equal(got.indices, want["indices"])
      assert got.valid.all()


@pytest.mark.parametrize(
  "kind,method",
  [
    ("full", "dense"),
    pytest.param("full", "structured", marks=pytest.mark.slow),
    pytest.param("binary", "dense", marks=pytest.mark.slow),
  ],
)
def test_chunk_size_does_not_change_the_result(rng, kind, method):
  with jax.enable_x64(True):
    emb, probs, labeled = ref.problem(rng)
    want = ref.run(emb, probs, labeled, B, kind, method, jnp.float64)
    got = ref.run(
      emb, probs, labeled, B, kind, method, jnp.float64, chunk_size=7
    )
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-10)


@pytest.mark.parametrize(
  "kind,method",
  [
    pytest.param("full", "dense", marks=pytest.mark.slow),
    pytest.param("topc", "structured", marks=pytest.mark.slow),
    pytest.param("diagonal", "auto", marks=pytest.mark.slow),
  ],
)
def test_uncompiled_op_by_op_run_matches(rng, kind, method):
  emb, probs, labeled = ref.problem(rng, n=16, dim=3, c=3)
  with jax.enable_x64(True):
    want = ref.bait(emb, probs, labeled, 2, kind=kind)
    with jax.disable_jit():
      got = ref.run(emb, probs, labeled, 2, kind, method, jnp.float64)
    np.testing.assert_array_equal(got.indices, want["indices"])
    np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)


# jit and vmap of the other paths: tests/test_conformance.py's
# test_jit_vmap_equals_eager_loop over the bait_* rows. Structured topc (its
# per-point quad travels with the pool axis) has no row there.
@pytest.mark.slow
@pytest.mark.parametrize("kind,method", [("topc", "structured")])
def test_jit_vmap_other_paths(rng, kind, method):
  problems = [ref.problem(rng) for _ in range(2)]
  emb = jnp.asarray(np.stack([p[0] for p in problems]), jnp.float32)
  probs = jnp.asarray(np.stack([p[1] for p in problems]), jnp.float32)
  labeled = jnp.asarray(np.stack([p[2] for p in problems]))
  fn = lambda e, p, l: alfx.bait(
    e, p, B, labeled=l, fisher=kind, method=method, labeled_capacity=CAP
  )
  batched = jax.vmap(fn)(emb, probs, labeled)
  jitted = jax.jit(fn)
  for i in range(2):
    want = ref.bait(
      problems[i][0], problems[i][1], problems[i][2], B, kind=kind
    )
    np.testing.assert_array_equal(batched.indices[i], want["indices"])
    np.testing.assert_array_equal(
      jitted(emb[i], probs[i], labeled[i]).indices, want["indices"]
    )

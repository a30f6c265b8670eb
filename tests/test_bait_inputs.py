"""BAIT's own bad inputs and what it returns under jit where it cannot check.

The generic contract (ranks, masks, batch sizes, NaN under jit, too few
selectable under jit, recompilation) is tests/test_conformance.py's, over the
bait_* rows of tests/conformance_cases.py; here: BAIT's options, its
``pool_fisher``, ``in_pool``, ``lam`` and ``labeled_capacity``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from tests import reference_bait as ref
from tests.helpers import compile_log
from tests.reference_bait import B
from tests.reference_bait import CAP
from tests.reference_bait import N


class TestBadInput:
  def _args(self, rng):
    emb, probs, labeled = ref.problem(rng)
    return emb.astype(np.float32), probs.astype(np.float32), labeled

  def test_shapes_and_dtypes(self, rng):
    emb, probs, labeled = self._args(rng)
    with pytest.raises(
      ValueError, match=r"embeddings must have shape \[N, D\]"
    ):
      alfx.bait(emb[0], probs, B, labeled=labeled)
    with pytest.raises(ValueError, match=r"probs must have shape \[N=96, C\]"):
      alfx.bait(emb, probs[:5], B, labeled=labeled)
    with pytest.raises(ValueError, match=r"labeled must have shape \[N=96\]"):
      alfx.bait(emb, probs, B, labeled=labeled[:5])
    with pytest.raises(ValueError, match="labeled must be a boolean"):
      alfx.bait(emb, probs, B, labeled=labeled.astype(np.int32))
    with pytest.raises(ValueError, match=r"mask must have shape \[N=96\]"):
      alfx.bait(emb, probs, B, labeled=labeled, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="embeddings must be a floating"):
      alfx.bait(emb.astype(np.int32), probs, B, labeled=labeled)

  def test_values(self, rng):
    emb, probs, labeled = self._args(rng)
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="embeddings.*NaN"):
      alfx.bait(bad, probs, B, labeled=labeled)
    with pytest.raises(ValueError, match="probs.*must be probabilities"):
      alfx.bait(emb, probs * 2, B, labeled=labeled)
    with pytest.raises(ValueError, match="probs.*must be probabilities"):
      alfx.bait(emb, np.log(probs), B, labeled=labeled)

  def test_options(self, rng):
    emb, probs, labeled = self._args(rng)
    with pytest.raises(ValueError, match="fisher must be one of"):
      alfx.bait(emb, probs, B, labeled=labeled, fisher="exp")
    with pytest.raises(
      ValueError, match="top_c=5 is larger than the number of classes"
    ):
      alfx.bait(emb, probs, B, labeled=labeled, fisher="topc", top_c=5)
    for bad in (0, -1, 1.5):
      with pytest.raises(ValueError, match="top_c"):
        alfx.bait(emb, probs, B, labeled=labeled, fisher="topc", top_c=bad)
      with pytest.raises(ValueError, match="oversample"):
        alfx.bait(emb, probs, B, labeled=labeled, oversample=bad)
      with pytest.raises(ValueError, match="chunk_size"):
        alfx.bait(emb, probs, B, labeled=labeled, chunk_size=bad)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
      with pytest.raises(ValueError, match="lam must be"):
        alfx.bait(emb, probs, B, labeled=labeled, lam=bad)
    with pytest.raises(ValueError, match="lam must be a scalar"):
      alfx.bait(emb, probs, B, labeled=labeled, lam=jnp.ones(2))
    with pytest.raises(ValueError, match="method must be one of"):
      alfx.bait(emb, probs, B, labeled=labeled, method="sparse")
    with pytest.raises(ValueError, match="'binary' has d = D"):
      alfx.bait(
        emb, probs, B, labeled=labeled, fisher="binary", method="structured"
      )
    for bad in (0, 2.0, True, None):
      with pytest.raises(ValueError, match="batch_size"):
        alfx.bait(emb, probs, bad, labeled=labeled)
    with pytest.raises(ValueError, match="fisher must be one of"):
      alfx.fisher_factors(emb, probs, fisher="exp")
    with pytest.raises(ValueError, match="fisher must be one of"):
      alfx.pool_fisher(emb, probs, fisher="exp")

  def test_mismatched_pool_fisher(self, rng):
    emb, probs, labeled = self._args(rng)
    stats = alfx.pool_fisher(emb, probs, fisher="binary")
    with pytest.raises(
      ValueError, match="pool_fisher was computed for fisher='binary'"
    ):
      alfx.bait(emb, probs, B, labeled=labeled, pool_fisher=stats)
    other = alfx.pool_fisher(emb[:, :3], probs, fisher="binary")
    with pytest.raises(
      ValueError,
      match=r"pool_fisher.blocks must have shape"
      r" \[1, 5, 5\]",
    ):
      alfx.bait(
        emb, probs, B, labeled=labeled, fisher="binary", pool_fisher=other
      )
    with pytest.raises(ValueError, match="must be the PoolFisher"):
      alfx.bait(emb, probs, B, labeled=labeled, pool_fisher=np.zeros(3))


def test_batch_larger_than_selectable_raises(rng):
  emb, probs, labeled = ref.problem(rng)
  mask = np.zeros(N, bool)
  mask[:2] = True
  labeled = np.asarray(labeled).copy()
  labeled[:2] = False
  with pytest.raises(
    ValueError, match="batch_size=3 is larger than the number of selectable"
  ):
    alfx.bait(emb, probs, 3, labeled=labeled, mask=jnp.asarray(mask))
  with pytest.raises(ValueError, match="mask selects no points"):
    alfx.bait(emb, probs, 1, labeled=labeled, mask=jnp.zeros(N, bool))
  everything = np.ones(N, bool)
  with pytest.raises(
    ValueError, match="labeled marks every point that mask selects"
  ):
    alfx.bait(emb, probs, 1, labeled=jnp.asarray(everything))
  with pytest.raises(
    ValueError, match="labeled marks every point that mask selects"
  ):
    alfx.bait(emb, probs, 1, labeled=jnp.asarray(mask), mask=mask)


def test_empty_in_pool_and_missing_lam_raise(rng):
  emb, probs, labeled = ref.problem(rng)
  nothing = jnp.zeros(N, bool)
  with pytest.raises(ValueError, match="in_pool .* marks no row"):
    alfx.pool_fisher(emb, probs, in_pool=nothing)
  with pytest.raises(ValueError, match="in_pool .* marks no row"):
    alfx.bait(emb, probs, B, labeled=labeled, in_pool=nothing)
  with pytest.raises(ValueError, match="lam is required"):
    alfx.bait(emb, probs, B, labeled=labeled, lam=None)


# ---------------------------------------------------------------------------
# The structured path's labelled capacity.


def test_structured_capacity_below_the_labelled_count_raises(rng):
  emb, probs, _ = ref.problem(rng)
  labeled = np.zeros(N, bool)
  labeled[[4, 9]] = True
  with pytest.raises(
    ValueError,
    match=r"labeled_capacity=1 is smaller than"
    r" the number of labelled points \(2\)",
  ):
    alfx.bait(
      emb, probs, B, labeled=labeled, method="structured", labeled_capacity=1
    )
  sel = alfx.bait(
    emb, probs, B, labeled=labeled, method="structured", labeled_capacity=2
  )
  assert np.asarray(sel.valid).all()


def test_structured_capacity_overflow_under_jit_is_invalid(rng):
  emb, probs, labeled = ref.problem(rng, labeled_fraction=0.3)
  fn = jax.jit(
    lambda e, p, l: alfx.bait(
      e, p, B, labeled=l, method="structured", labeled_capacity=8
    )
  )
  sel = fn(
    emb.astype(np.float32), probs.astype(np.float32), jnp.asarray(labeled)
  )
  assert labeled.sum() > 8 and not np.asarray(sel.valid).any()
  # Enough capacity: valid and equal to the reference.
  ok = ref.run(emb, probs, labeled, B, "full", "structured", jnp.float32)
  want = ref.bait(emb, probs, labeled, B)
  np.testing.assert_array_equal(ok.indices, want["indices"])
  assert ok.valid.all()


# New values, masks and labelled sets on every path:
# test_new_values_masks_keys_never_recompile_* of tests/test_conformance.py.
# Here: new lam values, and the structured path's default labeled_capacity
# (a power-of-two bucket of the labelled count) as the labelled set grows.
@pytest.mark.parametrize(
  "kind,method",
  [
    ("full", "structured"),
    pytest.param("topc", "structured", marks=pytest.mark.slow),
  ],
)
def test_no_recompilation_across_rounds(rng, kind, method):
  emb, probs, labeled = ref.problem(rng, labeled_fraction=0.0)
  emb, probs = jnp.asarray(emb, jnp.float32), jnp.asarray(probs, jnp.float32)
  labeled = np.zeros(N, bool)
  labeled[:9] = True  # 9..16 labelled: one capacity bucket for structured
  alfx.bait(
    emb, probs, B, labeled=jnp.asarray(labeled), fisher=kind, method=method
  )
  with compile_log() as log:
    for _ in range(3):  # active-learning rounds: the labelled set grows
      sel = alfx.bait(
        emb,
        probs,
        B,
        labeled=jnp.asarray(labeled),
        fisher=kind,
        method=method,
        lam=float(rng.uniform(0.5, 2)),
      )
      labeled[np.asarray(sel.indices)[:2]] = True
      assert not labeled[np.asarray(sel.indices)[2:]].any()
  assert not log.names, log.names


# ---------------------------------------------------------------------------
# Under jit.


@pytest.mark.parametrize(
  "kind,method",
  [
    ("full", "dense"),
    ("diagonal", "auto"),
    pytest.param("topc", "structured", marks=pytest.mark.slow),
    pytest.param("binary", "dense", marks=pytest.mark.slow),
  ],
)
def test_nan_input_under_jit_gives_nan_scores_and_invalid(rng, kind, method):
  emb, probs, labeled = ref.problem(rng)
  emb, probs = emb.astype(np.float32), probs.astype(np.float32)
  fn = jax.jit(
    lambda e, p, l: alfx.bait(
      e, p, B, labeled=l, fisher=kind, method=method, labeled_capacity=CAP
    )
  )
  bad_emb = emb.copy()
  bad_emb[7, 2] = np.nan
  bad_probs = probs.copy()
  bad_probs[11] = np.nan
  for e, p in ((bad_emb, probs), (emb, bad_probs)):
    sel = fn(e, p, labeled)
    assert np.isnan(np.asarray(sel.scores)).all()
    assert not np.asarray(sel.valid).any()
  assert np.asarray(fn(emb, probs, labeled).valid).all()

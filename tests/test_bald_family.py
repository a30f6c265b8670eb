"""BALD family (topk_bald, batchbald, kbald, kbald_dynamic, conservative_bald).

Every selection is checked against the float64 brute-force greedy references
in `reference_bald` (every label configuration enumerated), plus the
family's own invariants: chunk sizes, the sampled regime, zero-probability
classes, the dynamic-size rules, bad method arguments and the table kernel.
The generic properties of the contract (picks, ties, jit and vmap, float64
out, recompilation, bad inputs, device layouts) run in the conformance
suite (tests/conformance_cases.py).
"""

import functools
import itertools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family import _increments
from tests import reference as ref
from tests import reference_bald as rb
from tests.helpers import seed_for
from tests.reference_bald import assert_greedy_matches


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------
# Each method against its reference.


class ReferenceTest(chex.TestCase):
  def rng(self):
    return np.random.default_rng(seed_for(self.id()))

  @chex.variants(without_jit=True)
  @parameterized.parameters((9, 4, 3, 3), (7, 1, 2, 4), (8, 5, 2, 5))
  def test_batchbald_exact_matches_enumeration(self, n, k, c, b):
    rng = self.rng()
    lp = rb_log_probs(rng, n, k, c)
    mask = rng.random(n) < 0.85
    mask[:b] = True
    fn = self.variant(lambda x, m: alfx.batchbald(x, b, mask=m, chunk_size=3))
    sel = fn(_f32(lp), jnp.asarray(mask))
    pool = rb.Pool(lp)
    assert_greedy_matches(
      sel, lambda s, i: pool.mi(s + [i]) - pool.mi(s), n, mask
    )

  @chex.variants(without_jit=True)
  @parameterized.parameters(
    (2, 10, 4, 3, 4), (3, 10, 4, 3, 5), (4, 8, 3, 2, 5), (2, 8, 1, 3, 3)
  )
  def test_kbald_matches_co_information_sums(self, order, n, k, c, b):
    rng = self.rng()
    lp = rb_log_probs(rng, n, k, c)
    mask = rng.random(n) < 0.9
    mask[:b] = True
    fn = self.variant(
      lambda x, m: alfx.kbald(x, b, order=order, mask=m, chunk_size=4)
    )
    sel = fn(_f32(lp), jnp.asarray(mask))
    pool = rb.Pool(lp)
    assert_greedy_matches(
      sel, lambda s, i: rb.kbald_gain(pool, s, i, order), n, mask
    )

  def test_topk_bald_is_top_b_of_reference_bald(self):
    rng = self.rng()
    lp = rb_log_probs(rng, 40, 5, 4)
    mask = rng.random(40) < 0.7
    bald = rb.bald_scores(lp)
    sel = alfx.topk_bald(_f32(lp), 8, mask=jnp.asarray(mask))
    order = sorted(np.flatnonzero(mask), key=lambda i: (-bald[i], i))[:8]
    np.testing.assert_array_equal(sel.indices, order)
    np.testing.assert_allclose(sel.scores, bald[order], atol=2e-6)
    ranked = alfx.top_b(alfx.bald(_f32(lp)), 8, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(sel.indices, ranked.indices)

  def test_kbald_order_one_is_top_b_of_alfx_bald(self):
    # Against the foundation's BALD kernel (log-space, an independent path).
    lp = _f32(rb_log_probs(self.rng(), 30, 6, 5))
    mask = jnp.arange(30) % 7 != 3
    got = alfx.kbald(lp, 6, order=1, mask=mask)
    want = alfx.top_b(alfx.bald(lp), 6, mask=mask)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    chex.assert_trees_all_equal(got, alfx.topk_bald(lp, 6, mask=mask))

  @parameterized.parameters((4, 3, 3))
  def test_kbald_order_batch_size_is_exact_batchbald(self, b, k, c):
    lp = _f32(rb_log_probs(self.rng(), 14, k, c))
    full = alfx.batchbald(lp, b, chunk_size=5)
    for order in (b, b + 2):  # orders above batch_size act as batch_size
      approx = alfx.kbald(lp, b, order=order, chunk_size=5)
      np.testing.assert_array_equal(approx.indices, full.indices)
      np.testing.assert_allclose(approx.scores, full.scores, atol=1e-6)

  def test_batchbald_first_pick_is_bald_and_gains_add_up(self):
    lp = rb_log_probs(self.rng(), 12, 5, 3)
    sel = alfx.batchbald(_f32(lp), 5)
    assert sel.indices[0] == alfx.topk_bald(_f32(lp), 1).indices[0]
    # The gains telescope to the joint mutual information of the batch, and
    # shrink (submodularity).
    np.testing.assert_allclose(
      np.sum(sel.scores),
      rb.batch_mutual_information(lp, sel.indices),
      atol=5e-5,
    )
    assert np.all(np.diff(np.asarray(sel.scores)) <= 1e-6)


def rb_log_probs(rng, n, k, c, zero_fraction=0.1):
  return ref.random_log_probs(
    rng, n, k, c, scale=2.5, zero_fraction=zero_fraction
  )


def test_kbald_formula_equals_co_information_definition(rng):
  """The a_u(s) D_u formula of k-BALD against eq. 6 (float64 only)."""
  lp = rb_log_probs(rng, 6, 4, 3)
  pool = rb.Pool(lp)
  for s in range(0, 5):
    picks = list(range(s))
    n = 5
    cond_h = {
      u: sum(
        pool.h(list(v) + [n]) - pool.h(v)
        for v in itertools.combinations(picks, u)
      )
      for u in range(s + 1)
    }  # D_u = sum_{|U|=u} H[Y_n | Y_U]
    for order in range(1, 7):
      a = _increments.kbald_coefficients(s + 1, order)[s]
      formula = -pool.cond[n] + sum(
        a[u] * cond_h[u] for u in range(min(order, s + 1))
      )
      np.testing.assert_allclose(
        formula, rb.kbald_gain(pool, picks, n, order), atol=1e-10
      )
    # Orders above s leave only the BatchBALD gain; order 2 is BALD - sum MI.
    np.testing.assert_allclose(
      rb.kbald_gain(pool, picks, n, s + 1),
      pool.mi(picks + [n]) - pool.mi(picks),
      atol=1e-10,
    )
    np.testing.assert_allclose(
      rb.kbald_gain(pool, picks, n, 2),
      pool.bald(n) - sum(pool.pair_mi(j, n) for j in picks),
      atol=1e-10,
    )


# --------------------------------------------------------------------------
# BatchBALD's sampled regime.


def test_batchbald_sampled_close_to_exact_greedy(rng):
  """C=3, B=7, 200 sampled rows from step 5: exact MI within 1%."""
  n, k, c, b = 24, 10, 3, 7
  lp = rb_log_probs(rng, n, k, c, zero_fraction=0.0)
  exact, _ = rb.batchbald_greedy(lp, b)
  target = rb.batch_mutual_information(lp, exact)
  keys = jax.random.split(jax.random.key(seed_for("sampled")), 4)
  sels = jax.vmap(
    lambda key: alfx.batchbald(_f32(lp), b, num_configurations=200, key=key)
  )(keys)
  assert _bald.exact_steps(c, 200, b) == 5  # steps 5 and 6 are sampled
  for indices in np.asarray(sels.indices):
    assert len(set(indices.tolist())) == b
    got = rb.batch_mutual_information(lp, indices)
    assert got >= 0.99 * target, (got, target)
  # The exact steps agree with the exact greedy.
  np.testing.assert_array_equal(
    np.asarray(sels.indices)[:, :5], np.tile(exact[:5], (4, 1))
  )


def test_sampled_estimate_converges(rng):
  """batchbald's sampled H[Y_n | Y_S] approaches the exact one as M grows.

  Uses batchbald's own pieces (stratified label draws, posterior table, table
  kernel) on a fixed batch of 6 points, against the enumerated float64 value.
  """
  n, k, c, s = 12, 8, 3, 6
  lp = rb_log_probs(rng, n + s, k, c, zero_fraction=0.0)
  pool = rb.Pool(lp)
  batch = list(range(n, n + s))
  exact = np.array([pool.h(batch + [i]) - pool.h(batch) for i in range(n)])
  probs_t = _bald.prepare(_f32(lp[:n]))[0]
  errors = {}
  estimate = jax.jit(
    lambda table, rho: _bald.table_entropy(
      probs_t, _bald.posterior_table(table)[0], rho, chunk_size=64
    )
  )
  for num_samples in (80, 800, 8000):
    strata, rho = _bald.label_strata(num_samples, k, jnp.float32)
    err = []
    for seed in range(4):
      key = jax.random.key(1000 * seed + num_samples)
      table = jnp.zeros((num_samples, k))
      for t, i in enumerate(batch):
        table += _bald.draw_labels(
          jax.random.fold_in(key, t), _f32(lp[i]), strata
        )
      est = estimate(table, rho)
      err.append(np.abs(np.asarray(est) - exact).mean())
    errors[num_samples] = float(np.mean(err))
  # Unbiased with standard error ~ 1/sqrt(M): ~3.2x smaller per decade.
  assert errors[8000] < errors[800] < errors[80], errors
  assert errors[8000] < errors[80] / 4, errors
  assert errors[8000] < 0.01, errors


def test_batchbald_sampled_regime_survives_underflow(rng):
  """Confident predictions: products of 8 probabilities underflow float32."""
  n, k, c, b = 16, 6, 2, 9
  logits = 40.0 * rng.standard_normal((n, k, c))
  lp = (
    logits
    - np.log(
      np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
    )
    - logits.max(-1, keepdims=True)
  )
  assert np.exp(lp.min(-1)).min() < 1e-10
  for num_samples in (2**8, 20):  # exact to the end; sampled from step 5
    sel = alfx.batchbald(
      _f32(lp), b, num_configurations=num_samples, key=jax.random.key(1)
    )
    assert np.all(np.isfinite(sel.scores)) and sel.valid.all()
    assert len(set(np.asarray(sel.indices).tolist())) == b
  exact = alfx.batchbald(_f32(lp), b, num_configurations=2**8)
  pool = rb.Pool(lp)
  assert_greedy_matches(
    exact, lambda s, i: pool.mi(s + [i]) - pool.mi(s), n, atol=1e-4
  )


def test_zero_probability_classes_give_finite_correct_gains():
  with np.errstate(divide="ignore"):
    lp = np.log(
      np.array(
        [
          [[1.0, 0, 0], [1.0, 0, 0]],  # certain: BALD 0
          [[0.5, 0.5, 0], [0, 0.5, 0.5]],
          [[0.5, 0.5, 0], [0, 0.5, 0.5]],
          [[0, 0, 1.0], [1.0, 0, 0]],  # samples disagree completely
          [[0.2, 0.8, 0], [0.9, 0, 0.1]],
        ]
      )
    )
  pool = rb.Pool(lp)
  for sel, gain in [
    (alfx.batchbald(_f32(lp), 4), lambda s, i: pool.mi(s + [i]) - pool.mi(s)),
    (
      alfx.batchbald(_f32(lp), 4, num_configurations=2, key=jax.random.key(0)),
      None,
    ),
    (
      alfx.kbald(_f32(lp), 4, order=3),
      lambda s, i: rb.kbald_gain(pool, s, i, 3),
    ),
    (alfx.kbald_dynamic(_f32(lp), 4, tolerance=10.0), None),
    (alfx.conservative_bald(_f32(lp), 4, threshold=10.0), None),
  ]:
    assert np.all(np.isfinite(sel.scores)), sel
    if gain is not None:
      assert_greedy_matches(sel, gain, 5)


# --------------------------------------------------------------------------
# kbald_dynamic and conservative_bald.


def _duplicates(copies, k=5, c=5, confidence=0.6):
  """``copies`` identical points, sample k confident on class k mod C."""
  p = np.full((k, c), (1 - confidence) / (c - 1))
  p[np.arange(k), np.arange(k) % c] = confidence
  return np.repeat(np.log(p)[None], copies, axis=0)


def test_kbald_dynamic_on_duplicates_follows_the_rule():
  """A pool of copies (kbald.md Figure 3): 2-BALD gains fall below zero.

  Copy m has 2-BALD gain BALD - (m-1) I[Y; Y'] (0.382, 0.277, 0.173, 0.068,
  -0.037 nats) while 3-BALD adds back the triple co-information, so the
  relative divergence |V3 - V2| / |V3| grows: 0, 0, 0.048, 0.156, 0.326.
  """
  lp = _duplicates(8)
  pool = rb.Pool(lp)
  batch = list(range(5))
  rel = [
    abs(rb.kbald_value(pool, batch[:m], 3) - rb.kbald_value(pool, batch[:m], 2))
    / abs(rb.kbald_value(pool, batch[:m], 3))
    for m in range(1, 6)
  ]
  g2 = [rb.kbald_gain(pool, batch[:m], m, 2) for m in range(5)]
  assert g2[3] > 0 > g2[4] and rel[2] < 0.1 < rel[3] and rel[1] == 0
  for tolerance, size in [(1e6, 4), (0.1, 3), (0.01, 2), (0.0, 2)]:
    sel = alfx.kbald_dynamic(_f32(lp), 7, tolerance=tolerance)
    np.testing.assert_array_equal(sel.valid, np.arange(7) < size)
    # Copies tie: lowest indices first; the tail is zeroed.
    np.testing.assert_array_equal(
      sel.indices, np.where(np.arange(7) < size, np.arange(7), 0)
    )
    np.testing.assert_allclose(sel.scores[:size], g2[:size], atol=2e-5)
    assert np.all(np.asarray(sel.scores)[size:] == 0)
  # Plain 2-BALD keeps picking copies with negative gains.
  fixed = alfx.kbald(_f32(lp), 7, order=2)
  assert np.all(np.asarray(fixed.scores)[4:] < 0)


@pytest.mark.parametrize("tolerance", [0.02, 0.2, 1.0])
def test_kbald_dynamic_matches_reference(rng, tolerance):
  lp = np.concatenate([rb_log_probs(rng, 9, 4, 3), _duplicates(3, 4, 3, 0.8)])
  mask = rng.random(12) < 0.9
  sel = alfx.kbald_dynamic(
    _f32(lp), 7, tolerance=tolerance, mask=jnp.asarray(mask)
  )
  picks, gains, valid = rb.kbald_dynamic_reference(lp, 7, tolerance, mask)
  np.testing.assert_array_equal(sel.valid, valid)
  np.testing.assert_array_equal(sel.indices, picks)
  np.testing.assert_allclose(sel.scores, gains, atol=2e-5)


@pytest.mark.parametrize(
  "threshold,budget",
  [(0.05, None), (0.2, None), (1.0, 0.3), (0.0, None), (10.0, 0.0)],
)
def test_conservative_bald_matches_reference(rng, threshold, budget):
  lp = np.concatenate([rb_log_probs(rng, 10, 4, 3), _duplicates(4, 4, 3, 0.8)])
  mask = rng.random(14) < 0.9
  sel = alfx.conservative_bald(
    _f32(lp), 8, threshold=threshold, budget=budget, mask=jnp.asarray(mask)
  )
  picks, scores, valid = rb.conservative_reference(
    lp, 8, threshold, budget, mask
  )
  np.testing.assert_array_equal(sel.valid, valid)
  np.testing.assert_array_equal(sel.indices, picks)
  np.testing.assert_allclose(sel.scores, scores, atol=2e-5)


def test_conservative_bald_drops_duplicates_of_a_pick():
  lp = np.concatenate(
    [
      _duplicates(4, 4, 4, 0.95),
      rb_log_probs(np.random.default_rng(0), 6, 4, 4),
    ]
  )
  bald = rb.bald_scores(lp)
  assert bald[:4].min() > bald[4:].max()  # the copies rank first
  sel = alfx.conservative_bald(_f32(lp), 4, threshold=0.05)
  assert sel.indices[0] == 0 and not np.isin(sel.indices[1:], [1, 2, 3]).any()
  plain = alfx.topk_bald(_f32(lp), 4)
  np.testing.assert_array_equal(plain.indices, [0, 1, 2, 3])


# --------------------------------------------------------------------------
# Chunk sizes and float64 references, per method.

KEY = jax.random.key(7)

METHODS = {
  "topk_bald": lambda lp, b, **kw: alfx.topk_bald(lp, b, **kw),
  "batchbald": lambda lp, b, **kw: alfx.batchbald(lp, b, chunk_size=5, **kw),
  "kbald2": lambda lp, b, **kw: alfx.kbald(lp, b, order=2, chunk_size=5, **kw),
  "kbald3": lambda lp, b, **kw: alfx.kbald(lp, b, order=3, chunk_size=5, **kw),
  "kbald_dynamic": lambda lp, b, **kw: alfx.kbald_dynamic(
    lp, b, tolerance=1e4, chunk_size=5, **kw
  ),
  "conservative_bald": lambda lp, b, **kw: alfx.conservative_bald(
    lp, b, threshold=1e4, chunk_size=5, **kw
  ),
}


def _pool_lp(rng, n=17, k=4, c=3):
  return _f32(rb_log_probs(rng, n, k, c))


# (topk_bald takes no chunk_size.)
@pytest.mark.parametrize(
  "name",
  ["batchbald", "kbald2", "kbald3", "conservative_bald", "kbald_dynamic"],
)
def test_chunk_sizes_agree(rng, name):
  lp = _pool_lp(rng)
  mask = jnp.asarray(rng.random(17) < 0.8).at[:4].set(True)
  base = METHODS[name](lp, 4, mask=mask)
  fn = {
    "batchbald": alfx.batchbald,
    "kbald2": functools.partial(alfx.kbald, order=2),
    "kbald3": functools.partial(alfx.kbald, order=3),
    "conservative_bald": functools.partial(
      alfx.conservative_bald, threshold=1e4
    ),
    "kbald_dynamic": functools.partial(alfx.kbald_dynamic, tolerance=1e4),
  }[name]
  for chunk in (3, 64):  # 17 = 5 * 3 + 2: overlapping last chunk
    other = fn(lp, 4, mask=mask, chunk_size=chunk)
    np.testing.assert_array_equal(other.indices, base.indices)
    np.testing.assert_allclose(other.scores, base.scores, atol=1e-5)


# (batchbald_sampled has no reference gain; its float64 scores are checked
# by the conformance suite.)
@pytest.mark.parametrize(
  "name",
  [
    "topk_bald",
    "batchbald",
    "kbald2",
    "kbald3",
    "kbald_dynamic",
    "conservative_bald",
  ],
)
def test_float64_in_float64_out(rng, name):
  lp = rb_log_probs(rng, 9, 3, 3)
  with jax.enable_x64(True):
    sel = METHODS[name](jnp.asarray(lp, jnp.float64), 3)
    assert sel.scores.dtype == jnp.float64
  pool = rb.Pool(lp)
  gain = {
    "topk_bald": lambda s, i: pool.bald(i),
    "batchbald": lambda s, i: pool.mi(s + [i]) - pool.mi(s),
    "kbald2": lambda s, i: rb.kbald_gain(pool, s, i, 2),
    "kbald3": lambda s, i: rb.kbald_gain(pool, s, i, 3),
    "kbald_dynamic": lambda s, i: rb.kbald_gain(pool, s, i, 2),
    "conservative_bald": lambda s, i: pool.bald(i),
  }[name]
  assert_greedy_matches(sel, gain, 9, atol=1e-10)


class TestBadInput:
  def test_method_arguments(self):
    lp = _f32(np.log(np.full((6, 4, 3), 1 / 3)))
    with pytest.raises(ValueError, match="order must be a positive"):
      alfx.kbald(lp, 2, order=0)
    with pytest.raises(ValueError, match="MAX_CONFIGURATIONS"):
      alfx.kbald(_f32(np.log(np.full((6, 2, 40), 1 / 40))), 5, order=4)
    with pytest.raises(ValueError, match="chunk_size"):
      alfx.kbald(lp, 2, chunk_size=0)
    with pytest.raises(ValueError, match="num_configurations"):
      alfx.batchbald(lp, 2, num_configurations=0)
    with pytest.raises(ValueError, match="key is required"):
      alfx.batchbald(lp, 4, num_configurations=9)  # 3**3 > 9: sampled regime
    with pytest.raises(
      ValueError, match=r"num_configurations=3 must be at least K=4"
    ):
      alfx.batchbald(lp, 4, num_configurations=3, key=KEY)
    # No key is needed while every step is exact.
    assert alfx.batchbald(lp, 3, num_configurations=9).valid.all()
    with pytest.raises(ValueError, match="PRNG key"):
      alfx.batchbald(lp, 4, num_configurations=9, key=jnp.zeros(3))

  def test_scalars(self):
    lp = _f32(np.log(np.full((6, 4, 3), 1 / 3)))
    for fn, name in [
      (lambda v: alfx.kbald_dynamic(lp, 3, tolerance=v), "tolerance"),
      (lambda v: alfx.conservative_bald(lp, 3, threshold=v), "threshold"),
      (
        lambda v: alfx.conservative_bald(lp, 3, threshold=0.1, budget=v),
        "budget",
      ),
    ]:
      for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
          fn(bad)
      with pytest.raises(ValueError, match=rf"{name} must be a scalar"):
        fn(jnp.zeros(2))
    with pytest.raises(ValueError, match="tolerance is required"):
      alfx.kbald_dynamic(lp, 3, tolerance=None)
    with pytest.raises(ValueError, match="batch_size"):
      alfx.kbald_dynamic(lp, 7, tolerance=0.1)


# --------------------------------------------------------------------------
# The shared kernels.


def _reference_table_entropy(probs, weights, rho):
  q = np.einsum("rk,nkc->nrc", weights, probs)
  return -(rho[None, :] * ref.xlogx(q).sum(-1)).sum(-1)


def test_table_entropy_row_blocks_and_skipped_rows(rng, monkeypatch):
  # A tiny tile forces several chunks and row blocks.
  monkeypatch.setattr(_bald, "_TILE_ELEMENTS", 64)
  monkeypatch.setattr(_bald, "_MIN_CHUNK", 2)
  n, k, c, r = 11, 4, 3, 29
  probs = rng.dirichlet(np.ones(c), size=(n, k))
  probs[0, :, 1] = 0  # a zero-probability class
  probs[0] /= probs[0].sum(-1, keepdims=True)
  weights = rng.dirichlet(np.ones(k), size=r)
  weights[3] = 0  # an impossible configuration
  rho = rng.random(r)
  assert _bald.tiling(n, c, r, 5) == (2, 10)  # 3 blocks of 10 rows
  probs_t = _f32(probs.transpose(0, 2, 1))
  got = _bald.table_entropy(probs_t, _f32(weights), _f32(rho), chunk_size=5)
  np.testing.assert_allclose(
    got, _reference_table_entropy(probs, weights, rho), rtol=1e-5
  )
  # num_rows=13: only blocks [0, 10) and [10, 20) are computed, even though
  # rows past 13 still carry weight here.
  got = _bald.table_entropy(
    probs_t, _f32(weights), _f32(rho), chunk_size=5, num_rows=jnp.int32(13)
  )
  np.testing.assert_allclose(
    got, _reference_table_entropy(probs, weights[:20], rho[:20]), rtol=1e-5
  )
  got = _bald.table_entropy(
    probs_t, _f32(weights), _f32(rho), chunk_size=5, num_rows=jnp.int32(0)
  )
  np.testing.assert_array_equal(got, 0)


def test_small_tiles_give_the_same_selections(rng, monkeypatch):
  lp = _f32(rb_log_probs(rng, 23, 3, 3))
  want = {
    "batchbald": alfx.batchbald(lp, 5, num_configurations=20, key=KEY),
    "kbald3": alfx.kbald(lp, 5, order=3),
  }
  monkeypatch.setattr(_bald, "_TILE_ELEMENTS", 96)
  monkeypatch.setattr(_bald, "_MIN_CHUNK", 2)
  # chunk_size=7 is used nowhere else: a fresh trace with the small tiles.
  got = {
    "batchbald": alfx.batchbald(
      lp, 5, num_configurations=20, key=KEY, chunk_size=7
    ),
    "kbald3": alfx.kbald(lp, 5, order=3, chunk_size=7),
  }
  for name in want:
    np.testing.assert_array_equal(got[name].indices, want[name].indices)
    np.testing.assert_allclose(got[name].scores, want[name].scores, atol=1e-5)
  assert _bald.tiling(23, 3, 27, 7)[1] < 27  # the tables were split


def test_identical_candidates_get_identical_entropies(rng):
  """Bit-identical results wherever a candidate sits in its chunk.

  The greedy tie rule (lower index first) relies on it for duplicates; a
  matvec with rho instead of the row-wise reduce fails this (4.8e-7 apart).
  """
  base = rng.dirichlet(np.ones(3), size=(4, 4))
  probs_t = _f32(np.concatenate([base] * 50).transpose(0, 2, 1))  # 200 rows
  weights = _f32(rng.dirichlet(np.ones(4), size=9))
  rho = _f32(rng.random(9))
  for chunk in (5, 7, 64):
    h = np.asarray(
      _bald.table_entropy(probs_t, weights, rho, chunk_size=chunk)
    ).reshape(50, 4)
    assert np.all(h == h[0]), np.ptp(h, axis=0)

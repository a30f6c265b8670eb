"""BADGE, CoreSet, k-means and TypiClust against dense float64 references.

The generic properties of the contract (picks, jit and vmap, float64 out,
device layouts) run in the conformance suite (tests/conformance_cases.py).
"""

import functools

import chex
import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.baselines import _badge
from alfx.baselines import _coreset
from alfx.baselines import _kmeans
from alfx.baselines import _typiclust
from tests import reference_baselines as refb
from tests.helpers import ALPHA
from tests.helpers import chi_square_p_value
from tests.helpers import count_rows
from tests.helpers import seed_for


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _random_probs(rng, n, c, scale=2.0):
  logits = scale * rng.standard_normal((n, c))
  p = np.exp(logits - logits.max(1, keepdims=True))
  return p / p.sum(1, keepdims=True)


def _blobs(rng, n_blobs, per_blob, d, spread=1.0, distance=50.0):
  """Well-separated Gaussian blobs; ``per_blob`` an int or a size per blob."""
  sizes = np.broadcast_to(per_blob, (n_blobs,))
  centres = distance * rng.standard_normal((n_blobs, d))
  x = np.concatenate(
    [c + spread * rng.standard_normal((s, d)) for c, s in zip(centres, sizes)]
  )
  return x, np.repeat(np.arange(n_blobs), sizes)


def _max_intermediate_size(fn, *args):
  """Largest number of elements of any value inside ``fn``'s jaxpr."""
  biggest = 0

  def visit(jaxpr):
    nonlocal biggest
    for eqn in jaxpr.eqns:
      for v in eqn.outvars:
        biggest = max(biggest, int(np.prod(v.aval.shape, dtype=np.int64)))
      for p in eqn.params.values():
        for sub in p if isinstance(p, (tuple, list)) else [p]:
          if isinstance(sub, jex_core.ClosedJaxpr):
            visit(sub.jaxpr)
          elif isinstance(sub, jex_core.Jaxpr):
            visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return biggest


def _check_selection(sel, b, selectable):
  idx = np.asarray(sel.indices)
  chex.assert_shape(sel.indices, (b,))
  assert sel.indices.dtype == jnp.int32
  assert len(set(idx.tolist())) == b, "duplicate picks"
  assert np.asarray(selectable)[idx].all(), "picked an unselectable point"
  assert np.asarray(sel.valid).all()


# ----------------------------------------------------------------------------
# BADGE.


@pytest.mark.parametrize("n,d,c", [(12, 3, 2), (40, 6, 4), (25, 2, 7)])
def test_badge_scores_are_dense_gradient_distances(rng, n, d, c):
  """Factorised distances equal those of the dense [N, C*D] embeddings."""
  h = rng.standard_normal((n, d))
  p = _random_probs(rng, n, c)
  mask = rng.random(n) < 0.8
  mask[:4] = True
  g = refb.badge_embeddings(h, p)
  for x64 in (False, True):
    with jax.enable_x64(x64):
      dtype = jnp.float64 if x64 else jnp.float32
      sel = alfx.badge(
        jnp.asarray(h, dtype),
        jnp.asarray(p, dtype),
        4,
        key=jax.random.key(0),
        mask=jnp.asarray(mask),
      )
      assert sel.scores.dtype == dtype
      idx = np.asarray(sel.indices)
      _check_selection(sel, 4, mask)
      norms = np.where(mask, (g**2).sum(1), -np.inf)
      assert idx[0] == np.argmax(norms)
      want = [norms[idx[0]]] + [
        refb.sq_dists(g[idx[t]][None], g[idx[:t]]).min() for t in (1, 2, 3)
      ]
      tol = dict(rtol=1e-10, atol=1e-12) if x64 else dict(rtol=2e-5, atol=1e-5)
      np.testing.assert_allclose(sel.scores, want, **tol)


def test_badge_draws_follow_the_d2_distribution():
  """k-means++ on gradient embeddings: pick sequences by a chi-square test."""
  rng = np.random.default_rng(seed_for("badge_d2"))
  n = 6
  h = rng.standard_normal((n, 3))
  p = _random_probs(rng, n, 3, scale=1.0)
  mask = np.array([True, True, False, True, True, True])
  probs = refb.badge_sequence_probabilities(h, p, mask, 3)
  keys = jax.random.split(jax.random.key(5), 40_000)
  draw = jax.jit(
    jax.vmap(
      lambda k, h, p, m: alfx.badge(h, p, 3, key=k, mask=m),
      in_axes=(0, None, None, None),
    )
  )
  sel = draw(keys, _f32(h), _f32(p), jnp.asarray(mask))
  assert chi_square_p_value(count_rows(sel.indices), probs) > ALPHA
  assert sel.valid.all()


def test_badge_keys_and_masks(rng):
  n, b = 300, 12
  h = _f32(rng.standard_normal((n, 8)))
  p = _f32(_random_probs(rng, n, 5))
  mask = jnp.asarray(rng.random(n) < 0.6)
  a = alfx.badge(h, p, b, key=jax.random.key(1), mask=mask)
  _check_selection(a, b, mask)
  np.testing.assert_array_equal(
    a.indices, alfx.badge(h, p, b, key=jax.random.key(1), mask=mask).indices
  )
  other = alfx.badge(h, p, b, key=jax.random.key(2), mask=mask)
  assert not np.array_equal(a.indices, other.indices)
  assert a.indices[0] == other.indices[0]  # the first pick is deterministic


def test_badge_duplicates_fall_back_to_uniform():
  # Four copies of one point: after the first pick every D^2 is 0.
  h = jnp.ones((4, 2))
  p = jnp.tile(jnp.array([[0.7, 0.3]]), (4, 1))
  sel = alfx.badge(h, p, 4, key=jax.random.key(0))
  _check_selection(sel, 4, np.ones(4, bool))
  np.testing.assert_allclose(sel.scores[1:], 0, atol=1e-6)


def test_badge_never_forms_n_by_cd(rng):
  n, d, c = 64, 9, 7
  h, p = _f32(rng.standard_normal((n, d))), _f32(_random_probs(rng, n, c))
  size = _max_intermediate_size(
    lambda h, p, m, k: _badge._badge(h, p, m, k, batch_size=5),
    h,
    p,
    jnp.ones(n, bool),
    jax.random.key(0),
  )
  assert size < n * min(c, d) * 2, size


class TestBadgeBadInput:
  def test_shapes_and_values(self):
    h, p = jnp.ones((4, 3)), jnp.full((4, 2), 0.5)
    key = jax.random.key(0)
    with pytest.raises(
      ValueError, match=r"embeddings must have shape \[N, D\]"
    ):
      alfx.badge(jnp.ones(4), p, 1, key=key)
    with pytest.raises(ValueError, match=r"probs must have shape \[N=4, C\]"):
      alfx.badge(h, jnp.full((3, 2), 0.5), 1, key=key)
    with pytest.raises(ValueError, match="probs.*summing to 1"):
      alfx.badge(h, jnp.ones((4, 2)), 1, key=key)
    with pytest.raises(ValueError, match="embeddings.*NaN"):
      alfx.badge(h.at[0, 0].set(jnp.nan), p, 1, key=key)
    with pytest.raises(ValueError, match="key is required"):
      alfx.badge(h, p, 1, key=None)
    with pytest.raises(ValueError, match="larger than the number"):
      alfx.badge(h, p, 3, key=key, mask=jnp.array([1, 1, 0, 0], bool))


# ----------------------------------------------------------------------------
# CoreSet.


@pytest.mark.parametrize(
  "n,d,n_labeled,b,chunk,block",
  [
    (30, 3, 0, 5, 7, 3),
    (50, 4, 6, 8, 16, 4),
    (64, 2, 20, 10, 64, 256),
    (40, 5, 39, 1, 9, 8),
    (25, 3, 1, 24, 4, 1),
    (200, 3, 100, 6, 48, 40),
  ],
)  # full blocks of 40, then blocks of 32
def test_coreset_exact_picks_in_float64(rng, n, d, n_labeled, b, chunk, block):
  x = rng.standard_normal((n, d))
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, n_labeled, replace=False)] = True
  mask = np.ones(n, bool)
  if n_labeled + b < n - 2:
    mask[rng.choice(np.flatnonzero(~labeled), 2, replace=False)] = False
  want_idx, want_d = refb.kcenter_greedy(x, labeled, mask & ~labeled, b)
  with jax.enable_x64(True):
    sel = alfx.coreset(
      jnp.asarray(x),
      b,
      labeled=jnp.asarray(labeled),
      mask=jnp.asarray(mask),
      chunk_size=chunk,
      block_size=block,
    )
    assert sel.scores.dtype == jnp.float64
  np.testing.assert_array_equal(sel.indices, want_idx)
  np.testing.assert_allclose(sel.scores, want_d, rtol=1e-10)
  _check_selection(sel, b, mask & ~labeled)


class CoresetFloat32Test(chex.TestCase):
  @chex.variants(without_jit=True)
  def test_picks_are_greedy(self):
    """In float32 each pick is the farthest point up to rounding."""
    rng = np.random.default_rng(seed_for(self.id()))
    n, b = 400, 15
    x = rng.standard_normal((n, 16)).astype(np.float32)
    labeled = rng.random(n) < 0.1
    fn = functools.partial(
      alfx.coreset, batch_size=b, chunk_size=128, block_size=16
    )
    sel = self.variant(fn)(_f32(x), labeled=jnp.asarray(labeled))
    idx = np.asarray(sel.indices)
    d = np.sqrt(refb.sq_dists(x, x))
    centres = list(np.flatnonzero(labeled))
    for t in range(b):
      min_d = np.where(
        labeled | np.isin(np.arange(n), idx[:t]), -np.inf, d[:, centres].min(1)
      )
      assert min_d[idx[t]] >= min_d.max() * (1 - 1e-5)
      np.testing.assert_allclose(sel.scores[t], min_d[idx[t]], rtol=1e-4)
      centres.append(idx[t])
    assert np.all(np.diff(np.asarray(sel.scores)) <= 1e-5)


def test_coreset_no_labeled_starts_at_lowest_selectable(rng):
  x = _f32(rng.standard_normal((20, 3)))
  mask = jnp.arange(20) >= 3
  sel = alfx.coreset(x, 3, mask=mask)
  assert int(sel.indices[0]) == 3 and np.isinf(sel.scores[0])
  _check_selection(sel, 3, mask)


def test_coreset_never_forms_n_by_n(rng):
  n = 512
  x = _f32(rng.standard_normal((n, 4)))
  labeled = jnp.asarray(rng.random(n) < 0.5)
  size = _max_intermediate_size(
    lambda x, l, m: _coreset._coreset(
      x, l, m, batch_size=5, chunk_size=64, block_size=32
    ),
    x,
    labeled,
    jnp.ones(n, bool),
  )
  assert size <= 64 * 32 * 2 and size < n * n // 16, size


class TestCoresetBadInput:
  def test_inputs(self):
    x = jnp.ones((5, 2))
    with pytest.raises(ValueError, match=r"labeled must have shape \[N=5\]"):
      alfx.coreset(x, 1, labeled=jnp.zeros(4, bool))
    with pytest.raises(
      ValueError,
      match=r"labeled must be a boolean.*"
      r"labeled\.astype\(bool\)",
    ):
      alfx.coreset(x, 1, labeled=jnp.zeros(5))
    with pytest.raises(
      ValueError, match=r"embeddings must have shape \[N, D\]"
    ):
      alfx.coreset(jnp.ones((5, 2, 1)), 1)
    with pytest.raises(ValueError, match="embeddings.*inf"):
      alfx.coreset(x.at[1, 1].set(jnp.inf), 1)
    with pytest.raises(
      ValueError,
      match="larger than the number of"
      r" selectable, unlabelled points .*: 2 of N=5",
    ):
      alfx.coreset(x, 3, labeled=jnp.array([1, 1, 1, 0, 0], bool))
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
      alfx.coreset(x, 1, chunk_size=0)
    with pytest.raises(ValueError, match="block_size must be a positive"):
      alfx.coreset(x, 1, block_size=0)

  def test_labeled_covering_mask_names_labeled(self):
    x = jnp.arange(10.0).reshape(5, 2)
    mask = jnp.array([1, 1, 0, 0, 1], bool)
    for labeled in (jnp.ones(5, bool), mask):
      with pytest.raises(
        ValueError, match="labeled marks every point that mask selects"
      ):
        alfx.coreset(x, 1, labeled=labeled, mask=mask)


# ----------------------------------------------------------------------------
# k-means.


@pytest.mark.parametrize(
  "n_active,block,chunk",
  [(1, 4, 8), (5, 2, 7), (9, 4, 100), (12, 4, 13), (75, 40, 16), (80, 40, 41)],
)
def test_nearest_centroid_matches_dense(rng, n_active, block, chunk):
  x = rng.standard_normal((41, 3))
  centroids = rng.standard_normal((n_active, 3))
  with jax.enable_x64(True):
    # Rows past n_active (and the block of slack) are garbage to be ignored.
    padded = np.concatenate([centroids, 1e-3 * x[:block]])
    idx, d2 = _kmeans._nearest_centroid(
      jnp.asarray(x),
      jnp.asarray(padded),
      jnp.int32(n_active),
      shift=jnp.asarray(x[0]),
      chunk_size=chunk,
      block_size=block,
    )
  want_idx, want_d2 = refb.nearest_centroid(x, centroids[:n_active])
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(d2, want_d2, rtol=1e-9, atol=1e-12)


def test_kmeans_plus_plus_follows_the_d2_distribution():
  rng = np.random.default_rng(seed_for("kmeans++"))
  x = rng.standard_normal((6, 2))
  points = np.array([True, True, True, False, True, True])
  probs = refb.kmeans_pp_sequence_probabilities(x, points, 3)
  keys = jax.random.split(jax.random.key(9), 40_000)
  seed = jax.jit(
    jax.vmap(
      lambda k, x, p: _kmeans._kmeans_plus_plus(x, p, jnp.int32(3), k, 4)[1],
      in_axes=(0, None, None),
    )
  )
  picks = np.asarray(seed(keys, _f32(x), jnp.asarray(points)))
  np.testing.assert_array_equal(picks[:, 3], 0)  # inactive slot untouched
  assert chi_square_p_value(count_rows(picks[:, :3]), probs) > ALPHA


def test_kmeans_matches_lloyd_reference(rng):
  n, d, k = 120, 3, 5
  x = rng.standard_normal((n, d))
  points = rng.random(n) < 0.9
  key = jax.random.key(4)
  with jax.enable_x64(True):
    xj = jnp.asarray(x)
    # The seeding _kmeans runs: same key, same shift (the points' mean).
    init, _ = _kmeans._kmeans_plus_plus(
      xj,
      jnp.asarray(points),
      jnp.int32(k),
      key,
      8,
      shift=jnp.asarray(x[points].mean(0)),
      chunk_size=32,
    )
    centroids, labels, iters = _kmeans.kmeans(
      xj,
      jnp.asarray(points),
      jnp.int32(k),
      key,
      max_clusters=8,
      max_iterations=200,
      tol=0.0,
      chunk_size=32,
      block_size=4,
    )
  want_c, want_labels = refb.lloyd(x, points, np.asarray(init)[:k], 200)
  assert int(iters) < 200
  np.testing.assert_array_equal(np.asarray(labels)[points], want_labels)
  np.testing.assert_array_equal(np.asarray(labels)[~points], 8)
  np.testing.assert_allclose(
    np.asarray(centroids)[:k], want_c, rtol=1e-9, atol=1e-12
  )


def test_kmeans_is_a_fixed_point_and_finds_blobs(rng):
  x, blob = _blobs(rng, 6, 30, 4)
  points = jnp.ones(len(x), bool)
  centroids, labels, iters = jax.jit(
    functools.partial(
      _kmeans.kmeans,
      max_clusters=10,
      max_iterations=100,
      tol=1e-4,
      chunk_size=64,
      block_size=4,
    )
  )(_f32(x), points, jnp.int32(6), jax.random.key(0))
  labels = np.asarray(labels)
  assert labels.max() < 6 and int(iters) < 100
  # One cluster per blob.
  for b in range(6):
    assert len(set(labels[blob == b])) == 1
  assert len(set(labels)) == 6
  want_labels, _ = refb.nearest_centroid(x, np.asarray(centroids)[:6])
  np.testing.assert_array_equal(labels, want_labels)
  for c in range(6):
    np.testing.assert_allclose(
      centroids[c], x[labels == c].mean(0), rtol=1e-4, atol=1e-4
    )


# ----------------------------------------------------------------------------
# TypiClust.


@pytest.mark.parametrize(
  "m,k_nn,block",
  [(1, 20, 4), (2, 20, 4), (7, 3, 2), (30, 20, 8), (45, 5, 64), (57, 20, 40)],
)
def test_most_typical_matches_dense(rng, m, k_nn, block):
  n = 60
  x = rng.standard_normal((n, 3))
  members = np.zeros(n, bool)
  members[rng.choice(n, m, replace=False)] = True
  with jax.enable_x64(True):
    xj = jnp.asarray(x)
    index, typ = _typiclust._most_typical(
      xj, jnp.asarray(members), k_nn=k_nn, block_size=block
    )
  ids = np.flatnonzero(members)
  want = refb.typicality(x[ids], k_nn)
  assert int(index) == ids[np.argmax(want)]
  np.testing.assert_allclose(typ, want.max(), rtol=1e-9)


@pytest.mark.parametrize("b,min_cluster_size", [(4, 5), (9, 5), (12, 0)])
def test_typiclust_selection_matches_reference(rng, b, min_cluster_size):
  """Selection stage given clusters: coverage order, sizes, cycling."""
  n, n_clusters = 90, 6
  x = rng.standard_normal((n, 2))
  sizes = [30, 25, 15, 10, 5, 5]
  labels = np.repeat(np.arange(n_clusters), sizes)[rng.permutation(n)]
  labels[rng.random(n) < 0.05] = n_clusters  # outside the clustering
  labeled = (rng.random(n) < 0.08) & (labels < n_clusters)
  selectable = ~labeled & (labels < n_clusters)
  selectable[rng.choice(np.flatnonzero(selectable), 3, replace=False)] = False
  want_idx, want_typ = refb.typiclust_select(
    x, labels, labeled, selectable, b, n_clusters, 4, min_cluster_size
  )
  with jax.enable_x64(True):
    sel = _typiclust._typiclust_select(
      jnp.asarray(x),
      jnp.asarray(labels, jnp.int32),
      jnp.asarray(labeled),
      jnp.asarray(selectable),
      b,
      n_clusters,
      4,
      min_cluster_size,
      8,
    )
  np.testing.assert_array_equal(sel.indices, want_idx)
  np.testing.assert_allclose(sel.scores, want_typ, rtol=1e-9)
  _check_selection(sel, b, selectable)


def test_typiclust_end_to_end_on_blobs(rng):
  """L + B blobs, some covered: one most typical pick per uncovered blob."""
  # Distinct sizes: the order of the picks (largest first) is then defined
  # by the blobs, whatever ids k-means gives the clusters.
  x, blob = _blobs(rng, 8, np.arange(20, 28)[rng.permutation(8)], 5)
  n = len(x)
  labeled = np.zeros(n, bool)
  for b_ in (1, 4, 6):  # label one point in three of the blobs
    labeled[np.flatnonzero(blob == b_)[0]] = True
  b = 5
  sel = alfx.typiclust(
    _f32(x), b, key=jax.random.key(0), labeled=jnp.asarray(labeled)
  )
  _check_selection(sel, b, ~labeled)
  want_idx, want_typ = refb.typiclust_select(
    x, blob, labeled, ~labeled, b, 8, 20, 5
  )
  np.testing.assert_array_equal(sel.indices, want_idx)
  np.testing.assert_allclose(sel.scores, want_typ, rtol=1e-4)
  assert sorted(set(blob[np.asarray(sel.indices)])) == [0, 2, 3, 5, 7]


def test_typiclust_keys_and_masks(rng):
  n, b = 200, 6
  x = _f32(rng.standard_normal((n, 4)))
  labeled = jnp.asarray(rng.random(n) < 0.05)
  mask = jnp.asarray(rng.random(n) < 0.7)
  run = functools.partial(
    alfx.typiclust,
    max_clusters=32,
    block_size=16,
    chunk_size=64,
    labeled=labeled,
    mask=mask,
  )
  a = run(x, b, key=jax.random.key(0))
  _check_selection(a, b, np.asarray(mask) & ~np.asarray(labeled))
  np.testing.assert_array_equal(
    a.indices, run(x, b, key=jax.random.key(0)).indices
  )
  others = [run(x, b, key=jax.random.key(s)).indices for s in (1, 2, 3)]
  assert any(not np.array_equal(a.indices, o) for o in others)


def test_typiclust_never_forms_n_by_n(rng):
  n = 256
  x = rng.standard_normal((n, 3))
  size = _max_intermediate_size(
    lambda x, l, m, k: _typiclust._typiclust(
      x,
      l,
      m,
      k,
      1e-4,
      batch_size=3,
      max_clusters=8,
      k_nn=20,
      min_cluster_size=5,
      max_iterations=10,
      max_candidates=None,
      chunk_size=32,
      block_size=16,
    ),
    _f32(x),
    jnp.zeros(n, bool),
    jnp.ones(n, bool),
    jax.random.key(0),
  )
  assert size < n * n // 16, size


class TestTypiclustBadInput:
  def test_inputs(self):
    x = jnp.ones((6, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="key is required"):
      alfx.typiclust(x, 1, key=None)
    with pytest.raises(ValueError, match=r"labeled must have shape \[N=6\]"):
      alfx.typiclust(x, 1, key=key, labeled=jnp.zeros(3, bool))
    with pytest.raises(ValueError, match=r"labeled\.astype\(bool\)"):
      alfx.typiclust(x, 1, key=key, labeled=jnp.zeros(6, jnp.int32))
    for name in (
      "max_clusters",
      "k_nn",
      "max_iterations",
      "chunk_size",
      "block_size",
      "max_candidates",
    ):
      with pytest.raises(ValueError, match=f"{name} must be a positive"):
        alfx.typiclust(x, 1, key=key, **{name: 0})
    with pytest.raises(ValueError, match="min_cluster_size"):
      alfx.typiclust(x, 1, key=key, min_cluster_size=-1)
    for tol in (float("nan"), -1e-3):
      with pytest.raises(ValueError, match="tol must be a finite number"):
        alfx.typiclust(x, 1, key=key, tol=tol)
    with pytest.raises(ValueError, match="larger than the number"):
      alfx.typiclust(x, 2, key=key, labeled=jnp.ones(6, bool).at[0].set(False))
    with pytest.raises(ValueError, match="labeled marks every point"):
      alfx.typiclust(x, 1, key=key, labeled=jnp.ones(6, bool))

  def test_traced_tol_gives_the_picks_of_the_float(self, rng):
    """tol is a value, not a static option: a traced tol gives the picks of
    the same Python float."""
    x = _f32(rng.standard_normal((60, 3)))
    key = jax.random.key(0)
    run = jax.jit(
      lambda x, tol: alfx.typiclust(x, 3, key=key, tol=tol, max_clusters=8)
    )
    for tol in (1e-4, 0.5):
      np.testing.assert_array_equal(
        run(x, tol).indices,
        alfx.typiclust(x, 3, key=key, tol=tol, max_clusters=8).indices,
      )


# ----------------------------------------------------------------------------
# Every diversity baseline: embeddings too large for their dtype, NaN.


def _diversity_runs(n, c=3):
  """name -> fn(embeddings) for BADGE, CoreSet and TypiClust."""
  rng = np.random.default_rng(seed_for("diversity_runs"))
  probs = _f32(_random_probs(rng, n, c))
  labeled = jnp.zeros(n, bool).at[:3].set(True)
  key = jax.random.key(0)
  return {
    "badge": lambda x: alfx.badge(x, probs.astype(x.dtype), 4, key=key),
    "coreset": lambda x: alfx.coreset(
      x, 4, labeled=labeled, chunk_size=16, block_size=8
    ),
    "typiclust": lambda x: alfx.typiclust(
      x,
      4,
      key=key,
      labeled=labeled,
      max_clusters=16,
      chunk_size=16,
      block_size=8,
    ),
  }


@pytest.mark.parametrize("name", ["badge", "coreset", "typiclust"])
def test_embeddings_too_large_for_the_dtype(rng, name):
  """float32 embeddings ~1e20: their squares overflow. Eagerly a ValueError
  naming embeddings with both fixes; under jit NaN scores and valid=False;
  the same values in float64 are fine."""
  n = 40
  x = rng.standard_normal((n, 5))
  run = _diversity_runs(n)[name]
  with pytest.raises(
    ValueError,
    match=r"embeddings \(shape \[N, D\]\) are"
    r" too large for float32.*Rescale embeddings.*float64",
  ):
    run(_f32(1e20 * x))
  sel = jax.jit(run)(_f32(1e20 * x))
  assert not np.asarray(sel.valid).any(), sel
  assert np.isnan(np.asarray(sel.scores)).all(), sel
  # Staged by alfx.checked, the check raises inside jit.
  with pytest.raises(Exception, match="embeddings .* too large for float32"):
    alfx.checked(run)(_f32(1e20 * x))
  with jax.enable_x64(True):
    big = run(jnp.asarray(1e20 * x))
    unit = run(jnp.asarray(x))
  np.testing.assert_array_equal(big.indices, unit.indices)
  assert np.asarray(big.valid).all()


@pytest.mark.parametrize("name", ["badge", "coreset", "typiclust"])
def test_large_embeddings_within_the_headroom_pick_as_rescaled(rng, name):
  """Just inside the limit (8 max |x_n|^2 a tenth of the float32 maximum)
  nothing overflows: the picks are those of the rescaled embeddings."""
  n = 40
  x = rng.standard_normal((n, 5)).astype(np.float32)
  largest = (x.astype(np.float64) ** 2).sum(1).max()
  scale = np.sqrt(0.1 * np.finfo(np.float32).max / (8 * largest))
  run = _diversity_runs(n)[name]
  big, unit = run(_f32(scale * x)), run(_f32(x))
  np.testing.assert_array_equal(big.indices, unit.indices)
  assert (
    np.asarray(big.valid).all()
    and np.isfinite(np.asarray(big.scores)[1:]).all()
  )


@pytest.mark.parametrize("name", ["badge", "coreset", "typiclust"])
def test_nan_embeddings_under_jit_are_invalid(rng, name):
  """Under jit the NaN check cannot raise: NaN scores, valid=False."""
  n = 40
  x = _f32(rng.standard_normal((n, 5))).at[7, 2].set(jnp.nan)
  run = _diversity_runs(n)[name]
  with pytest.raises(ValueError, match="embeddings.*NaN"):
    run(x)
  sel = jax.jit(run)(x)
  assert not np.asarray(sel.valid).any(), sel
  assert np.isnan(np.asarray(sel.scores)).all(), sel


@pytest.mark.parametrize("name", ["coreset", "typiclust"])
def test_labeled_points_are_never_picked(rng, name):
  """Labelled points outside and inside mask alike: picks from mask &
  ~labeled only, even when labelled points are the farthest or most
  typical."""
  n = 60
  x = rng.standard_normal((n, 3))
  x[:5] *= 30  # far away: CoreSet's farthest points if they were pickable
  labeled = np.zeros(n, bool)
  labeled[:5] = True
  labeled[20:40] = True
  mask = np.ones(n, bool)
  mask[50:] = False
  key = jax.random.key(1)
  fn = dict(
    coreset=lambda **kw: alfx.coreset(_f32(x), 8, **kw),
    typiclust=lambda **kw: alfx.typiclust(
      _f32(x), 8, key=key, max_clusters=16, **kw
    ),
  )[name]
  sel = fn(labeled=jnp.asarray(labeled), mask=jnp.asarray(mask))
  _check_selection(sel, 8, mask & ~labeled)
  # labeled=None: nothing labelled, the far points are pickable again.
  sel = fn(mask=jnp.asarray(mask))
  _check_selection(sel, 8, mask)


def test_tiled_distances_are_translation_invariant_in_float32(rng):
  """Embeddings far from the origin: the shifted tiles keep their precision."""
  x = rng.standard_normal((300, 8)).astype(np.float32)
  offset = np.float32(1e3) * rng.standard_normal(8).astype(np.float32)
  labeled = jnp.asarray(rng.random(300) < 0.3)
  near = alfx.coreset(_f32(x), 8, labeled=labeled, chunk_size=64, block_size=16)
  far = alfx.coreset(
    _f32(x + offset), 8, labeled=labeled, chunk_size=64, block_size=16
  )
  np.testing.assert_array_equal(near.indices, far.indices)
  np.testing.assert_allclose(near.scores, far.scores, rtol=1e-3)
  members = jnp.asarray(rng.random(300) < 0.4)
  got = [
    _typiclust._most_typical(_f32(v), members, k_nn=10, block_size=32)
    for v in (x, x + offset)
  ]
  assert int(got[0][0]) == int(got[1][0])
  np.testing.assert_allclose(got[0][1], got[1][1], rtol=1e-3)


def test_most_typical_over_a_candidate_subset(rng):
  """Typicality of the candidates is exact: all members are neighbours."""
  n = 80
  x = rng.standard_normal((n, 3))
  members = rng.random(n) < 0.6
  candidates = members & (rng.random(n) < 0.3)
  with jax.enable_x64(True):
    index, typ = _typiclust._most_typical(
      jnp.asarray(x),
      jnp.asarray(members),
      k_nn=6,
      block_size=8,
      candidates=jnp.asarray(candidates),
    )
  ids = np.flatnonzero(members)
  all_typ = refb.typicality(x[ids], 6)
  cand_typ = np.where(candidates[ids], all_typ, -np.inf)
  assert int(index) == ids[np.argmax(cand_typ)]
  np.testing.assert_allclose(typ, cand_typ.max(), rtol=1e-9)


def test_typiclust_max_candidates(rng):
  """A cap above every cluster is exact; a small cap picks within the same
  clusters, with exact typicality values."""
  n, n_clusters, b = 120, 5, 7
  x = rng.standard_normal((n, 3))
  labels = rng.integers(0, n_clusters, n)
  labeled = rng.random(n) < 0.05
  selectable = ~labeled
  with jax.enable_x64(True):
    args = (
      jnp.asarray(x),
      jnp.asarray(labels, jnp.int32),
      jnp.asarray(labeled),
      jnp.asarray(selectable),
      b,
      n_clusters,
      4,
      5,
      8,
    )
    exact = _typiclust._typiclust_select(*args)
    capped_high = _typiclust._typiclust_select(
      *args, max_candidates=n, key=jax.random.key(0)
    )
    capped = _typiclust._typiclust_select(
      *args, max_candidates=3, key=jax.random.key(0)
    )
  np.testing.assert_array_equal(exact.indices, capped_high.indices)
  want_idx, _ = refb.typiclust_select(
    x, labels, labeled, selectable, b, n_clusters, 4, 5
  )
  np.testing.assert_array_equal(exact.indices, want_idx)
  got, scores = np.asarray(capped.indices), np.asarray(capped.scores)
  assert scores.dtype == np.float64
  _check_selection(capped, b, selectable)
  assert not np.array_equal(got, want_idx)  # the cap did change the search
  candidates = selectable.copy()
  for t in range(b):
    cluster = labels[want_idx[t]]
    assert labels[got[t]] == cluster
    ids = np.flatnonzero(candidates & (labels == cluster))
    typ = refb.typicality(x[ids], 4)
    np.testing.assert_allclose(
      scores[t], typ[np.flatnonzero(ids == got[t])[0]], rtol=1e-9
    )
    candidates[got[t]] = False

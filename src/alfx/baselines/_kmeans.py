"""k-means with a traced number of clusters: k-means++ seeding, then Lloyd.

TypiClust's clustering (`alfx.baselines._typiclust`), in tiles that follow
the active number of clusters (`alfx.baselines._distances`), shardable over
the pool.

May import: `alfx._core`, `alfx.baselines._distances`.
"""

import jax
from jax import lax
import jax.numpy as jnp

from alfx._core import pool as _pool
from alfx.baselines._distances import centred_sq_norms
from alfx.baselines._distances import d2_sample
from alfx.baselines._distances import fold_blocks
from alfx.baselines._distances import pool_mean
from alfx.baselines._distances import sq_dist_to_row
from alfx.baselines._distances import sq_norms
from alfx.baselines._distances import tile_sq_dists


def _nearest_centroid(x, centroids, n_active, *, shift, chunk_size, block_size):
  """``(int32[N] index, [N] squared distance)`` of the nearest active centroid.

  ``centroids`` is ``[M, D]`` with ``M >= n_active + block_size``; only the
  first ``n_active`` (traced) count and only their blocks are computed
  (`fold_blocks`). Ties go to the lower centroid index.
  """
  centroids = centroids - shift
  c_sq = sq_norms(centroids)

  def per_chunk(xc):
    xc = xc - shift
    xc_sq = sq_norms(xc)

    def fold(carry, start, size):
      best_d2, best_i = carry
      c = lax.dynamic_slice_in_dim(centroids, start, size)
      cs = lax.dynamic_slice_in_dim(c_sq, start, size)
      ids = start + jnp.arange(size, dtype=jnp.int32)
      d2 = jnp.where(
        ids[None, :] < n_active, tile_sq_dists(xc, xc_sq, c, cs), jnp.inf
      )
      d2_min = jnp.min(d2, axis=1)
      better = d2_min < best_d2  # strict: earlier blocks win ties
      arg = start + jnp.argmin(d2, axis=1).astype(jnp.int32)
      return jnp.where(better, d2_min, best_d2), jnp.where(better, arg, best_i)

    init = (
      jnp.full(xc.shape[:1], jnp.inf, x.dtype),
      jnp.zeros(xc.shape[:1], jnp.int32),
    )
    best_d2, best_i = fold_blocks(n_active, block_size, fold, init)
    return best_i, best_d2

  return _pool.chunked_map(per_chunk, x, chunk_size=chunk_size)


def _kmeans_plus_plus(
  x,
  points,
  n_active,
  key,
  n_centroids,
  *,
  shift=None,
  chunk_size=_pool.DEFAULT_CHUNK_SIZE,
  axis_name=None,
):
  """k-means++ seeding (Arthur and Vassilvitskii 2007) of ``n_active`` centres.

  The first centre is uniform over ``points``, each next one a D^2 draw
  (one candidate per step, not scikit-learn's greedy ``2 + log k`` trials).
  Returns ``([n_centroids, D] centres, zero beyond n_active; int32
  [n_centroids] their pool indices)``.
  """
  n, d = x.shape
  shift = pool_mean(x, axis_name) if shift is None else shift
  x_sq = centred_sq_norms(x, shift, chunk_size)

  def body(carry):
    t, centres, picked, min_d2, chosen = carry
    d2 = jnp.where(t == 0, jnp.ones_like(min_d2), min_d2)
    index, _ = d2_sample(
      jax.random.fold_in(key, t), d2, points & ~chosen, axis_name
    )
    centre = _pool.take(x, index, axis_name)
    # The centre's own distance is exactly 0 (rounding could leave it > 0).
    new_d2 = _pool.set_at(
      sq_dist_to_row(x, x_sq, shift, centre), index, 0, axis_name
    )
    return (
      t + 1,
      centres.at[t].set(centre),
      picked.at[t].set(index),
      jnp.minimum(min_d2, new_d2),
      _pool.set_at(chosen, index, True, axis_name),
    )

  init = (
    jnp.zeros((), jnp.int32),
    jnp.zeros((n_centroids, d), x.dtype),
    jnp.zeros((n_centroids,), jnp.int32),
    jnp.full((n,), jnp.inf, x.dtype),
    jnp.zeros((n,), bool),
  )
  _, centres, picked, _, _ = lax.while_loop(
    lambda c: c[0] < n_active, body, init
  )
  return centres, picked


def kmeans(
  x,
  points,
  n_active,
  key,
  *,
  max_clusters,
  max_iterations,
  tol,
  block_size,
  chunk_size=_pool.DEFAULT_CHUNK_SIZE,
  axis_name=None,
):
  """k-means (k-means++ seeding, then Lloyd) with a traced number of clusters.

  Args:
    x: ``[N, D]``.
    points: ``bool[N]`` the points to cluster; others get label
      ``max_clusters`` and do not move centroids.
    n_active: traced ``int32`` number of clusters, ``1 <= n_active <=
      min(max_clusters, sum(points))``; centroids ``>= n_active`` are
      inactive (never assigned).
    key: PRNG key of the seeding.
    max_clusters: static ``M``, the size of the centroid array.
    max_iterations: static cap on Lloyd iterations.
    tol: like scikit-learn's: stop when the squared centroid shift is at most
      ``tol`` times the mean per-feature variance of the points; Lloyd also
      stops as soon as no assignment changes.
    block_size, chunk_size: tile sizes of the assignment step (``chunk_size``
      pool rows, default `alfx._core.pool.DEFAULT_CHUNK_SIZE`).

  Returns:
    ``(centroids [M, D], labels int32[N], n_iterations)``; labels are the
    nearest centroid under the returned centroids. An empty cluster keeps its
    previous centroid.
  """
  n, d = x.shape
  m_pad = max_clusters + block_size  # room for the last block's slice
  dtype = x.dtype
  w = points.astype(dtype)
  n_points = _pool.psum(jnp.sum(w), axis_name)
  # Reductions over rows (fused by XLA, no [N, D] temporary).
  mean = _pool.psum(jnp.sum(w[:, None] * x, axis=0), axis_name) / n_points
  # Divided before the sum: N squared deviations must not overflow.
  variance = _pool.psum(
    jnp.sum(w[:, None] * (jnp.square(x - mean) / n_points), axis=0), axis_name
  )
  tol_abs = tol * jnp.mean(variance)

  centroids, _ = _kmeans_plus_plus(
    x,
    points,
    n_active,
    key,
    m_pad,
    shift=mean,
    chunk_size=chunk_size,
    axis_name=axis_name,
  )

  def assign(centroids):
    labels, _ = _nearest_centroid(
      x,
      centroids,
      n_active,
      shift=mean,
      chunk_size=chunk_size,
      block_size=block_size,
    )
    return jnp.where(points, labels, m_pad)

  def update(labels, centroids):
    # Label m_pad (points not clustered) is dropped by segment_sum.
    sums = _pool.psum(jax.ops.segment_sum(x, labels, m_pad), axis_name)
    counts = _pool.psum(jax.ops.segment_sum(w, labels, m_pad), axis_name)
    return jnp.where(
      counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids
    )

  def cond(carry):
    it, _, _, done = carry
    return (it < max_iterations) & ~done

  def body(carry):
    it, centroids, labels, _ = carry
    new_labels = assign(centroids)
    new_centroids = update(new_labels, centroids)
    shift = jnp.sum(jnp.square(new_centroids - centroids))
    unchanged = _pool.psum(jnp.sum(new_labels != labels), axis_name) == 0
    return it + 1, new_centroids, new_labels, unchanged | (shift <= tol_abs)

  labels0 = jnp.full((n,), -1, jnp.int32)
  iterations, centroids, _, _ = lax.while_loop(
    cond,
    body,
    (jnp.zeros((), jnp.int32), centroids, labels0, jnp.zeros((), bool)),
  )
  labels = assign(centroids)
  return centroids[:max_clusters], jnp.minimum(labels, max_clusters), iterations

"""Diversity baselines: BADGE, CoreSet (k-center greedy), TypiClust, k-means.

All distances are Euclidean on the rows of ``embeddings[N, D]`` (for BADGE,
on the implicit gradient embeddings). Nothing forms an ``N x N`` matrix:

* greedy steps carry one min-distance per point (``[N]``) and add one
  centre per step (``O(N D)`` per step, memory-bound);
* distances between the pool and a *set* (the labelled points, the k-means
  centroids, a cluster's members) are computed in ``[chunk_size, block]``
  tiles, looping over blocks of the set with a trip count that depends on
  the set's (traced) size, so the cost follows the actual set size while
  every shape stays static.

Squared distances are ``|x - s|^2 + |c - s|^2 - 2 (x - s).(c - s)``, clipped
at 0, with ``s`` a point near the data (the pool mean, a cluster's mean) so
that the cancellation error scales with the data's spread, not with its
distance from the origin: a matmul per tile (compute-bound), a
matrix-vector product per greedy step (memory-bound, with ``|x - s|^2``
computed once).

Sharding: BADGE, CoreSet, k-means (seeding and Lloyd) and TypiClust use
`alfx._pool` for every pool-wide argmax, row read, sum and random draw and
take an ``axis_name``; under ``jax.shard_map`` they pick exactly what the
single-device run picks (tests/sharded_baselines.py, tests/sharded_public.py).
TypiClust's within-cluster neighbours: each device scores its own candidates
against the cluster's members, all-gathered one block per shard at a time.
"""

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation

#: Default set rows (labelled points, centroids, cluster members) per tile
#: (pool rows per tile: ``chunk_size``, `alfx._pool.DEFAULT_CHUNK_SIZE`).
DEFAULT_BLOCK_SIZE = 256

#: Squared distances are formed from norms: with every row within ``R`` of
#: the origin, ``|x - s|^2 + |c - s|^2`` (``s`` the pool or cluster mean)
#: reaches ``8 R^2`` before the ``- 2 (x - s).(c - s)`` brings it back to a
#: distance (at most ``4 R^2``); BADGE's ``|a|^2 |h|^2`` terms (``|a|^2 <=
#: 2``) stay below the same bound. Embeddings whose ``8 max_n |x_n|^2``
#: overflows their dtype are refused.
_SQUARE_HEADROOM = 8.0


# ----------------------------------------------------------------------------
# Shared pieces.


@jax.jit
def _max_sq_norm(x):
  """``max_n |x_n|^2`` (float32 or wider): ``inf`` when it overflows."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return jnp.max(jnp.sum(x * x, axis=-1))


@jax.jit
def _max_sq_norm_factors(x):
  """``(s, r)`` with ``max_n |x_n|^2 = s^2 r``, neither overflowing.

  ``s = max |x_nd|``, ``r = max_n |x_n / s|^2`` in ``[1, D]``: for the
  message, where the square itself overflowed.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  scale = jnp.max(jnp.abs(x))
  safe = jnp.where(scale > 0, scale, 1)
  return scale, jnp.max(jnp.sum(jnp.square(x / safe), axis=-1))


def _check_embeddings(embeddings, name: str = "embeddings") -> jax.Array:
  """`check_matrix`, then refuses rows whose squared norms overflow the dtype.

  The squared distances go through ``|x|^2``-sized intermediates (up to
  ``_SQUARE_HEADROOM max_n |x_n|^2``); past the dtype's largest value they
  become ``inf``, then NaN, and the picks garbage. One reduction over the
  embeddings, on concrete input only (like every value check; under ``jit``
  the cores return ``valid=False`` instead, `_guard_overflow`).
  """
  x = _validation.check_matrix(embeddings, name)
  finfo = jnp.finfo(x.dtype)
  limit = float(finfo.max) / _SQUARE_HEADROOM

  def fn(x):
    largest = _max_sq_norm(x)  # inf fails the test too
    return largest <= limit, dict(largest=largest)

  def explain(v):
    largest = v["largest"]
    if not largest < float("inf"):  # the exact value, as a Python float
      scale, ratio = (float(u) for u in _max_sq_norm_factors(x))
      largest = scale**2 * ratio
    return (f"{name} (shape [N, D]) are too large for {x.dtype}: the largest"
            f" squared row norm max_n |x_n|^2 is {largest:.3g}, and the"
            f" squared distances need up to {_SQUARE_HEADROOM:g} times that,"
            f" above the largest {x.dtype} ({float(finfo.max):.3g}): they"
            f" would overflow to inf/NaN. Rescale {name} (e.g. divide by"
            " their largest row norm: every distance scales by the same"
            f" factor) or pass them as float64 (jax.enable_x64).")

  _validation.value_check(
      fn, (x,), explain,
      f"{name} (shape [N, D]) are too large for {x.dtype}: the largest"
      " squared row norm {largest} overflows the squared distances; rescale"
      f" {name} or pass them as float64.")
  return x


def _guard_overflow(selection, largest_sq, headroom, axis_name=None):
  """``selection`` with NaN scores and ``valid=False`` if squares overflow.

  ``largest_sq`` is the local maximum of squared norms that the core's
  distance formulas multiply by at most ``headroom``. On concrete input
  `_check_embeddings` has already refused such embeddings; under the
  caller's ``jit`` they must not come back as plausible picks. NaN in
  ``largest_sq`` counts as overflow too.
  """
  limit = float(jnp.finfo(largest_sq.dtype).max) / headroom
  bad = _pool.psum((~(largest_sq <= limit)).astype(jnp.int32),
                   axis_name) > 0
  return selection._replace(
      scores=jnp.where(bad, jnp.nan, selection.scores).astype(
          selection.scores.dtype),
      valid=selection.valid & ~bad)


def _sq_norms(x):
  return jnp.sum(x * x, axis=-1)


def _centred_sq_norms(x, shift, chunk_size):
  """``[N]`` values ``|x_n - shift|^2``, one pass in row chunks."""
  return _pool.chunked_map(lambda xc: _sq_norms(xc - shift), x,
                           chunk_size=chunk_size)


def _sq_dist_to_row(x, x_sq, shift, row):
  """``[N]`` squared distances of every row of ``x`` to one ``row``.

  ``|x - r|^2 = |x - s|^2 + |r - s|^2 - 2 (x - s).(r - s)`` with ``x_sq =
  |x - s|^2`` precomputed: one matrix-vector product per call, which XLA
  runs at memory bandwidth inside a scan (the direct ``sum((x - r)**2)`` was
  5x slower there on CPU). The shift ``s`` (the pool mean) keeps the
  cancellation error relative to the data's spread, not its offset.
  """
  r = row - shift
  return jnp.maximum(x_sq + jnp.sum(r * r) - 2 * (x @ r - jnp.dot(shift, r)),
                     0)


def _tile_sq_dists(x, x_sq, c, c_sq):
  """``[n, m]`` squared distances from a matmul, clipped at 0.

  Callers pass rows shifted by a common point near the data (the pool mean,
  a cluster's mean): distances do not change, and the norms, hence the
  cancellation error of ``|x|^2 + |c|^2 - 2 x.c``, stay small when the
  embeddings sit far from the origin.
  """
  return jnp.maximum(x_sq[:, None] + c_sq[None, :] - 2 * (x @ c.T), 0)


def _pool_mean(x, axis_name=None):
  """``[D]`` mean of all pool rows (the shift of the tiled distances)."""
  total = _pool.psum(jnp.sum(x, axis=0), axis_name)
  return total / _pool.size(x.shape[0], axis_name)


def _d2_sample(key, d2, available, axis_name=None):
  """One D^2 draw: ``P(n) ∝ d2[n]`` over the available points (Gumbel-max).

  Gumbel-max on ``log d2`` samples the categorical exactly and needs only a
  pool-wide argmax. Points with ``d2 = 0`` have probability 0; if every
  available point has ``d2 = 0`` (duplicates of chosen centres), the draw
  falls back to uniform over the available points.

  Returns:
    ``(index, valid)``: the global pool index and whether a point was
    available at all.
  """
  positive = available & (d2 > 0)
  any_positive = _pool.psum(jnp.sum(positive, dtype=jnp.int32), axis_name) > 0
  log_d2 = jnp.log(jnp.where(positive, d2, 1))
  logits = jnp.where(any_positive, jnp.where(positive, log_d2, -jnp.inf),
                     jnp.where(available, 0, -jnp.inf))
  noise = _pool.gumbel(key, d2.shape, d2.dtype, axis_name=axis_name)
  index, value = _pool.argmax(logits + noise, axis_name)
  return index, value > -jnp.inf


#: Width of the narrow blocks that finish a set after its full blocks.
SMALL_BLOCK_SIZE = 32


def _fold_blocks(count, block, fn, carry, axis_name=None):
  """Folds ``fn(carry, start, size)`` over ``[0, count)`` in static-size blocks.

  Full blocks of ``block`` rows, then blocks of ``SMALL_BLOCK_SIZE`` for the
  rest, so that a small set (10 labelled points, 20 centroids) costs a narrow
  tile, not a full one, while a large set runs at full-tile efficiency; at
  most ``SMALL_BLOCK_SIZE - 1`` padded rows are computed. ``count`` is
  traced; rows past it must be masked by ``fn`` (``start + arange(size) <
  count``). Sharded, the trip counts are the largest shard's.
  """
  small = min(SMALL_BLOCK_SIZE, block)
  n_big = _pool.pmax(count // block, axis_name)
  carry = lax.fori_loop(0, n_big, lambda j, c: fn(c, j * block, block), carry)
  done = n_big * block
  n_small = _pool.pmax(-(-jnp.maximum(count - done, 0) // small), axis_name)
  return lax.fori_loop(0, n_small,
                       lambda j, c: fn(c, done + j * small, small), carry)


def _set_indices(members, block):
  """``(int32[N + block] indices of the True entries, count)``.

  Entries past ``count`` are 0 (callers mask them); the ``block`` extra
  entries keep every slice of `_fold_blocks` in bounds (a dynamic slice
  past the end would be clamped, silently shifted).
  """
  (indices,) = jnp.nonzero(members, size=members.shape[0] + block,
                           fill_value=0)
  return indices.astype(jnp.int32), jnp.sum(members, dtype=jnp.int32)


def _min_sq_dist_to_set(x, members, *, shift, chunk_size, block_size,
                        axis_name=None):
  """``[N]`` squared distance of every pool row to its nearest member row.

  ``+inf`` where the set is empty. Cost ``O(N * |set| * D)`` in
  ``[chunk_size, block_size]`` tiles, the set's blocks looped over with a
  trip count from its (traced) size (`_fold_blocks`). Sharded, each block
  step all-gathers one block of member rows per shard (replicated).
  """
  block = min(block_size, x.shape[0])
  indices, count = _set_indices(members, block)

  def per_chunk(xc):
    xc = xc - shift
    xc_sq = _sq_norms(xc)

    def fold(best, start, size):
      ids = lax.dynamic_slice_in_dim(indices, start, size)
      rows = _pool.all_gather(x[ids] - shift, axis_name)
      valid = _pool.all_gather(start + jnp.arange(size) < count,
                               axis_name)
      d2 = _tile_sq_dists(xc, xc_sq, rows, _sq_norms(rows))
      d2 = jnp.where(valid[None, :], d2, jnp.inf)
      return jnp.minimum(best, jnp.min(d2, axis=1))

    best = jnp.full(xc.shape[:1], jnp.inf, x.dtype)
    return _fold_blocks(count, block, fold, best, axis_name)

  return _pool.chunked_map(per_chunk, x, chunk_size=chunk_size)


# ----------------------------------------------------------------------------
# BADGE.


def badge(embeddings, probs, batch_size, *, key, mask=None):
  """BADGE: k-means++ seeding on gradient embeddings (Ash et al. 2020).

  The gradient embedding of pool point ``n`` is the gradient of the
  cross-entropy at the predicted label ``yhat_n = argmax_c p_nc`` with
  respect to the last linear layer (weights only, no bias), up to sign:
  ``g_n = a_n (x) h_n`` with ``a_n = e_yhat - p_n`` and ``h_n`` the
  penultimate-layer embedding. Distances use the factorisation
  ``|g_i - g_j|^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i.a_j)(h_i.h_j)``,
  so the ``[N, C * D]`` matrix is never formed.

  Like the original (``init_centers`` in JordanAsh/badge), the first pick is
  the selectable point of largest gradient norm, and each further pick is a
  D^2 draw: ``P(n) ∝ min_j |g_n - g_j|^2`` over the selectable points not yet
  picked, ``j`` running over the picks so far (sampled exactly, by
  Gumbel-max on ``log D^2``; already-picked points are excluded, as the
  original's rejection loop does). If every remaining point has
  ``D^2 = 0``, the draw is uniform over them. Labelled points are *not*
  centres (as in the original, which seeds on the unlabelled pool only):
  exclude them through ``mask``.

  Args:
    embeddings: ``float[N, D]`` penultimate-layer embeddings ``h``.
    probs: ``float[N, C]`` predictive class probabilities ``p`` (softmax
      outputs; non-negative, rows summing to 1).
    batch_size: static ``int``, ``B``.
    key: a PRNG key.
    mask: optional ``bool[N]``, True where a point may be picked.

  Returns:
    A :class:`Selection` in pick order; ``scores[0]`` is the first pick's
    squared gradient norm ``|g|^2``, ``scores[t]`` the ``D^2`` of pick ``t``
    (its squared distance to the nearest earlier pick) when it was drawn.

  Raises:
    ValueError: on bad shapes or values; when the embeddings' squared norms
      overflow their dtype (rescale them or pass float64).

  Cost: ``B`` passes over ``h`` and ``a`` (``O(B N (D + C))``, memory-bound),
  memory ``O(N (D + C))`` for ``a`` and a few ``[N]`` vectors.
  """
  embeddings = _check_embeddings(embeddings)
  n = embeddings.shape[0]
  probs = _validation.check_probs(probs, n)
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask)
  key = _validation.check_key(key)
  return _badge(embeddings, probs, mask, key, batch_size=batch_size)


def _badge_gradient_factors(embeddings, probs):
  """``(a [N, C], |a|^2 [N], |h|^2 [N])`` of the BADGE gradient embeddings."""
  dtype = jnp.result_type(embeddings.dtype, probs.dtype)
  probs = probs.astype(dtype)
  yhat = jnp.argmax(probs, axis=-1)
  a = jax.nn.one_hot(yhat, probs.shape[-1], dtype=dtype) - probs
  return a, _sq_norms(a), _sq_norms(embeddings.astype(dtype))


@_sharding.pool_core(pool=("embeddings", "probs", "mask"),
                     static=("batch_size",))
def _badge(embeddings, probs, mask, key, batch_size, axis_name=None):
  """`badge` without checks; per-point state ``[N]``, shardable."""
  a, a_sq, h_sq = _badge_gradient_factors(embeddings, probs)
  h = embeddings.astype(a.dtype)
  g_sq = a_sq * h_sq

  def sq_dist_to(index):
    a_c, h_c = _pool.take(a, index, axis_name), _pool.take(h, index, axis_name)
    g_c_sq = jnp.sum(a_c * a_c) * jnp.sum(h_c * h_c)
    return jnp.maximum(g_sq + g_c_sq - 2 * (a @ a_c) * (h @ h_c), 0)

  first, first_sq = _pool.argmax(jnp.where(mask, g_sq, -jnp.inf), axis_name)
  available = _pool.set_at(mask, first, False, axis_name)
  min_d2 = sq_dist_to(first)

  def step(carry, t):
    min_d2, available = carry
    index, valid = _d2_sample(jax.random.fold_in(key, t), min_d2, available,
                              axis_name)
    score = _pool.take(min_d2, index, axis_name)
    min_d2 = jnp.minimum(min_d2, sq_dist_to(index))
    available = _pool.set_at(available, index, False, axis_name)
    return (min_d2, available), (index, score, valid)

  _, (indices, scores, valid) = lax.scan(
      step, (min_d2, available), jnp.arange(1, batch_size, dtype=jnp.int32))
  selection = _selection.Selection(
      indices=jnp.concatenate([first[None], indices]).astype(jnp.int32),
      scores=jnp.concatenate([first_sq[None], scores]),
      valid=jnp.concatenate([(first_sq > -jnp.inf)[None], valid]))
  # |g_i - g_j|^2 terms reach 8 max |h|^2 (|a|^2 <= 2).
  return _guard_overflow(selection, jnp.max(h_sq), _SQUARE_HEADROOM,
                         axis_name)


# ----------------------------------------------------------------------------
# CoreSet.


def _check_labeled_and_mask(labeled, mask, n, batch_size):
  """``(labeled, mask, batch_size)``: ``labeled=None`` is all False; the
  batch must fit in ``mask & ~labeled`` (the error names ``labeled`` when it
  empties the selectable set)."""
  labeled = _validation.check_mask(labeled, n, name="labeled", default=False)
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask, labeled=labeled)
  return labeled, mask, batch_size


def coreset(embeddings, batch_size, *, labeled=None, mask=None,
            chunk_size=None, block_size=DEFAULT_BLOCK_SIZE):
  """CoreSet: greedy k-center selection (Sener and Savarese 2018).

  Each step picks the selectable point farthest from its nearest centre,
  the centres being the labelled points and the points picked so far:
  ``argmax_n min_j |x_n - x_j|`` (ties to the lower index). This is the
  2-approximation of the k-center problem used by the paper (its robust
  MIP refinement is not included).

  With no labelled point every distance is ``+inf`` and the first pick is
  the lowest-index selectable point (score ``+inf``), as in the reference
  implementation (``furthest_first`` in JordanAsh/badge); pass a random
  labelled seed point for a random start.

  Args:
    embeddings: ``float[N, D]``.
    batch_size: static ``int``, ``B``.
    labeled: optional ``bool[N]``, True for labelled points (the initial
      centres); ``None`` (default) for none. Labelled points are never
      picked.
    mask: optional ``bool[N]``, True where a point may be picked; defaults
      to all. Picks come from ``mask & ~labeled``.
    chunk_size: static cap on the pool rows of one tile of the initial
      pool-by-labelled distance pass; ``None`` is
      `alfx._pool.DEFAULT_CHUNK_SIZE` (1024).
    block_size: static labelled rows per tile.

  Returns:
    A :class:`Selection` in pick order; ``scores`` are the Euclidean
    distances of the picks to their nearest centre when picked (the
    covering radius before the pick, non-increasing).

  Raises:
    ValueError: on bad shapes or values; when ``labeled`` leaves fewer than
      ``batch_size`` points of ``mask`` to pick; when the embeddings' squared
      norms overflow their dtype (rescale them or pass float64).

  Cost: the initial min-distances ``O(N L D)`` FLOPs in
  ``[chunk_size, block_size]`` tiles (``L`` = number of labelled points,
  compute-bound), then ``B`` passes over the embeddings (``O(B N D)``,
  memory-bound). Memory: ``O(N)`` plus one tile; never ``N x N``.
  """
  embeddings = _check_embeddings(embeddings)
  n = embeddings.shape[0]
  labeled, mask, batch_size = _check_labeled_and_mask(labeled, mask, n,
                                                      batch_size)
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  block_size = _validation.check_positive_int(block_size, "block_size")
  return _coreset(embeddings, labeled, mask, batch_size=batch_size,
                  chunk_size=chunk_size, block_size=block_size)


@_sharding.pool_core(pool=("x", "labeled", "mask"),
                     static=("batch_size", "chunk_size", "block_size"))
def _coreset(x, labeled, mask, batch_size, chunk_size, block_size,
             axis_name=None):
  """`coreset` without checks; per-point state ``[N]``, shardable."""
  selectable = mask & ~labeled
  shift = _pool_mean(x, axis_name)
  x_sq = _centred_sq_norms(x, shift, chunk_size)
  min_d2 = _min_sq_dist_to_set(x, labeled, shift=shift,
                               chunk_size=chunk_size, block_size=block_size,
                               axis_name=axis_name)

  def step(carry, _):
    min_d2, available = carry
    index, value = _pool.argmax(jnp.where(available, min_d2, -jnp.inf),
                                axis_name)
    centre = _pool.take(x, index, axis_name)
    min_d2 = jnp.minimum(min_d2, _sq_dist_to_row(x, x_sq, shift, centre))
    available = _pool.set_at(available, index, False, axis_name)
    valid = value > -jnp.inf
    score = jnp.where(valid, jnp.sqrt(jnp.maximum(value, 0)), 0)
    return (min_d2, available), (index, score, valid)

  _, (indices, scores, valid) = lax.scan(step, (min_d2, selectable), None,
                                         length=batch_size)
  selection = _selection.Selection(indices=indices.astype(jnp.int32),
                                   scores=scores, valid=valid)
  # Centred: |x - s|^2 + |c - s|^2 + 2 |(x - s).(c - s)| <= 4 max |x - s|^2.
  return _guard_overflow(selection, jnp.max(x_sq), 4.0, axis_name)


# ----------------------------------------------------------------------------
# k-means.


def _nearest_centroid(x, centroids, n_active, *, shift, chunk_size,
                      block_size):
  """``(int32[N] index, [N] squared distance)`` of the nearest active centroid.

  ``centroids`` is ``[M, D]`` with ``M >= n_active + block_size``; only the
  first ``n_active`` (traced) count and only their blocks are computed
  (`_fold_blocks`). Ties go to the lower centroid index.
  """
  centroids = centroids - shift
  c_sq = _sq_norms(centroids)

  def per_chunk(xc):
    xc = xc - shift
    xc_sq = _sq_norms(xc)

    def fold(carry, start, size):
      best_d2, best_i = carry
      c = lax.dynamic_slice_in_dim(centroids, start, size)
      cs = lax.dynamic_slice_in_dim(c_sq, start, size)
      ids = start + jnp.arange(size, dtype=jnp.int32)
      d2 = jnp.where(ids[None, :] < n_active, _tile_sq_dists(xc, xc_sq, c, cs),
                     jnp.inf)
      d2_min = jnp.min(d2, axis=1)
      better = d2_min < best_d2  # strict: earlier blocks win ties
      arg = start + jnp.argmin(d2, axis=1).astype(jnp.int32)
      return jnp.where(better, d2_min, best_d2), jnp.where(better, arg, best_i)

    init = (jnp.full(xc.shape[:1], jnp.inf, x.dtype),
            jnp.zeros(xc.shape[:1], jnp.int32))
    best_d2, best_i = _fold_blocks(n_active, block_size, fold, init)
    return best_i, best_d2

  return _pool.chunked_map(per_chunk, x, chunk_size=chunk_size)


def _kmeans_plus_plus(x, points, n_active, key, n_centroids, *, shift=None,
                      chunk_size=_pool.DEFAULT_CHUNK_SIZE, axis_name=None):
  """k-means++ seeding (Arthur and Vassilvitskii 2007) of ``n_active`` centres.

  The first centre is uniform over ``points``, each next one a D^2 draw
  (one candidate per step, not scikit-learn's greedy ``2 + log k`` trials).
  Returns ``([n_centroids, D] centres, zero beyond n_active; int32
  [n_centroids] their pool indices)``.
  """
  n, d = x.shape
  shift = _pool_mean(x, axis_name) if shift is None else shift
  x_sq = _centred_sq_norms(x, shift, chunk_size)

  def body(carry):
    t, centres, picked, min_d2, chosen = carry
    d2 = jnp.where(t == 0, jnp.ones_like(min_d2), min_d2)
    index, _ = _d2_sample(jax.random.fold_in(key, t), d2, points & ~chosen,
                          axis_name)
    centre = _pool.take(x, index, axis_name)
    # The centre's own distance is exactly 0 (rounding could leave it > 0).
    new_d2 = _pool.set_at(_sq_dist_to_row(x, x_sq, shift, centre), index, 0,
                          axis_name)
    return (t + 1, centres.at[t].set(centre), picked.at[t].set(index),
            jnp.minimum(min_d2, new_d2),
            _pool.set_at(chosen, index, True, axis_name))

  init = (jnp.zeros((), jnp.int32), jnp.zeros((n_centroids, d), x.dtype),
          jnp.zeros((n_centroids,), jnp.int32),
          jnp.full((n,), jnp.inf, x.dtype), jnp.zeros((n,), bool))
  _, centres, picked, _, _ = lax.while_loop(lambda c: c[0] < n_active, body,
                                            init)
  return centres, picked


def _kmeans(x, points, n_active, key, *, max_clusters, max_iterations, tol,
            chunk_size, block_size, axis_name=None):
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
    chunk_size, block_size: tile sizes of the assignment step.

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
      jnp.sum(w[:, None] * (jnp.square(x - mean) / n_points), axis=0),
      axis_name)
  tol_abs = tol * jnp.mean(variance)

  centroids, _ = _kmeans_plus_plus(x, points, n_active, key, m_pad,
                                   shift=mean, chunk_size=chunk_size,
                                   axis_name=axis_name)

  def assign(centroids):
    labels, _ = _nearest_centroid(x, centroids, n_active, shift=mean,
                                  chunk_size=chunk_size, block_size=block_size)
    return jnp.where(points, labels, m_pad)

  def update(labels, centroids):
    # Label m_pad (points not clustered) is dropped by segment_sum.
    sums = _pool.psum(jax.ops.segment_sum(x, labels, m_pad), axis_name)
    counts = _pool.psum(jax.ops.segment_sum(w, labels, m_pad), axis_name)
    return jnp.where(counts[:, None] > 0,
                     sums / jnp.maximum(counts, 1)[:, None], centroids)

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
      cond, body, (jnp.zeros((), jnp.int32), centroids, labels0,
                   jnp.zeros((), bool)))
  labels = assign(centroids)
  return centroids[:max_clusters], jnp.minimum(labels, max_clusters), iterations


# ----------------------------------------------------------------------------
# TypiClust.


def _most_typical(x, members, *, k_nn, block_size, candidates=None,
                  axis_name=None):
  """The candidate of highest typicality among ``members`` (traced sets).

  Typicality (Hacohen et al. 2022) is ``1 / (mean_{j in kNN(n)} |x_n - x_j| +
  1e-5)`` over the ``k = min(k_nn, m // 2)`` nearest other members, ``m`` the
  number of members. It is evaluated for the ``candidates`` (a subset of the
  members; default all of them) in ``[block, block]`` tiles (`_fold_blocks`
  over candidate rows and member columns, about ``(c / block) (m / block)``
  tiles) with a running top-``k_nn`` per row; distances are taken relative to
  the members' mean. Returns ``(global pool index, typicality)``; ties to the
  lower index. Sharded, each device scores its own candidate rows against
  every member: a column step all-gathers one block of member rows per
  shard (``P * block`` rows), never the pool.
  """
  block = min(block_size, x.shape[0])
  indices, m_local = _set_indices(members, block)
  m = _pool.psum(m_local, axis_name)
  if candidates is None:
    row_indices, n_rows = indices, m_local
  else:
    row_indices, n_rows = _set_indices(candidates & members, block)
  k_eff = jnp.minimum(k_nn, m // 2)
  dtype = x.dtype
  w = members.astype(dtype)
  shift = (_pool.psum(jnp.sum(w[:, None] * x, axis=0), axis_name)
           / jnp.maximum(_pool.psum(jnp.sum(w), axis_name), 1))
  base = _pool.offset(x.shape[0], axis_name)

  def gather(index_list, start, size, count):
    ids = lax.dynamic_slice_in_dim(index_list, start, size)
    ok = start + jnp.arange(size, dtype=jnp.int32) < count
    return x[ids] - shift, base + ids, ok

  def row_fold(best, row_start, row_size):
    rows, row_ids, row_ok = gather(row_indices, row_start, row_size, n_rows)
    rows_sq = _sq_norms(rows)

    def col_fold(knn, col_start, col_size):
      cols, col_ids, col_ok = (_pool.all_gather(v, axis_name) for v in
                               gather(indices, col_start, col_size, m_local))
      d2 = _tile_sq_dists(rows, rows_sq, cols, _sq_norms(cols))
      invalid = ~col_ok[None, :] | (col_ids[None, :] == row_ids[:, None])
      d2 = jnp.where(invalid, jnp.inf, d2)
      neg_smallest, _ = lax.top_k(-jnp.concatenate([knn, d2], axis=1), k_nn)
      return -neg_smallest

    knn = _fold_blocks(m_local, block, col_fold,
                       jnp.full((row_size, k_nn), jnp.inf, dtype), axis_name)
    use = jnp.arange(k_nn) < k_eff
    dist = jnp.sqrt(jnp.where(use[None, :], knn, 0))
    mean_dist = jnp.sum(dist, axis=1) / jnp.maximum(k_eff, 1).astype(dtype)
    typicality = jnp.where(row_ok, 1 / (mean_dist + 1e-5), -jnp.inf)
    local = jnp.argmax(typicality)
    best_typ, best_id = best
    better = typicality[local] > best_typ  # strict: earlier rows win ties
    return (jnp.where(better, typicality[local], best_typ),
            jnp.where(better, row_ids[local], best_id))

  best_typ, best_id = _fold_blocks(
      n_rows, block, row_fold,
      (jnp.asarray(-jnp.inf, dtype), base + row_indices[0]), axis_name)
  if axis_name is None:
    return best_id, best_typ
  # Across shards: the highest typicality, ties to the lowest global index.
  top = lax.pmax(best_typ, axis_name)
  return lax.pmin(jnp.where(best_typ == top, best_id,
                            jnp.iinfo(jnp.int32).max), axis_name), top


def typiclust(embeddings, batch_size, *, key, labeled=None, mask=None,
              max_clusters=500, k_nn=20, min_cluster_size=5,
              max_iterations=100, tol=1e-4, max_candidates=None,
              chunk_size=None, block_size=DEFAULT_BLOCK_SIZE):
  """TypiClust: the most typical point of the largest uncovered clusters.

  Hacohen et al. 2022 (TPC_RP), following the reference implementation
  (``deep-al/pycls/al/typiclust.py`` in avihu111/TypiClust):

  1. k-means (k-means++ seeding, Lloyd iterations) of the labelled and
     selectable points into ``min(L + B, max_clusters)`` clusters, ``L`` the
     number of labelled points (the reference caps at 500 clusters).
  2. ``B`` times: among the clusters that still have a selectable point not
     yet picked, take the one covered least (fewest labelled plus picked
     points), preferring clusters of more than ``min_cluster_size`` points,
     then the largest (then the lowest cluster id); pick its most typical
     candidate. Typicality is ``1 / (mean Euclidean distance to the k
     nearest other candidates of the cluster + 1e-5)``,
     ``k = min(k_nn, m // 2)`` for ``m`` candidates (the reference's
     small-cluster rule); candidates are the cluster's selectable points not
     labelled and not yet picked.

  Deviations from the reference, all documented choices: full Lloyd k-means
  for any number of clusters (the reference switches to MiniBatchKMeans
  above 50); the reference drops clusters of ``<= 5`` points and walks a
  fixed order cyclically, here covered counts are updated after each pick
  and small clusters are used only when no larger one has candidates (both
  give the same picks whenever at least ``B`` large clusters hold no
  labelled point, the usual case with ``L + B`` clusters); the reference's
  faiss ``IndexFlatL2`` returns *squared* distances, so its typicality is
  ``1 / mean squared distance``, while this follows the paper's
  definition with Euclidean distances (the neighbours are the same, only
  the average differs).

  Args:
    embeddings: ``float[N, D]`` (self-supervised features in the paper).
    batch_size: static ``int``, ``B``.
    key: a PRNG key (for the k-means++ seeding).
    labeled: optional ``bool[N]``, True for labelled points; ``None``
      (default) for none. Labelled points are never picked.
    mask: optional ``bool[N]``, True where a point may be picked; defaults to
      all. Picks come from ``mask & ~labeled``; points neither labelled nor
      selectable are left out of the clustering.
    max_clusters: static cap on the number of clusters (the centroid array's
      size: the assignment cost follows the active count).
    k_nn: static number of neighbours of the typicality (20 in the paper).
    min_cluster_size: clusters of at most this many points come last.
    max_iterations: static cap on Lloyd iterations.
    tol: Lloyd's relative tolerance (scikit-learn's convention), a number
      ``>= 0``; traced values are allowed (no recompilation).
    max_candidates: ``None`` (default) evaluates the typicality of every
      candidate of the chosen cluster, exactly. An ``int`` caps the cost for
      very large clusters: when a cluster has ``m > max_candidates``
      candidates, typicality is evaluated for a Bernoulli sample of about
      ``max_candidates`` of them (each kept with probability
      ``max_candidates / m``), still against all ``m`` as neighbours, so
      each evaluated value is exact and only the argmax is searched over a
      random subset. Cost per pick drops from ``m^2 D`` to
      ``max_candidates * m * D``.
    chunk_size: static cap on the pool rows of one k-means assignment tile;
      ``None`` is `alfx._pool.DEFAULT_CHUNK_SIZE` (1024).
    block_size: static centroid / cluster-member rows per tile.

  Returns:
    A :class:`Selection` in pick order; ``scores`` are the typicalities of
    the picks.

  Raises:
    ValueError: on bad shapes, values or options; when ``labeled`` leaves
      fewer than ``batch_size`` points of ``mask`` to pick; when the
      embeddings' squared norms overflow their dtype (rescale them or pass
      float64).

  Cost: k-means ``O(n_iter N k D)`` in tiles with ``k = min(L + B,
  max_clusters)``, plus k-means++ seeding ``k`` passes over the embeddings;
  typicality ``O(sum_t m_t^2 D)`` for the ``B`` clusters chosen, ``m_t``
  their candidate counts (about ``B (N / k)^2 D``: only the chosen clusters
  are searched, never the whole pool; at CIFAR-10 scale, ``N = 50,000`` and
  ``k = 20``, that is 50 GFLOP, but at ``N = 10^6`` it is 20 TFLOP: use
  ``max_candidates`` there). Memory ``O(N)`` plus tiles.
  """
  embeddings = _check_embeddings(embeddings)
  n = embeddings.shape[0]
  labeled, mask, batch_size = _check_labeled_and_mask(labeled, mask, n,
                                                      batch_size)
  key = _validation.check_key(key)
  for value, name in [(max_clusters, "max_clusters"), (k_nn, "k_nn"),
                      (max_iterations, "max_iterations"),
                      (block_size, "block_size")]:
    _validation.check_positive_int(value, name)
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  if max_candidates is not None:
    max_candidates = _validation.check_positive_int(max_candidates,
                                                    "max_candidates")
  if isinstance(min_cluster_size, bool) or not isinstance(
      min_cluster_size, (int, np.integer)) or min_cluster_size < 0:
    raise ValueError("min_cluster_size must be a static int >= 0 (clusters"
                     f" of at most this many points come last), got"
                     f" {min_cluster_size!r}.")
  tol = _validation.check_scalar(tol, "tol", minimum=0)
  return _typiclust(
      embeddings, labeled, mask, key, tol, batch_size=batch_size,
      max_clusters=max_clusters, k_nn=k_nn,
      min_cluster_size=int(min_cluster_size), max_iterations=max_iterations,
      max_candidates=max_candidates, chunk_size=chunk_size,
      block_size=block_size)


@_sharding.pool_core(pool=("x", "labeled", "mask"), static=(
    "batch_size", "max_clusters", "k_nn", "min_cluster_size",
    "max_iterations", "max_candidates", "chunk_size", "block_size"))
def _typiclust(x, labeled, mask, key, tol, batch_size, max_clusters, k_nn,
               min_cluster_size, max_iterations, max_candidates, chunk_size,
               block_size, axis_name=None):
  """`typiclust` without checks; shardable over the pool."""
  selectable = mask & ~labeled
  points = labeled | selectable
  n_labeled = _pool.psum(jnp.sum(labeled, dtype=jnp.int32), axis_name)
  n_active = jnp.minimum(n_labeled + batch_size, max_clusters)
  block = min(block_size, max_clusters)
  _, labels, _ = _kmeans(x, points, n_active, jax.random.fold_in(key, 0),
                         max_clusters=max_clusters,
                         max_iterations=max_iterations,
                         tol=jnp.asarray(tol, x.dtype),
                         chunk_size=chunk_size, block_size=block,
                         axis_name=axis_name)
  selection = _typiclust_select(x, labels, labeled, selectable, batch_size,
                                max_clusters, k_nn, min_cluster_size,
                                block_size, max_candidates=max_candidates,
                                key=jax.random.fold_in(key, 1),
                                axis_name=axis_name)
  # One fused reduction over the rows (no [N] temporary kept).
  return _guard_overflow(selection, jnp.max(_sq_norms(x)), _SQUARE_HEADROOM,
                         axis_name)


def _typiclust_select(x, labels, labeled, selectable, batch_size, max_clusters,
                      k_nn, min_cluster_size, block_size, *,
                      max_candidates=None, key=None, axis_name=None):
  """TypiClust's selection stage given cluster ``labels`` (``int32[N]``,
  ``max_clusters`` for points outside the clustering). ``key`` draws the
  candidate subsamples when ``max_candidates`` is set. Sharded, the
  per-cluster counts are all-reduced (``[max_clusters]`` each step)."""

  def cluster_counts(flags):
    return _pool.psum(jax.ops.segment_sum(flags.astype(jnp.int32), labels,
                                          max_clusters), axis_name)

  def count(flags):
    return _pool.psum(jnp.sum(flags, dtype=jnp.int32), axis_name)

  sizes = cluster_counts(labels < max_clusters)
  covered0 = cluster_counts(labeled)
  large = sizes > min_cluster_size

  def step(carry, t):
    covered, candidates = carry
    # Lexicographic choice: has candidates; large before small; least
    # covered; largest; lowest id.
    eligible = cluster_counts(candidates) > 0
    eligible &= jnp.where(jnp.any(eligible & large), large, True)
    least = jnp.min(jnp.where(eligible, covered, jnp.iinfo(jnp.int32).max))
    eligible &= covered == least
    largest = jnp.max(jnp.where(eligible, sizes, -1))
    eligible &= sizes == largest
    cluster = jnp.argmax(eligible).astype(jnp.int32)
    valid = jnp.any(eligible)
    members = candidates & (labels == cluster)
    rows = None
    if max_candidates is not None:
      m = count(members).astype(x.dtype)
      u = _pool.uniform(jax.random.fold_in(key, t), members.shape, x.dtype,
                        axis_name=axis_name)
      rows = members & (u * m < max_candidates)
      rows = jnp.where(count(rows) > 0, rows, members)
    index, typicality = _most_typical(x, members, k_nn=k_nn,
                                      block_size=block_size, candidates=rows,
                                      axis_name=axis_name)
    covered = covered.at[cluster].add(valid.astype(jnp.int32))
    candidates = _pool.set_at(
        candidates, index,
        _pool.take(candidates, index, axis_name) & ~valid, axis_name)
    return (covered, candidates), (index, typicality, valid)

  _, (indices, scores, valid) = lax.scan(
      step, (covered0, selectable), jnp.arange(batch_size, dtype=jnp.int32))
  return _selection.Selection(indices=indices.astype(jnp.int32),
                              scores=scores, valid=valid)

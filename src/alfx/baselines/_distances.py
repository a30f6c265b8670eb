"""Tiled Euclidean distances and input checks shared by the diversity baselines.

All distances are Euclidean on the rows of ``embeddings[N, D]`` (for BADGE,
on the implicit gradient embeddings). Nothing forms an ``N x N`` matrix:

* greedy steps carry one min-distance per point (``[N]``) and add one
  centre per step (``O(N D)`` per step, memory-bound; `sq_dist_to_row`);
* distances between the pool and a *set* (the labelled points, the k-means
  centroids, a cluster's members) are computed in ``[chunk_size, block]``
  tiles (`tile_sq_dists`), looping over blocks of the set with a trip count
  that depends on the set's (traced) size (`fold_blocks`), so the cost
  follows the actual set size while every shape stays static.

Squared distances are ``|x - s|^2 + |c - s|^2 - 2 (x - s).(c - s)``, clipped
at 0, with ``s`` a point near the data (the pool mean, a cluster's mean) so
that the cancellation error scales with the data's spread, not with its
distance from the origin: a matmul per tile (compute-bound), a
matrix-vector product per greedy step (memory-bound, with ``|x - s|^2``
computed once). Embeddings whose squares overflow their dtype are refused
(`check_embeddings`) or, under ``jit``, give invalid picks
(`guard_overflow`).

Sharding: every pool-wide argmax, row read, sum and random draw goes
through `alfx._core.pool` and takes an ``axis_name``; under
``jax.shard_map`` BADGE, CoreSet, k-means and TypiClust pick exactly what
the single-device run picks (the conformance suite's device layouts).

May import: `alfx._core`.
"""

import jax
from jax import lax
import jax.numpy as jnp

from alfx._core import pool as _pool
from alfx._core import validation as _validation

#: Default set rows (labelled points, centroids, cluster members) per tile
#: (pool rows per tile: ``chunk_size``, `alfx._core.pool.DEFAULT_CHUNK_SIZE`).
DEFAULT_BLOCK_SIZE = 256

#: Squared distances are formed from norms: with every row within ``R`` of
#: the origin, ``|x - s|^2 + |c - s|^2`` (``s`` the pool or cluster mean)
#: reaches ``8 R^2`` before the ``- 2 (x - s).(c - s)`` brings it back to a
#: distance (at most ``4 R^2``); BADGE's ``|a|^2 |h|^2`` terms (``|a|^2 <=
#: 2``) stay below the same bound. Embeddings whose ``8 max_n |x_n|^2``
#: overflows their dtype are refused.
SQUARE_HEADROOM = 8.0


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


def check_embeddings(embeddings, name: str = "embeddings") -> jax.Array:
  """`check_matrix`, then refuses rows whose squared norms overflow the dtype.

  The squared distances go through ``|x|^2``-sized intermediates (up to
  ``SQUARE_HEADROOM max_n |x_n|^2``); past the dtype's largest value they
  become ``inf``, then NaN, and the picks garbage. One reduction over the
  embeddings, on concrete input only (like every value check; under ``jit``
  the cores return ``valid=False`` instead, `guard_overflow`).
  """
  x = _validation.check_matrix(embeddings, name)
  finfo = jnp.finfo(x.dtype)
  limit = float(finfo.max) / SQUARE_HEADROOM

  def explain(v):
    largest = v["largest"]
    if not largest < float("inf"):  # the exact value, as a Python float
      scale, ratio = (float(u) for u in _max_sq_norm_factors(x))
      largest = scale**2 * ratio
    return (
      f"{name} (shape [N, D]) are too large for {x.dtype}: the largest"
      f" squared row norm max_n |x_n|^2 is {largest:.3g}, and the"
      f" squared distances need up to {SQUARE_HEADROOM:g} times that,"
      f" above the largest {x.dtype} ({float(finfo.max):.3g}): they"
      f" would overflow to inf/NaN. Rescale {name} (e.g. divide by"
      " their largest row norm: every distance scales by the same"
      f" factor) or pass them as float64 (jax.enable_x64)."
    )

  _validation.value_check(
    _sq_norm_check,
    (x,),
    explain,
    f"{name} (shape [N, D]) are too large for {x.dtype}: the largest"
    " squared row norm {largest} overflows the squared distances; rescale"
    f" {name} or pass them as float64.",
    params=dict(limit=limit),
  )
  return x


def _sq_norm_check(x, limit):
  largest = _max_sq_norm(x)  # inf fails the test too
  return largest <= limit, dict(largest=largest)


def check_labeled_and_mask(labeled, mask, n, batch_size):
  """``(labeled, mask, batch_size)``: ``labeled=None`` is all False; the
  batch must fit in ``mask & ~labeled`` (the error names ``labeled`` when it
  empties the selectable set)."""
  labeled = _validation.check_mask(labeled, n, name="labeled", default=False)
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask, labeled=labeled)
  return labeled, mask, batch_size


def guard_overflow(selection, largest_sq, headroom, axis_name=None):
  """``selection`` with NaN scores and ``valid=False`` if squares overflow.

  ``largest_sq`` is the local maximum of squared norms that the core's
  distance formulas multiply by at most ``headroom``. On concrete input
  `check_embeddings` has already refused such embeddings; under the
  caller's ``jit`` they must not come back as plausible picks. NaN in
  ``largest_sq`` counts as overflow too.
  """
  limit = float(jnp.finfo(largest_sq.dtype).max) / headroom
  bad = _pool.psum((~(largest_sq <= limit)).astype(jnp.int32), axis_name) > 0
  return selection._replace(
    scores=jnp.where(bad, jnp.nan, selection.scores).astype(
      selection.scores.dtype
    ),
    valid=selection.valid & ~bad,
  )


def sq_norms(x):
  """``|x|^2`` over the last axis."""
  return jnp.sum(x * x, axis=-1)


def centred_sq_norms(x, shift, chunk_size):
  """``[N]`` values ``|x_n - shift|^2``, one pass in row chunks."""
  return _pool.chunked_map(
    lambda xc: sq_norms(xc - shift), x, chunk_size=chunk_size
  )


def sq_dist_to_row(x, x_sq, shift, row):
  """``[N]`` squared distances of every row of ``x`` to one ``row``.

  ``|x - r|^2 = |x - s|^2 + |r - s|^2 - 2 (x - s).(r - s)`` with ``x_sq =
  |x - s|^2`` precomputed: one matrix-vector product per call, which XLA
  runs at memory bandwidth inside a scan (the direct ``sum((x - r)**2)`` was
  5x slower there on CPU). The shift ``s`` (the pool mean) keeps the
  cancellation error relative to the data's spread, not its offset.
  """
  r = row - shift
  return jnp.maximum(x_sq + jnp.sum(r * r) - 2 * (x @ r - jnp.dot(shift, r)), 0)


def tile_sq_dists(x, x_sq, c, c_sq):
  """``[n, m]`` squared distances from a matmul, clipped at 0.

  Callers pass rows shifted by a common point near the data (the pool mean,
  a cluster's mean): distances do not change, and the norms, hence the
  cancellation error of ``|x|^2 + |c|^2 - 2 x.c``, stay small when the
  embeddings sit far from the origin.
  """
  return jnp.maximum(x_sq[:, None] + c_sq[None, :] - 2 * (x @ c.T), 0)


def pool_mean(x, axis_name=None):
  """``[D]`` mean of all pool rows (the shift of the tiled distances)."""
  total = _pool.psum(jnp.sum(x, axis=0), axis_name)
  return total / _pool.size(x.shape[0], axis_name)


def d2_sample(key, d2, available, axis_name=None):
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
  logits = jnp.where(
    any_positive,
    jnp.where(positive, log_d2, -jnp.inf),
    jnp.where(available, 0, -jnp.inf),
  )
  noise = _pool.gumbel(key, d2.shape, d2.dtype, axis_name=axis_name)
  index, value = _pool.argmax(logits + noise, axis_name)
  return index, value > -jnp.inf


#: Width of the narrow blocks that finish a set after its full blocks.
SMALL_BLOCK_SIZE = 32


def fold_blocks(count, block, fn, carry, axis_name=None):
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
  return lax.fori_loop(
    0, n_small, lambda j, c: fn(c, done + j * small, small), carry
  )


def set_indices(members, block):
  """``(int32[N + block] indices of the True entries, count)``.

  Entries past ``count`` are 0 (callers mask them); the ``block`` extra
  entries keep every slice of `fold_blocks` in bounds (a dynamic slice
  past the end would be clamped, silently shifted).
  """
  (indices,) = jnp.nonzero(members, size=members.shape[0] + block, fill_value=0)
  return indices.astype(jnp.int32), jnp.sum(members, dtype=jnp.int32)

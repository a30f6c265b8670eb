"""CoreSet: greedy k-center selection (Sener and Savarese 2018).

May import: `alfx._core`, `alfx.baselines._distances`.
"""

from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.baselines._distances import centred_sq_norms
from alfx.baselines._distances import check_embeddings
from alfx.baselines._distances import check_labeled_and_mask
from alfx.baselines._distances import DEFAULT_BLOCK_SIZE
from alfx.baselines._distances import fold_blocks
from alfx.baselines._distances import guard_overflow
from alfx.baselines._distances import pool_mean
from alfx.baselines._distances import set_indices
from alfx.baselines._distances import sq_dist_to_row
from alfx.baselines._distances import sq_norms
from alfx.baselines._distances import tile_sq_dists


def _min_sq_dist_to_set(
  x, members, *, shift, chunk_size, block_size, axis_name=None
):
  """``[N]`` squared distance of every pool row to its nearest member row.

  ``+inf`` where the set is empty. Cost ``O(N * |set| * D)`` in
  ``[chunk_size, block_size]`` tiles, the set's blocks looped over with a
  trip count from its (traced) size (`fold_blocks`). Sharded, each block
  step all-gathers one block of member rows per shard (replicated).
  """
  block = min(block_size, x.shape[0])
  indices, count = set_indices(members, block)

  def per_chunk(xc):
    xc = xc - shift
    xc_sq = sq_norms(xc)

    def fold(best, start, size):
      ids = lax.dynamic_slice_in_dim(indices, start, size)
      rows = _pool.all_gather(x[ids] - shift, axis_name)
      valid = _pool.all_gather(start + jnp.arange(size) < count, axis_name)
      d2 = tile_sq_dists(xc, xc_sq, rows, sq_norms(rows))
      d2 = jnp.where(valid[None, :], d2, jnp.inf)
      return jnp.minimum(best, jnp.min(d2, axis=1))

    best = jnp.full(xc.shape[:1], jnp.inf, x.dtype)
    return fold_blocks(count, block, fold, best, axis_name)

  return _pool.chunked_map(per_chunk, x, chunk_size=chunk_size)


@_validation.fused_checks
def coreset(
  embeddings: ArrayLike,
  batch_size: int,
  *,
  labeled: ArrayLike | None = None,
  mask: ArrayLike | None = None,
  chunk_size: int | None = None,
  block_size: int = DEFAULT_BLOCK_SIZE,
) -> _selection.Selection:
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
      `alfx._core.pool.DEFAULT_CHUNK_SIZE` (1024).
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

  Example:
    >>> emb = jnp.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1], [9.0, 0]])
    >>> labeled = jnp.array([True, False, False, False, False])
    >>> alfx.coreset(emb, 2, labeled=labeled).indices.tolist()  # far points
    [4, 3]
  """
  embeddings = check_embeddings(embeddings)
  n = embeddings.shape[0]
  labeled, mask, batch_size = check_labeled_and_mask(
    labeled, mask, n, batch_size
  )
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  block_size = _validation.check_positive_int(block_size, "block_size")
  return _coreset(
    embeddings,
    labeled,
    mask,
    batch_size=batch_size,
    chunk_size=chunk_size,
    block_size=block_size,
  )


@_sharding.pool_core(
  pool=("x", "labeled", "mask"),
  static=("batch_size", "chunk_size", "block_size"),
)
def _coreset(
  x, labeled, mask, batch_size, chunk_size, block_size, axis_name=None
):
  """`coreset` without checks; per-point state ``[N]``, shardable."""
  selectable = mask & ~labeled
  shift = pool_mean(x, axis_name)
  x_sq = centred_sq_norms(x, shift, chunk_size)
  min_d2 = _min_sq_dist_to_set(
    x,
    labeled,
    shift=shift,
    chunk_size=chunk_size,
    block_size=block_size,
    axis_name=axis_name,
  )

  def step(carry, _):
    min_d2, available = carry
    # The farthest available point (value 0 when none is left).
    index, value, valid, available = _selection.pick(
      min_d2, available, axis_name
    )
    centre = _pool.take(x, index, axis_name)
    min_d2 = jnp.minimum(min_d2, sq_dist_to_row(x, x_sq, shift, centre))
    score = jnp.sqrt(jnp.maximum(value, 0))
    return (min_d2, available), (index, score, valid)

  _, (indices, scores, valid) = lax.scan(
    step, (min_d2, selectable), None, length=batch_size
  )
  selection = _selection.Selection(
    indices=indices.astype(jnp.int32), scores=scores, valid=valid
  )
  # Centred: |x - s|^2 + |c - s|^2 + 2 |(x - s).(c - s)| <= 4 max |x - s|^2.
  return guard_overflow(selection, jnp.max(x_sq), 4.0, axis_name)

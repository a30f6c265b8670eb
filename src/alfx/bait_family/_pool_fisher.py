"""The pool's Fisher information ``F``: `PoolFisher` and `pool_fisher`.

Everything in BAIT that depends on neither the labelled set nor the picks,
computed once per model; `check_pool_fisher` checks one passed to `bait`.

May import: `alfx._core`, `alfx.bait_family._checks`, `_factors`, `_basis`,
`_blocks`, `_structured`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.bait_family import _basis
from alfx.bait_family import _blocks
from alfx.bait_family import _checks
from alfx.bait_family import _factors
from alfx.bait_family import _structured


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=("blocks", "quad", "center"),
  meta_fields=("fisher", "top_c", "method"),
)
@dataclasses.dataclass(frozen=True)
class PoolFisher:
  """The pool's Fisher information ``F``, in the form `bait` consumes.

  ``F = mean_n I(x_n)`` over the whole pool (labelled and not) does not depend
  on the labelled set or the picks: compute it once per model with
  `pool_fisher` and pass it to every `bait` call on that pool. A pytree
  (``fisher``, ``top_c`` and ``method`` are static), so it passes through
  ``jit``.

  Attributes:
    fisher: the Fisher kind it was computed for.
    top_c: the ``top_c`` of ``'topc'`` (1 otherwise).
    method: ``'dense'``, ``'structured'`` or ``'diagonal'``.
    blocks: ``dense``: ``float[C_f (C_f + 1) / 2, D, D]``, the blocks
      ``F_ab`` for ``a <= b`` in row-major upper-triangle order (each block is
      symmetric; ``F_ba = F_ab``). ``diagonal``: ``float[C, D]``, the
      diagonal of ``F``. ``structured`` ``full``: ``float[C, D, D]``, the
      block-diagonal part ``mean_n p_na h_n h_n^T``. ``structured`` ``topc``:
      None.
    quad: ``structured`` ``topc`` only: ``float[N, top_c, top_c]``,
      ``V_n^T F V_n`` for every point (the pool's one ``N^2`` term).
    center: ``float[D]``, the pool's mean embedding (None for
      ``diagonal``). ``blocks`` are expressed in the basis where the
      embeddings are reflected by the Householder reflection that maps
      ``center`` to a multiple of ``e_1``, and for ``dense`` ``full``/``topc``
      over the ``C_f = C - 1`` class directions orthogonal to ``1_C`` (the
      Fisher's null space): a well-conditioned basis in which ``tr(M^-1 F)``
      is unchanged.

  Example:
    >>> h = jnp.ones((4, 3))
    >>> f = alfx.pool_fisher(h, jnp.full((4, 2), 0.5), fisher="diagonal")
    >>> f.fisher, f.method, f.blocks.shape, f.center
    ('diagonal', 'diagonal', (2, 3), None)
  """

  fisher: str
  top_c: int
  method: str
  blocks: jax.Array | None
  quad: jax.Array | None
  center: jax.Array | None = None


def pool_fisher(
  embeddings: ArrayLike,
  probs: ArrayLike,
  *,
  fisher: str = "full",
  top_c: int = 2,
  method: str = "auto",
  chunk_size: int | None = None,
  in_pool: ArrayLike | None = None,
) -> PoolFisher:
  """The pool's Fisher information ``F = mean_n I(x_n)``, for `bait`.

  Everything in BAIT that does not depend on the labelled set or the picks.
  ``dense`` (``d = C_f D`` up to `DENSE_MAX_DIM`, and always for
  ``binary``): the ``C_f (C_f + 1) / 2`` distinct ``D x D`` blocks of ``F``,
  ``2 N D^2 C_f (C_f + 1) / 2`` FLOPs (4e11 for N=50,000, D=384, C=10),
  memory ``C_f (C_f + 1) D^2 / 2`` floats. ``diagonal``: ``[C, D]``, ``2 N C
  D`` FLOPs. ``structured`` ``full``: the block-diagonal part (``C D^2``
  floats); ``structured`` ``topc``: ``V_n^T F V_n`` for every point,
  ``O(N^2 (D + C top_c^2))`` FLOPs, ``N top_c^2`` floats.

  Args:
    embeddings: ``float[N, D]``.
    probs: ``float[N, C]``.
    fisher: ``'full'``, ``'topc'``, ``'binary'`` or ``'diagonal'``.
    top_c: static ``int``, classes kept by ``'topc'``.
    method: ``'auto'``, ``'dense'`` or ``'structured'`` (as in `bait`).
    chunk_size: static rows per chunk of the pool-wide products (default:
      a working set of about 64 MB).
    in_pool: optional ``bool[N]``, the rows that belong to the pool (``F``
      averages over them only); default all. Pass ``ShardedPool.in_pool``
      for a pool padded by `alfx.shard_pool`.

  Returns:
    A `PoolFisher`. Sharded inputs (see `alfx.shard_pool`): each device sums
    its rows, one all-reduce of the result, replicated; structured topc's
    per-point ``quad`` stays split like the pool (its ``N^2`` sum passes the
    shards' blocks round a ring of the devices).

  Example:
    >>> h = jax.random.normal(jax.random.key(0), (8, 3))
    >>> p = jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 4)))
    >>> f = alfx.pool_fisher(h, p)  # C_f = C - 1 = 3: 6 blocks of D x D
    >>> f.method, f.blocks.shape
    ('dense', (6, 3, 3))
    >>> alfx.bait(h, p, 2, pool_fisher=f).indices.tolist()
    [3, 0]
  """
  embeddings, probs = _checks.check_inputs(embeddings, probs)
  _checks.check_range(embeddings)
  top_c = _checks.check_fisher(fisher, top_c, probs.shape[1])
  method = _checks.resolve_method(
    method, fisher, probs.shape[1], embeddings.shape[1]
  )
  # None: the chunk default, resolved where the pool's row size is known.
  chunk_size = _validation.check_chunk_size(chunk_size, None)  # pyright: ignore[reportArgumentType]
  in_pool = _checks.check_in_pool(in_pool, probs.shape[0])
  return pool_fisher_core(
    embeddings,
    probs,
    in_pool,
    kind=fisher,
    top_c=top_c,
    method=method,
    chunk_size=chunk_size,
  )  # pyright: ignore[reportReturnType] (with_rotated=False: a PoolFisher)


def _pool_fisher_specs(axis, static):
  """``out_specs`` of a sharded `pool_fisher_core`: ``quad`` stays split."""
  # A PoolFisher of PartitionSpecs: the out_specs pytree mirrors the output.
  stats = PoolFisher(
    static["kind"],
    static["top_c"],
    static["method"],
    P(),  # pyright: ignore[reportArgumentType]
    P(axis),  # pyright: ignore[reportArgumentType]
    P(),  # pyright: ignore[reportArgumentType]
  )
  return (stats, P(axis)) if static.get("with_rotated") else stats


@_sharding.pool_core(
  pool=("embeddings", "probs", "in_pool"),
  static=("kind", "top_c", "method", "chunk_size", "with_rotated"),
  out_specs=_pool_fisher_specs,
  selection=False,
)
def pool_fisher_core(
  embeddings,
  probs,
  in_pool,
  kind,
  top_c,
  method,
  chunk_size,
  axis_name=None,
  with_rotated=False,
):
  """`pool_fisher` without checks; ``in_pool`` None means every row.

  ``with_rotated``: return ``(PoolFisher, embeddings in its basis)``
  (`_basis.rotate`), for `bait` to reuse (one pass over the pool fewer; not
  for ``diagonal``).
  """
  dtype = _factors.float_dtype(embeddings, probs)
  h = embeddings.astype(dtype)
  probs = probs.astype(dtype)
  row_weight, n_total = _blocks.pool_rows(in_pool, h.shape[0], dtype, axis_name)
  blocks = quad = center = None
  if method == "diagonal":
    q = _factors.class_factors(probs, kind, top_c)[..., 0] ** 2
    if row_weight is not None:
      q = q * row_weight[:, None]
    blocks = _pool.psum(jnp.einsum("nc,ni->ci", q, h * h), axis_name) / n_total
  else:
    center = _basis.pool_center(h, row_weight, n_total, axis_name)
    h = _basis.rotate(h, center)
  if method == "dense" or (method == "structured" and kind == "full"):
    # Dense: every block F_ab; structured full: the block-diagonal part.
    weights = (
      _blocks.pack_pairs(
        _factors.class_outer(_basis.dense_factors(probs, kind, top_c))
      )
      if method == "dense"
      else probs
    )
    if row_weight is not None:
      weights = weights * row_weight[:, None]
    blocks = (
      _pool.psum(_blocks.pool_gram(h, weights, chunk_size), axis_name) / n_total
    )
  elif method == "structured":  # topc: V_n^T F V_n of every point
    factors = _factors.class_factors(probs, kind, top_c)
    factors_f = (
      factors if row_weight is None else factors * row_weight[:, None, None]
    )
    quad = _structured.topc_pool_quad(
      h, factors, factors_f, n_total, chunk_size, axis_name
    )
  stats = PoolFisher(kind, top_c, method, blocks, quad, center)
  return (stats, h) if with_rotated else stats


def check_pool_fisher(stats, kind, top_c, method, n, c, dim):
  """A `PoolFisher` passed to `bait`: its options and shapes fit this pool."""
  if not isinstance(stats, PoolFisher):
    raise ValueError(
      "pool_fisher must be the PoolFisher returned by"
      f" alfx.pool_fisher, got {type(stats).__name__}."
    )
  if (stats.fisher, stats.top_c, stats.method) != (kind, top_c, method):
    raise ValueError(
      f"pool_fisher was computed for fisher={stats.fisher!r},"
      f" top_c={stats.top_c}, method={stats.method!r}, but bait was called"
      f" with fisher={kind!r}, top_c={top_c}, method={method!r}."
    )
  c_f = 1 if kind == "binary" else c - _basis.null_free(kind, c)
  expected = {
    "dense": ("blocks", (c_f * (c_f + 1) // 2, dim, dim)),
    "diagonal": ("blocks", (c, dim)),
    "structured": (
      ("blocks", (c, dim, dim))
      if kind == "full"
      else ("quad", (n, top_c, top_c))
    ),
  }[method]
  value = getattr(stats, expected[0])
  if value is None or tuple(value.shape) != expected[1]:
    raise ValueError(
      f"pool_fisher.{expected[0]} must have shape {list(expected[1])} for"
      f" this pool, got"
      f" {None if value is None else list(value.shape)}."
    )
  if method != "diagonal" and (
    stats.center is None or tuple(stats.center.shape) != (dim,)
  ):
    raise ValueError(
      f"pool_fisher.center must have shape [{dim}] for this pool, got"
      f" {None if stats.center is None else list(stats.center.shape)};"
      " pass the PoolFisher that alfx.pool_fisher returned for it."
    )

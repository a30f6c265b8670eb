"""Pool-axis primitives: chunked maps and pool-wide reductions that also run sharded.

Every greedy acquisition in alfx is written over the *local* slice of the pool
(the whole pool on one device) and uses these primitives for everything that
looks across the pool: the argmax of a greedy step, reading the row of the
point just picked, sums over the pool, random draws. With ``axis_name=None``
they are plain ``jnp``. Inside ``jax.shard_map`` over a mesh axis that splits
the pool they become small collectives (an all-gather of one value and index
per device, a ``psum`` of one row), so the same code runs as one SPMD program
and picks exactly what the single-device run picks: ties go to the lowest
global index in both cases, and random draws are counter-based (element
``i`` of a draw hashes the global index ``i``), so each device draws only its
rows and they equal the single-device draws.

Pool arrays under ``shard_map`` are split in equal contiguous blocks: device
``d`` holds global rows ``[d * n_local, (d + 1) * n_local)``.
"""

from collections.abc import Callable
import math
from typing import Any

import jax
from jax import lax
import jax.extend.random
import jax.numpy as jnp

#: Default of every ``chunk_size``: the most pool rows any step processes at
#: once (a cap on the working set; a function may use fewer, e.g. to keep a
#: temporary in cache). ``chunk_size=None`` means this value.
DEFAULT_CHUNK_SIZE = 1024


def offset(n_local: int, axis_name=None) -> jax.Array:
  """Global index of local row 0 (0 on a single device)."""
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  return (lax.axis_index(axis_name) * n_local).astype(jnp.int32)


def global_indices(n_local: int, axis_name=None) -> jax.Array:
  """``int32[n_local]``: the global pool index of each local row."""
  return offset(n_local, axis_name) + jnp.arange(n_local, dtype=jnp.int32)


def size(n_local: int, axis_name=None) -> int:
  """Static global pool size."""
  return n_local if axis_name is None else n_local * lax.axis_size(axis_name)


def psum(x, axis_name=None):
  """Sum of per-shard partial results over the pool axis."""
  return x if axis_name is None else lax.psum(x, axis_name)


def pmax(x, axis_name=None):
  return x if axis_name is None else lax.pmax(x, axis_name)


def argmax(values: jax.Array, axis_name=None) -> tuple[jax.Array, jax.Array]:
  """Global argmax over the pool: ``(int32 index, value)``; first index on ties.

  Sharded, each device reduces its slice, then two scalar all-reduces (max
  of the value, min of the index attaining it): no gather of the pool.
  """
  local = jnp.argmax(values)
  value = values[local]
  index = (offset(values.shape[0], axis_name) + local).astype(jnp.int32)
  if axis_name is None:
    return index, value
  # The lowest global index among those attaining the global max: the same
  # tie rule as jnp.argmax. pmax/pmin results are replicated by construction.
  best = lax.pmax(value, axis_name)
  candidate = jnp.where(value == best, index, jnp.iinfo(jnp.int32).max)
  return lax.pmin(candidate, axis_name), best


def take(x: jax.Array, index: jax.Array, axis_name=None) -> jax.Array:
  """Row ``x[index]`` for a global pool index, replicated on every device."""
  if axis_name is None:
    return x[index]
  n_local = x.shape[0]
  local = index - offset(n_local, axis_name)
  owned = (local >= 0) & (local < n_local)
  row = x[jnp.clip(local, 0, n_local - 1)]
  if row.dtype == jnp.bool_:
    return (
      lax.psum(jnp.where(owned, row, False).astype(jnp.int32), axis_name) > 0
    )
  # Only the owner contributes; x + 0 is exact, also for -inf.
  return lax.psum(jnp.where(owned, row, jnp.zeros_like(row)), axis_name)


def set_at(x: jax.Array, index: jax.Array, value, axis_name=None) -> jax.Array:
  """``x.at[index].set(value)`` for a global index; only its owner writes."""
  if axis_name is None:
    return x.at[index].set(value)
  n_local = x.shape[0]
  local = index - offset(n_local, axis_name)
  owned = (local >= 0) & (local < n_local)
  return x.at[jnp.where(owned, local, n_local)].set(value, mode="drop")


def _threefry_key(key) -> jax.Array | None:
  """``uint32[2]`` Threefry key data of ``key``; None for other PRNGs."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a raw key, of the default PRNG
  if str(jax.random.key_impl(key)) != "threefry2x32":
    return None
  return jax.random.key_data(key)


def _counter_bits(key_data, start, shape) -> tuple[jax.Array, jax.Array]:
  """Two ``uint32`` words per element of rows ``[start, start + shape[0])``.

  Element ``i`` of the flattened global draw is the Threefry hash of the
  counter ``(0, i)``, so a device computes only its own rows and any split of
  the pool gives the same values (``i < 2^32``).
  """
  width = math.prod(shape[1:])
  size_ = shape[0] * width
  count = jnp.asarray(start, jnp.uint32) * width + jnp.arange(
    size_, dtype=jnp.uint32
  )
  words = jax.extend.random.threefry_2x32(
    key_data, jnp.concatenate([jnp.zeros_like(count), count])
  )
  return words[:size_].reshape(shape), words[size_:].reshape(shape)


def _bits_to_unit(bits, dtype) -> jax.Array:
  """Uniform ``[0, 1)`` from two ``uint32`` words: 53 bits for float64, 24
  otherwise (exact in float32; narrower types are clamped below 1)."""
  hi, lo = bits
  if jnp.dtype(dtype) == jnp.float64:
    return (
      (hi >> 5).astype(dtype) * 2.0**26 + (lo >> 6).astype(dtype)
    ) * 2.0**-53
  u = (hi >> 8).astype(jnp.float32) * 2.0**-24
  if jnp.dtype(dtype) == jnp.float32:
    return u
  below_one = jnp.nextafter(jnp.ones((), dtype), jnp.zeros((), dtype))
  return jnp.minimum(u.astype(dtype), below_one)


def _random_slice(
  draw: Callable[[tuple[int, ...]], jax.Array],
  shape: tuple[int, ...],
  axis_name,
) -> jax.Array:
  """Fallback for non-Threefry keys: the whole draw on every device, sliced."""
  if axis_name is None:
    return draw(shape)
  n_local = shape[0]
  full = draw((size(n_local, axis_name),) + tuple(shape[1:]))
  start = (offset(n_local, axis_name),) + (0,) * (len(shape) - 1)
  return lax.dynamic_slice(full, start, shape)


def uniform(
  key, shape: tuple[int, ...], dtype=jnp.float32, axis_name=None
) -> jax.Array:
  """Uniform [0, 1) noise for the local rows, equal to the unsharded draw.

  Counter-based (`_counter_bits`): each device hashes only its own rows.
  """
  shape = tuple(shape)
  key_data = _threefry_key(key)
  if key_data is None:
    return _random_slice(
      lambda s: jax.random.uniform(key, s, dtype), shape, axis_name
    )
  bits = _counter_bits(key_data, offset(shape[0], axis_name), shape)
  return _bits_to_unit(bits, dtype)


def gumbel(
  key, shape: tuple[int, ...], dtype=jnp.float32, axis_name=None
) -> jax.Array:
  """Standard Gumbel noise for the local rows, equal to the unsharded draw."""
  u = uniform(key, shape, dtype, axis_name)
  return -jnp.log(-jnp.log(jnp.maximum(u, jnp.finfo(u.dtype).tiny)))


def all_gather(x: jax.Array, axis_name=None) -> jax.Array:
  """The shards' ``x`` concatenated along axis 0 (identity on one device)."""
  return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def ring_sum(
  fn: Callable[..., jax.Array],
  *blocks: jax.Array,
  axis_name=None,
  own: Callable[..., jax.Array] | None = None,
):
  """``sum over the shards' blocks b of fn(*b)``: pool-pairwise sums, no gather.

  For ``O(N^2)`` terms such as ``sum_m f(x_n, x_m)`` for the local rows
  ``x_n``: ``fn`` closes over the local rows and receives one shard's
  ``blocks`` (pool arrays, ``[n_local, ...]``). Sharded, the blocks travel
  round a ring of the devices by ``ppermute`` (``P - 1`` transfers of one
  block each), so no device ever holds more than its own block and one
  visitor. On one device: ``fn(*blocks)``. ``own``, if given, replaces
  ``fn`` for the device's own block (the only one on one device), e.g. to
  add per-row terms in the same pass.
  """
  total = (fn if own is None else own)(*blocks)
  if axis_name is None:
    return total
  devices = lax.axis_size(axis_name)
  ring = [(i, (i + 1) % devices) for i in range(devices)]

  def body(_, carry):
    acc, visiting = carry
    visiting = tuple(lax.ppermute(b, axis_name, ring) for b in visiting)
    return jax.tree.map(jnp.add, acc, fn(*visiting)), visiting

  total, _ = lax.fori_loop(0, devices - 1, body, (total, blocks))
  return total


def compact(
  keep: jax.Array, arrays: tuple[jax.Array, ...], capacity: int, axis_name=None
) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
  """The rows with ``keep`` True, in pool order, in ``capacity`` static slots.

  Returns ``(rows, ok, count)``: ``rows[i]`` is ``arrays[i]`` (numeric) at
  the kept rows, ``[capacity, ...]`` and replicated (unused slots hold
  arbitrary finite rows); ``ok: bool[capacity]`` marks the used slots;
  ``count`` is the global number of kept rows (beyond ``capacity`` the rest
  are dropped). Sharded, each device writes its kept rows into their global
  slots (after the kept rows of the devices before it) of a zero
  ``[capacity, ...]`` buffer and one ``psum`` assembles them: the traffic is
  ``capacity`` rows, whatever the pool size.
  """
  n_local = keep.shape[0]
  slots = min(capacity, n_local)
  index = jnp.nonzero(keep, size=slots, fill_value=0)[0]
  count = jnp.sum(keep.astype(jnp.int32))
  rows = tuple(a[index] for a in arrays)
  if axis_name is None:
    return rows, jnp.arange(capacity) < count, count
  counts = all_gather(count[None], axis_name)
  before = jnp.sum(
    jnp.where(
      jnp.arange(counts.shape[0]) < lax.axis_index(axis_name), counts, 0
    )
  )
  slot = before + jnp.arange(slots)
  slot = jnp.where(
    (jnp.arange(slots) < count) & (slot < capacity), slot, capacity
  )
  # Each slot has one writer; the others add exact zeros.
  rows = tuple(
    lax.psum(
      jnp.zeros((capacity,) + r.shape[1:], r.dtype)
      .at[slot]
      .set(r, mode="drop"),
      axis_name,
    )
    for r in rows
  )
  count = jnp.sum(counts)
  return rows, jnp.arange(capacity) < count, count


def top_k(
  values: jax.Array, k: int, axis_name=None
) -> tuple[jax.Array, jax.Array]:
  """``(values[k], int32 global indices[k])`` of the ``k`` largest in the pool.

  Ties go to the lower global index (``lax.top_k`` is stable). Sharded, each
  device takes its local top ``k`` and the ``P * k`` candidates, ordered by
  device, are reduced by a second top-k: no gather of the pool.
  """
  vals, local = lax.top_k(values, k)
  index = offset(values.shape[0], axis_name) + local.astype(jnp.int32)
  if axis_name is None:
    return vals, index
  vals, pos = lax.top_k(all_gather(vals, axis_name), k)
  return vals, all_gather(index, axis_name)[pos]


def _chunk_starts(n: int, chunk_size: int) -> tuple[int, int]:
  chunk = max(1, min(chunk_size, n))
  return chunk, -(-n // chunk)


def chunked_map(fn: Callable[..., Any], *arrays: jax.Array, chunk_size: int):
  """Applies ``fn`` to consecutive ``chunk_size`` rows of the pool arrays.

  Peak memory of ``fn``'s intermediates is bounded by ``chunk_size`` rows,
  not ``N``. Chunks are dynamic slices of the inputs (no padded copy of the
  pool); the last chunk is the last ``chunk_size`` rows, overlapping its
  predecessor, so every chunk has the same static shape, ``fn`` is traced
  once, and identical rows give bit-identical results in every chunk. ``fn``
  must treat rows independently.

  Args:
    fn: maps arrays of ``chunk`` leading rows to a pytree of ``[chunk, ...]``.
    *arrays: pool arrays sharing the leading axis ``N``.
    chunk_size: static rows per chunk.

  Returns:
    ``fn``'s outputs for all ``N`` rows.
  """
  n = arrays[0].shape[0]
  chunk, n_chunks = _chunk_starts(n, chunk_size)
  if n_chunks == 1:
    return fn(*arrays)
  shapes = jax.eval_shape(
    fn, *(jax.ShapeDtypeStruct((chunk,) + a.shape[1:], a.dtype) for a in arrays)
  )
  init = jax.tree.map(lambda o: jnp.zeros((n,) + o.shape[1:], o.dtype), shapes)

  def body(i, outs):
    start = jnp.minimum(i * chunk, n - chunk)
    res = fn(*(lax.dynamic_slice_in_dim(a, start, chunk) for a in arrays))
    return jax.tree.map(
      lambda o, r: lax.dynamic_update_slice_in_dim(o, r, start, 0), outs, res
    )

  return lax.fori_loop(0, n_chunks, body, init)


def chunked_sum(
  fn: Callable[..., jax.Array], *arrays: jax.Array, chunk_size: int
):
  """Sum over the pool of ``fn``'s per-chunk partial sums, in bounded memory.

  ``fn(*chunk_arrays, fresh)`` receives ``chunk_size`` rows and ``fresh:
  bool[chunk]``, False on rows an earlier chunk already covered (the
  overlapping last chunk, as in `chunked_map`); it must return the pytree of
  its partial sums over the fresh rows only. Local to a shard: ``psum`` the
  result for a pool-wide sum.
  """
  n = arrays[0].shape[0]
  chunk, n_chunks = _chunk_starts(n, chunk_size)
  if n_chunks == 1:
    return fn(*arrays, jnp.ones((n,), bool))

  def partial(i):
    start = jnp.minimum(i * chunk, n - chunk)
    fresh = start + jnp.arange(chunk) >= i * chunk
    return fn(
      *(lax.dynamic_slice_in_dim(a, start, chunk) for a in arrays), fresh
    )

  first = partial(0)
  return lax.fori_loop(
    1, n_chunks, lambda i, acc: jax.tree.map(jnp.add, acc, partial(i)), first
  )

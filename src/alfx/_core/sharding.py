"""The pool axis sharded over devices: placement and dispatch to SPMD cores.

Every acquisition core is written over the *local* slice of the pool with the
`alfx._pool` primitives and an ``axis_name`` (CONTRIBUTING.md). This module
runs those cores as one SPMD program when the caller's pool arrays are
sharded over a device mesh:

* `shard_pool` pads the pool axis to a multiple of the mesh size and places
  the arrays with ``NamedSharding(mesh, P(axis_name))``.
* `pool_core` declares a core's pool-axis and static arguments by name and
  inspects the pool-axis arguments when it is called. If one of them is
  sharded along axis 0 over a mesh axis, the core runs under ``jax.shard_map`` (pool arguments split, everything else
  replicated, the `Selection` replicated: every device computes the same
  picks through the `_pool` collectives); otherwise the core runs as is.

The sharding is read from concrete arrays (``x.sharding``) and, under the
caller's ``jit``, from the array type (``jax.typeof(x).sharding``), which
carries it for meshes with ``Explicit`` axes (the default of
``jax.make_mesh``). Under ``jit`` with ``Auto`` axes the sharding is not
visible and the core runs as a plain jitted function (XLA's automatic
partitioning: same picks, no guarantee that the scan state stays split).
"""

from collections.abc import Callable
import functools
import inspect
import re
from typing import Any
from typing import NamedTuple

import jax
import jax.core
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from alfx._core import checking as _checking


class ShardedPool(NamedTuple):
  """A pool placed on a device mesh by `shard_pool`.

  Attributes:
    arrays: the input arrays, in order, with axis 0 padded to ``N_pad`` (a
      multiple of the mesh size) and sharded over ``axis_name``.
    in_pool: ``bool[N_pad]``, True on the ``N`` original rows, False on the
      padding; sharded like the arrays.
    n: the original pool size ``N``.
    mesh: the `jax.sharding.Mesh`.
    axis_name: the mesh axis that splits the pool.

  Example:
    >>> pool = alfx.shard_pool(jnp.zeros((3, 4)), jnp.ones(3, bool))
    >>> pool.n, pool.axis_name, len(pool.arrays)
    (3, 'pool', 2)
  """

  arrays: tuple[jax.Array, ...]
  in_pool: jax.Array
  n: int
  mesh: jax.sharding.Mesh
  axis_name: str


def _pad_rows(x: jax.Array, pad: int) -> jax.Array:
  if pad == 0:
    return x
  if x.dtype == jnp.bool_:
    # Padding is never selectable, never labelled.
    return jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  # Copies of the last row: still valid log-probabilities, probabilities,
  # finite embeddings, so the input checks pass and nothing becomes NaN.
  last = x[-1:]
  return jnp.concatenate([x, jnp.broadcast_to(last, (pad,) + x.shape[1:])])


def shard_pool(
  *arrays: ArrayLike,
  mesh: jax.sharding.Mesh | None = None,
  axis_name: str = "pool",
) -> ShardedPool:
  """Pads the pool axis to a multiple of the devices and shards it.

  Args:
    *arrays: pool arrays sharing the leading axis ``N`` (``log_probs[N, K,
      C]``, ``embeddings[N, D]``, ``probs[N, C]``, ``mask[N]``,
      ``labeled[N]``...). NumPy arrays are accepted.
    mesh: a `jax.sharding.Mesh` with an axis ``axis_name``; default a 1-D
      mesh over all ``jax.devices()`` (``jax.make_mesh``, ``Explicit``
      axis).
    axis_name: the mesh axis that splits the pool.

  Returns:
    A `ShardedPool`. Boolean arrays are padded with False (so a padded
    ``mask`` or ``labeled`` never selects the padding); other arrays with
    copies of their last row (valid values). Indices returned by the
    acquisitions are indices into the padded arrays, equal to the original
    ones, since padding is appended. Pass ``mask`` arrays padded by this
    function, or ``pool.in_pool``, as ``mask``: with ``mask=None`` the
    padding rows would be selectable. BAIT also takes ``in_pool=`` so that
    the pool's Fisher information averages over the original rows only.

  Example:
    >>> log_probs = jnp.log(jnp.full((5, 2, 3), 1 / 3))  # [N=5, K=2, C=3]
    >>> pool = alfx.shard_pool(log_probs)
    >>> (lp,) = pool.arrays
    >>> pool.n, lp.shape[0] % jax.device_count()
    (5, 0)
    >>> sel = alfx.batchbald(lp, 2, mask=pool.in_pool)  # as unsharded
    >>> sel.indices.tolist()
    [0, 1]
  """
  if not arrays:
    raise ValueError("shard_pool needs at least one pool array.")
  columns = [x if isinstance(x, jax.Array) else jnp.asarray(x) for x in arrays]
  for i, x in enumerate(columns):
    if x.ndim == 0:
      raise ValueError(
        f"arrays[{i}] must have a pool axis [N, ...], got a scalar."
      )
  n = columns[0].shape[0]
  for i, x in enumerate(columns):
    if x.shape[0] != n:
      raise ValueError(
        f"arrays[{i}] must have the pool size N={n} as axis 0 (that of"
        f" arrays[0]), got shape {list(x.shape)}."
      )
  if n == 0:
    raise ValueError("shard_pool got an empty pool (N = 0).")
  if mesh is None:
    mesh = jax.make_mesh((jax.device_count(),), (axis_name,))
  if axis_name not in mesh.axis_names:
    raise ValueError(
      f"mesh has axes {mesh.axis_names}; axis_name="
      f"{axis_name!r} is not one of them."
    )
  devices = mesh.shape[axis_name]
  n_pad = -(-n // devices) * devices
  sharding = NamedSharding(mesh, P(axis_name))
  placed = tuple(
    jax.device_put(_pad_rows(x, n_pad - n), sharding) for x in columns
  )
  in_pool = jax.device_put(jnp.arange(n_pad) < n, sharding)
  return ShardedPool(placed, in_pool, n, mesh, axis_name)


# --------------------------------------------------------------------------
# Dispatch.


def _sharding_of(x):
  if isinstance(x, jax.core.Tracer):
    try:
      return jax.typeof(x).sharding
    except Exception:  # any failure: no sharding is visible
      return None
  return getattr(x, "sharding", None)


def pool_axis(*arrays) -> tuple[Any, str] | None:
  """``(mesh, axis_name)`` if an array is sharded along axis 0, else None.

  Raises:
    ValueError: when axis 0 is split over several mesh axes, or two arrays
      are split over different meshes or axes.
  """
  found = None
  for x in jax.tree.leaves(arrays):
    sharding = _sharding_of(x)
    if not isinstance(sharding, NamedSharding) or not sharding.spec:
      continue
    if any(s is not None for s in sharding.spec[1:]):
      raise ValueError(
        f"only the pool axis (axis 0) may be sharded, got spec"
        f" {sharding.spec} for an array of shape {list(x.shape)}."
      )
    axis = sharding.spec[0]
    if axis is None:
      continue
    if isinstance(axis, tuple):
      if len(axis) != 1:
        raise ValueError(
          f"the pool axis is split over several mesh axes {axis}; alfx"
          " shards the pool over one mesh axis (a 1-D mesh)."
        )
      axis = axis[0]
    mesh = sharding.mesh
    if found is not None and (found[1] != axis or found[0].shape != mesh.shape):
      raise ValueError(
        "pool arrays are sharded over different meshes or"
        f" axes ({found[1]!r} and {axis!r})."
      )
    found = (mesh, axis)
  return found


def _place(x, mesh, spec):
  sharding = NamedSharding(mesh, spec)
  explicit = all(t == AxisType.Explicit for t in mesh.axis_types)
  if explicit:
    return jax.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


@functools.partial(
  jax.jit,
  static_argnames=("core", "mesh", "axis_name", "pool", "out_specs", "static"),
)
def _sharded(args, core, mesh, axis_name, pool, out_specs, static):
  specs = tuple(P(axis_name) if p else P() for p in pool)
  args = tuple(
    jax.tree.map(lambda a, s=s: _place(a, mesh, s), arg)
    for arg, s in zip(args, specs)
  )
  return jax.shard_map(
    lambda *a: core(*a, axis_name=axis_name, **dict(static)),
    mesh=mesh,
    in_specs=specs,
    out_specs=jax.tree.unflatten(out_specs[1], out_specs[0]),
    check_vma=False,
  )(*args)


def pool_spec(axis_name: str, static=None) -> P:
  """``out_specs`` for outputs whose leaves all keep the pool as axis 0."""
  del static
  return P(axis_name)


def _dispatch(jitted, args, pool, out_specs, static):
  """Runs ``jitted(*args, **static)``, under ``shard_map`` if the pool is sharded."""
  found = pool_axis(*(a for a, p in zip(args, pool) if p))
  if found is None:
    return jitted(*args, **static)
  mesh, axis_name = found
  devices = mesh.shape[axis_name]
  for a, p in zip(args, pool):
    for leaf in jax.tree.leaves(a) if p else ():
      if leaf.shape[0] % devices:
        raise ValueError(
          f"a pool array of shape {list(leaf.shape)} cannot be split evenly"
          f" over {devices} devices; pad the pool with alfx.shard_pool."
        )
  specs = P() if out_specs is None else out_specs(axis_name, static)
  # A static argument must be hashable: the specs as leaves and tree.
  leaves, tree = jax.tree.flatten(specs, is_leaf=lambda x: isinstance(x, P))
  return _sharded(
    tuple(args),
    core=jitted,
    mesh=mesh,
    axis_name=axis_name,
    pool=tuple(pool),
    out_specs=(tuple(leaves), tree),
    static=tuple(sorted(static.items())),
  )


def _has_tracer(tree) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _nan_guard(selection, args, pool, axis_name):
  """``selection`` with NaN scores and ``valid=False`` if any float input is NaN.

  Under the caller's ``jit`` the value checks cannot run; a NaN in the inputs
  must then never come back as plausible picks.
  """
  bad_local = jnp.zeros((), bool)
  bad_replicated = jnp.zeros((), bool)
  for a, p in zip(args, pool):
    for leaf in jax.tree.leaves(a):
      dtype = getattr(leaf, "dtype", None)
      # A leaf without a dtype (None) is not floating: skipped.
      if not jnp.issubdtype(dtype, jnp.floating):  # pyright: ignore[reportArgumentType]
        continue
      isnan = jnp.any(jnp.isnan(leaf))
      if p:
        bad_local = bad_local | isnan
      else:
        bad_replicated = bad_replicated | isnan
  bad = bad_replicated | (_psum_any(bad_local, axis_name))
  return selection._replace(
    scores=jnp.where(bad, jnp.nan, selection.scores).astype(
      selection.scores.dtype
    ),
    valid=selection.valid & ~bad,
  )


def _psum_any(flag, axis_name):
  if axis_name is None:
    return flag
  return jax.lax.psum(flag.astype(jnp.int32), axis_name) > 0


def pool_core(
  *,
  pool: tuple[str, ...],
  static: tuple[str, ...] = (),
  out_specs: Callable[[str, dict], Any] | None = None,
  selection: bool = True,
):
  """Declares a jitted acquisition core over the local slice of the pool.

  The decorated function is written over the local rows of the pool with
  the `alfx._pool` primitives and takes ``axis_name=None`` (CONTRIBUTING.md).
  Calling the decorated function:

  * jits it with ``static`` (and ``axis_name``) as static arguments: new
    values of the other arguments never recompile;
  * when an argument named in ``pool`` carries a ``NamedSharding`` that
    splits axis 0 over a mesh axis, runs it under ``jax.shard_map`` (the
    ``pool`` arguments split, every other array argument replicated), so the
    picks equal the single-device picks;
  * when ``selection`` and some argument is traced (the caller's ``jit``,
    where the value checks could not run), returns NaN ``scores`` and
    ``valid=False`` if any floating input holds a NaN.

  Args:
    pool: names of the arguments whose every leaf has the pool as axis 0.
    static: names of the static (hashable) arguments.
    out_specs: ``(axis_name, static) -> PartitionSpec pytree`` of the output
      when run sharded; default replicated (``P()``).
    selection: the core returns a `Selection`-like NamedTuple with
      ``scores`` and ``valid`` (enables the NaN guard).

  Returns:
    A decorator. The decorated function keeps the core's signature; its
    ``.core`` attribute is the undecorated function (for use inside other
    cores, with an explicit ``axis_name``).
  """
  pool, static = tuple(pool), tuple(static)

  def decorate(fn):
    signature = inspect.signature(fn)
    names = [
      n
      for n, p in signature.parameters.items()
      if n != "axis_name"
      and n not in static
      and p.kind
      in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
      )
    ]
    unknown = (set(pool) - set(names)) | (
      set(static) - set(signature.parameters)
    )
    if unknown or "axis_name" not in signature.parameters:
      raise TypeError(
        f"pool_core({fn.__name__}): unknown arguments"
        f" {sorted(unknown)} or no axis_name parameter."
      )
    is_pool = tuple(n in pool for n in names)

    def guarded(*args, nan_guard=False, axis_name=None, **static_kwargs):
      out = fn(*args, axis_name=axis_name, **static_kwargs)
      if nan_guard and hasattr(out, "valid"):
        out = _nan_guard(out, args, is_pool, axis_name)
      return out

    jitted = jax.jit(
      guarded, static_argnames=static + ("axis_name", "nan_guard")
    )

    @functools.wraps(fn)
    def call(*args, **kwargs):
      bound = signature.bind(*args, **kwargs)
      bound.apply_defaults()
      arrays = tuple(bound.arguments[n] for n in names)
      statics = {n: bound.arguments[n] for n in static}
      if selection and _has_tracer(arrays):
        statics["nan_guard"] = True
      axis_name = bound.arguments.get("axis_name")
      pooled = (a for a, p in zip(arrays, is_pool) if p)
      if axis_name is None and pool_axis(*pooled) is None:
        # One device: the call's queued value checks join the program.
        return _checking.run_core(jitted, *arrays, **statics)
      _checking.flush_checks()  # the call's queued value checks come first
      if axis_name is not None:  # already inside the caller's shard_map
        return jitted(*arrays, axis_name=axis_name, **statics)
      return _dispatch(jitted, arrays, is_pool, out_specs, statics)

    # The undecorated core, for other cores (pyright cannot see the
    # attribute functools.wraps' wrapper gains here).
    call.core = fn  # pyright: ignore[reportAttributeAccessIssue]
    return call

  return decorate


#: ``%name = SHAPE all-gather(`` (or ``all-gather-start(``) in HLO text.
_ALL_GATHER = re.compile(r"=\s*(.+?)\s+all-gather(?:-start)?\(")


def pool_gathers(hlo_text: str, pool_size: int) -> list[str]:
  """The all-gather instructions of compiled HLO whose result has a dimension
  of at least ``pool_size``: gathers of the pool, which a sharded scan must
  not contain (for tests and debugging: ``jax.jit(f).lower(...).compile()
  .as_text()``)."""
  found = []
  for line in hlo_text.splitlines():
    # Only instructions whose opcode is all-gather: the shape between "="
    # and the opcode (an operand named %all-gather.N does not count).
    m = _ALL_GATHER.search(line)
    if not m:
      continue
    dims = [
      int(d)
      for d in re.findall(
        r"\d+", "".join(re.findall(r"\[([\d,]*)\]", m.group(1)))
      )
    ]
    if any(d >= pool_size for d in dims):
      found.append(line.strip())
  return found

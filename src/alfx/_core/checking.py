"""How value checks run: eagerly on concrete input, staged under `checked`.

A value check is a jitted reduction over the inputs that returns ``(ok,
values)``; `value_check` runs it once, moves the few scalars to the host and
raises a ``ValueError`` from the template when ``ok`` is False. Arrays that
span several processes are checked as one SPMD program on every process
(each reads its own shards; the verdict is the same everywhere). Inside
`checked` (``jax.experimental.checkify``) the same reduction is staged into
the caller's program and raises from inside ``jit``.

May import: jax and numpy only.
"""

import contextlib
import threading

import jax
import jax.core
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

#: Smallest ``|logsumexp(log_probs, axis=-1)|`` tolerance (float32 and up).
#: Lower precisions get ``8 * eps`` of their dtype (`tolerance`).
NORMALISATION_TOLERANCE = 1e-3

_STATE = threading.local()


def tolerance(dtype) -> float:
  """Normalisation tolerance of ``dtype``: ``max(1e-3, 8 eps)``.

  ``jax.nn.log_softmax`` of bfloat16 logits is off by up to ~2.3 eps
  (measured over C = 2..1000), float32 by ~4 eps.
  """
  return max(NORMALISATION_TOLERANCE, 8 * float(jnp.finfo(dtype).eps))


def is_concrete(*arrays) -> bool:
  """True when no argument is a tracer (we are not inside jit/vmap/grad)."""
  return not any(
    isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(arrays)
  )


def checking() -> bool:
  """True while a function wrapped by `checked` is being traced."""
  return getattr(_STATE, "checking", 0) > 0


def checked(fn):
  """``fn`` with alfx's value checks enforced inside ``jit``.

  Outside ``jit`` every public alfx function checks the values of its
  inputs (NaN, normalisation, enough selectable points, ...). Inside the
  caller's ``jit`` those checks cannot raise, and alfx instead returns NaN
  scores and ``valid=False`` for NaN input. ``checked(fn)`` traces ``fn``
  with every value check staged as a ``jax.experimental.checkify`` check and
  compiles it with ``jax.jit``; a failed check raises a ``ValueError``-like
  ``checkify.JaxRuntimeError`` carrying alfx's message when the compiled
  function runs. The cost is one extra reduction over the checked inputs.

  Args:
    fn: any function that calls alfx functions (it is jitted).

  Returns:
    A function with ``fn``'s signature and outputs.

  Example:
    >>> import jax, jax.numpy as jnp, alfx
    >>> step = alfx.checked(lambda lp: alfx.topk_bald(lp, 1))
    >>> lp = jnp.log(jnp.full((3, 2, 2), 0.5)).at[0, 0, 0].set(jnp.nan)
    >>> step(lp)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    JaxRuntimeError: log_probs (shape [N, K, C]) contains NaN...
  """

  def staged(*args, **kwargs):
    _STATE.checking = getattr(_STATE, "checking", 0) + 1
    try:
      return fn(*args, **kwargs)
    finally:
      _STATE.checking -= 1

  compiled = jax.jit(checkify.checkify(staged, errors=checkify.user_checks))

  def call(*args, **kwargs):
    err, out = compiled(*args, **kwargs)
    err.throw()
    return out

  call.__name__ = getattr(fn, "__name__", "checked")
  call.__doc__ = getattr(fn, "__doc__", None)
  return call


def _fully_addressable(args) -> bool:
  return all(
    getattr(a, "is_fully_addressable", True) for a in jax.tree.leaves(args)
  )


def to_host(fn, *args):
  """Runs a jitted value check on concrete arrays and fetches the result.

  ``ensure_compile_time_eval`` evaluates it eagerly even when a public
  function is called inside someone's trace with concrete (closed-over)
  arrays, where it would otherwise be staged out as a tracer. Arrays that
  span several processes (``jax.make_array_from_process_local_data``) cannot
  be closed over: there ``fn`` runs as an ordinary SPMD program in which
  every process reduces its own shards, and its replicated scalar result is
  the verdict of the whole pool, identical on every process.
  """
  with _mesh_context(args):
    if not _fully_addressable(args):
      return jax.device_get(fn(*args))
    with jax.ensure_compile_time_eval():
      return jax.device_get(fn(*args))


def value_check(fn, args, explain, template: str) -> None:
  """Runs one value check: ``fn(*args) -> (ok, values)``, scalars.

  On concrete arrays: one jitted reduction and one small host transfer;
  raises ``ValueError(explain(values))`` when ``ok`` is False. Traced inside
  `checked`: a ``checkify.check(ok, template, **values)``. Traced otherwise:
  nothing (the cores guard against NaN instead).
  """
  if not args or any(getattr(a, "size", 1) == 0 for a in args):
    return
  if is_concrete(*args):
    ok, values = to_host(fn, *args)
    if not bool(ok):
      raise ValueError(
        explain({k: np.asarray(v).item() for k, v in values.items()})
      )
  elif checking():
    ok, values = fn(*args)
    checkify.check(ok, template, **values)


def _mesh_context(args):
  """``jax.set_mesh`` of arrays sharded over an ``Explicit`` mesh, if unset.

  Explicit-sharding mode needs its mesh in context for some operations
  (``full_like`` inside ``logsumexp``); a pool placed by `alfx.shard_pool`
  is checked without the caller having to set it.
  """
  if not jax.sharding.get_abstract_mesh().empty:
    return contextlib.nullcontext()
  for a in args:
    sharding = getattr(a, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if (
      isinstance(mesh, jax.sharding.Mesh)
      and mesh.size > 1
      and any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    ):
      try:
        return jax.set_mesh(mesh)
      except ValueError:  # inside someone's jit (closed-over arrays)
        return contextlib.nullcontext()
  return contextlib.nullcontext()

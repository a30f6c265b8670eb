"""How value checks run: eagerly on concrete input, staged under `checked`.

A value check is a reduction over the inputs that returns ``(ok, values)``.
On concrete input the checks of one public call (`fused_checks`) run
together: one jitted function of their cheap ``quick`` tests over all the
checked arrays (compiled once per set of checks and input shapes) and one
host transfer of a ``bool[checks]`` vector, before the call's jitted core.
Only when a test fails do the precise statistics run, check by check, to
raise the ``ValueError`` of the first failure. Arrays that span several
processes are checked as one SPMD program on every process (each reads its
own shards; the verdict is the same everywhere). Inside `checked`
(``jax.experimental.checkify``) the same reductions are staged into the
caller's program and raise from inside ``jit``.

May import: jax and numpy only.
"""

from collections.abc import Callable
import contextlib
import functools
import threading
from typing import Any
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.core
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

#: Smallest ``|logsumexp(log_probs, axis=-1)|`` tolerance (float32 and up).
#: Lower precisions get ``8 * eps`` of their dtype (`tolerance`).
NORMALISATION_TOLERANCE = 1e-3

_STATE = threading.local()

_F = TypeVar("_F", bound=Callable[..., Any])


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

  Queued value checks of the current call (`fused_checks`) run first.
  ``ensure_compile_time_eval`` evaluates it eagerly even when a public
  function is called inside someone's trace with concrete (closed-over)
  arrays, where it would otherwise be staged out as a tracer. Arrays that
  span several processes (``jax.make_array_from_process_local_data``) cannot
  be closed over: there ``fn`` runs as an ordinary SPMD program in which
  every process reduces its own shards, and its replicated scalar result is
  the verdict of the whole pool, identical on every process.
  """
  flush_checks()
  return _host(fn, *args)


def _host(fn, *args, **kwargs):
  with _mesh_context(jax.tree.leaves(args)):
    if not _fully_addressable(args):
      return jax.device_get(fn(*args, **kwargs))
    with jax.ensure_compile_time_eval():
      return jax.device_get(fn(*args, **kwargs))


class _Check(NamedTuple):
  """One value check of a call, queued until the call's checks run."""

  stats: Callable[..., Any]
  quick: Callable[..., Any] | None
  args: tuple
  params: tuple
  explain: Callable[[dict], str]


def implied(*args, **params) -> bool:
  """A `value_check` ``quick`` for a check that a later check's ``quick`` covers.

  E.g. no NaN in log-probabilities: a NaN also fails the normalisation
  check's ``quick``. Its precise ``stats`` still run first on failure, so
  the message stays the NaN one.
  """
  del args, params
  return True


def value_check(
  stats, args, explain, template: str, *, quick=None, params=None
) -> None:
  """Runs, queues or stages one value check.

  Args:
    stats: ``stats(*args, **params) -> (ok, values)``, a module-level
      function (its identity keys the compiled check): ``ok`` a boolean
      scalar, ``values`` a dict of scalars for the message.
    args: the arrays checked.
    explain: ``explain(values) -> str``, the ``ValueError`` message.
    template: the ``checkify`` message under `checked` (``{name}`` fields
      from ``values``).
    quick: optional ``quick(*args, **params) -> ok``, a cheaper test for
      the fused pass (default ``stats``' ``ok``); the quick tests of a
      call passing must imply that every ``stats`` passes (`implied`).
    params: optional dict of hashable static parameters of both.

  On concrete arrays inside a `fused_checks` call the check is queued: the
  call's checks run together as one jitted reduction with one small host
  transfer, before the call's first ``pool_core`` core or on its return.
  Outside one it runs at once (the same way, alone). When a quick test
  fails, the precise ``stats`` of the queued checks run in order and the
  first failure raises ``ValueError(explain(values))``. Traced inside
  `checked`: a ``checkify.check(ok, template, **values)``. Traced
  otherwise: nothing (the cores guard against NaN instead).
  """
  if not args or any(getattr(a, "size", 1) == 0 for a in args):
    return
  for f in (stats, quick):
    qualname = getattr(f, "__qualname__", "")
    if "<locals>" in qualname:
      raise TypeError(
        f"value_check needs module-level functions, got {qualname}:"
        " a new closure per call would compile a new check every call."
      )
  params = tuple(sorted((params or {}).items()))
  if is_concrete(*args):
    check = _Check(stats, quick, tuple(args), params, explain)
    pending = getattr(_STATE, "pending", None)
    if pending is None:
      _run((check,))
    else:
      pending.append(check)
  elif checking():
    ok, values = stats(*args, **dict(params))
    checkify.check(ok, template, **values)


def fused_checks(fn: _F) -> _F:
  """Decorates a public function: its value checks run as one fused pass.

  Every `value_check` on concrete input made while ``fn`` runs (also by the
  public functions it calls) is queued; the queue runs (`flush_checks`)
  before the first ``pool_core`` core, before a `to_host`, when ``fn``
  returns and, so that a value error still comes before a later error of
  the same call, when ``fn`` raises.
  """

  @functools.wraps(fn)
  def call(*args, **kwargs):
    if getattr(_STATE, "pending", None) is not None:
      return fn(*args, **kwargs)  # nested: joins the outer call's queue
    _STATE.pending = []
    try:
      out = fn(*args, **kwargs)
      flush_checks()
      return out
    except Exception:
      flush_checks()  # a queued value error comes first
      raise
    finally:
      _STATE.pending = None

  return call  # pyright: ignore[reportReturnType]


def flush_checks() -> None:
  """Runs the queued value checks of the current `fused_checks` call."""
  pending = getattr(_STATE, "pending", None)
  if pending:
    checks = tuple(pending)
    pending.clear()
    _run(checks)


def _oks(arrays, plan):
  """``bool[len(plan)]``: the quick test of every planned check."""
  oks = []
  for stats, quick, idx, params in plan:
    args = [arrays[i] for i in idx]
    ok = (
      quick(*args, **dict(params)) if quick else stats(*args, **dict(params))[0]
    )
    oks.append(jnp.asarray(ok, bool).reshape(()))
  return jnp.stack(oks)


_all_ok = jax.jit(_oks, static_argnames=("plan",))


def share(key: str, x, value) -> None:
  """Offers ``value``, computed by a core from its input ``x``, to the checks.

  Inside the program of `run_core` (a core and the value checks of its
  call), a quick test may read it (`shared`) instead of a second pass over
  ``x``: e.g. the row sums of ``exp(log_probs)`` that a core forms anyway.
  ``value`` must be what the quick test would compute, to within the
  rounding its bound allows. Anywhere else (the caller's ``jit``, a core
  run on its own) it does nothing.
  """
  offered = getattr(_STATE, "shared", None)
  if offered is not None:
    offered[key, id(x)] = (x, value)


def shared(key: str, x):
  """The value a core offered for ``x`` under ``key`` (`share`), else None."""
  x = (getattr(_STATE, "aliases", None) or {}).get(id(x), x)
  entry = (getattr(_STATE, "shared", None) or {}).get((key, id(x)))
  return entry[1] if entry is not None and entry[0] is x else None


#: `share` key: ``sum_c exp(log_probs)`` per row, computed in the dtype
#: ``promote_types(log_probs.dtype, float32)`` (any shape).
ROW_SUMS = "exp_row_sums"


def offer_row_sums(log_probs, sums) -> None:
  """A core's ``sum_c exp(log_probs)`` per row, offered to the quick test of
  the call's normalisation check (`share`): one pass, not two.

  Only offered when computed in the quick test's own dtype (float32 or
  wider); a bfloat16 core's sums would be too coarse for its bound.
  """
  if sums.dtype == jnp.promote_types(log_probs.dtype, jnp.float32):
    share(ROW_SUMS, log_probs, sums)


def checks_apart(core: _F) -> _F:
  """Marks a jitted core whose call's checks must read their own inputs.

  `run_core` then passes each checked array to the fused program as a
  parameter of its own, even where it is also a core argument (the same
  buffer twice). On one parameter XLA:CPU fuses sibling reductions of it
  into one loop: good for a core that reduces over the same axis as the
  checks, slow for one that reduces over another (a mean of ``exp`` over
  ``K`` with the normalisation check's sums over ``C``: 30 ms against 11 + 8
  ms apart, at ``N = 60,000, K = 20, C = 10``). `share` still works.
  """
  core.checks_apart = True  # pyright: ignore[reportFunctionMemberAccess]
  return core


@functools.partial(
  jax.jit, static_argnames=("core", "statics", "plan", "refs", "apart")
)
def _core_and_checks(args, checked, core, statics, plan, refs, apart):
  # The core is traced inline (not as a nested jit), so that a checked array
  # that is also a core argument is one tracer in both (or, `apart`, maps to
  # it) and the core can `share` what it computes from it.
  leaves = jax.tree.leaves(args)
  if apart:
    arrays = checked
    _STATE.aliases = {
      id(a): leaves[i] for a, i in zip(checked, refs) if i is not None
    }
  else:
    arrays = tuple(a if i is None else leaves[i] for a, i in zip(checked, refs))
  _STATE.shared = {}
  try:
    out = getattr(core, "__wrapped__", core)(*args, **dict(statics))
    return out, _oks(arrays, plan)
  finally:
    _STATE.shared = None
    _STATE.aliases = None


def _plan(checks):
  """``(arrays, plan)``: each checked array once, and what each check reads."""
  arrays, ids, plan = [], {}, []
  for c in checks:
    idx = []
    for a in c.args:
      if id(a) not in ids:
        ids[id(a)] = len(arrays)
        arrays.append(a)
      idx.append(ids[id(a)])
    plan.append((c.stats, c.quick, tuple(idx), c.params))
  return tuple(arrays), tuple(plan)


def _quick_ok(checks) -> bool:
  """All quick tests of ``checks`` in one jitted call and one transfer."""
  arrays, plan = _plan(checks)
  return bool(np.all(_host(_all_ok, arrays, plan=plan)))


def _one_device(leaves) -> bool:
  """Every array on the same single device (one plain jitted program)."""
  devices = set()
  for a in leaves:
    if isinstance(a, jax.core.Tracer):
      return False
    sharding = getattr(a, "sharding", None)
    if sharding is not None:
      if len(sharding.device_set) != 1 or not a.is_fully_addressable:
        return False
      devices |= sharding.device_set
  return len(devices) <= 1


def run_core(core, *args, **statics):
  """``core(*args, **statics)`` (jitted) with the call's queued checks fused in.

  On one device, the queued value checks of the current `fused_checks` call
  are compiled into the core's program, and only their ``bool[checks]``
  verdict comes back to the host. XLA does not share work between the
  core's reductions and the checks' (two passes of ``exp(log_probs)`` stay
  two), but a core may `share` what it computes anyway, such as the row
  sums of ``exp(log_probs)``, and the quick tests read it (`checks_apart`:
  a core that must not be fused with its checks). The result is
  returned only when the checks pass (on failure the core's work is thrown
  away and the first failing check raises). Otherwise (sharded or traced
  arguments, no queued checks) the checks run first, then the core.
  """
  pending = getattr(_STATE, "pending", None)
  if pending and _one_device(
    jax.tree.leaves((args, [c.args for c in pending]))
  ):
    checks = tuple(pending)
    pending.clear()
    arrays, plan = _plan(checks)
    # Which core argument each checked array is, if any: passed once (as
    # that argument) unless the core keeps its checks apart.
    apart = getattr(core, "checks_apart", False)
    position = {id(a): i for i, a in enumerate(jax.tree.leaves(args))}
    refs = tuple(position.get(id(a)) for a in arrays)
    out, oks = _core_and_checks(
      args,
      tuple(a if apart or i is None else None for a, i in zip(arrays, refs)),
      core=core,
      statics=tuple(sorted(statics.items())),
      plan=plan,
      refs=refs,
      apart=apart,
    )
    if isinstance(oks, jax.core.Tracer):
      # Concrete arrays closed over in someone's trace: the program was
      # staged into it (the unused verdict is pruned there); check eagerly.
      _run(checks)
    elif not np.all(jax.device_get(oks)):
      _explain(checks)
    return out
  flush_checks()
  return core(*args, **statics)


def _run(checks) -> None:
  # Arrays spread over several processes run as one SPMD program apart from
  # process-local ones (a jit cannot mix the two).
  spread = tuple(c for c in checks if not _fully_addressable(c.args))
  local = tuple(c for c in checks if _fully_addressable(c.args))
  if not all(_quick_ok(group) for group in (local, spread) if group):
    _explain(checks)


def _explain(checks) -> None:
  """Raises the error of the first check (in call order) whose precise
  statistics fail; a quick test may fail where they pass (no error)."""
  for c in checks:
    ok, values = to_host(functools.partial(c.stats, **dict(c.params)), *c.args)
    if not bool(ok):
      raise ValueError(
        c.explain({k: np.asarray(v).item() for k, v in values.items()})
      )


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

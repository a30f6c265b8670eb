"""Input checks shared by every public function.

What is checked where:

* Always, also under ``jit`` and ``vmap`` (shapes are static there): ranks,
  shapes and their agreement, dtype kinds, static sizes (``batch_size >= 1``,
  ``batch_size <= N``, the enumeration limit of exact joint entropies).
* Only on concrete arrays, that is when a public function is called outside
  ``jit``/``vmap``: the values. Floats must be free of NaN and ``+inf``
  (log-probabilities may be ``-inf``: a class of probability zero),
  log-probabilities must be normalised over classes, probabilities must be
  non-negative and sum to one, a mask must select at least one point and at
  least ``batch_size`` points. These checks cost one pass over the inputs and
  one small device-to-host transfer, before anything is traced.

Under ``jit`` the value checks cannot run; selections then mark picks made
without a selectable point left as ``valid=False``, and NaN in any floating
input gives NaN scores and ``valid=False`` (`alfx._core.sharding.pool_core`), so
that no plausible pick comes from bad input. `checked` stages the same checks
with ``jax.experimental.checkify`` so that they raise inside ``jit`` too.

Every failure is a ``ValueError`` that names the argument and the expected
shape.
"""

import math
import os
import sys
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from alfx._core.checking import checked  # noqa: F401 (re-exported)
from alfx._core.checking import checks_apart  # noqa: F401 (re-exported)
from alfx._core.checking import flush_checks  # noqa: F401 (re-exported)
from alfx._core.checking import fused_checks  # noqa: F401 (re-exported)
from alfx._core.checking import implied
from alfx._core.checking import is_concrete
from alfx._core.checking import NORMALISATION_TOLERANCE  # noqa: F401
from alfx._core.checking import offer_row_sums  # noqa: F401 (re-exported)
from alfx._core.checking import ROW_SUMS
from alfx._core.checking import run_core  # noqa: F401 (re-exported)
from alfx._core.checking import shared
from alfx._core.checking import to_host  # noqa: F401 (re-exported)
from alfx._core.checking import tolerance
from alfx._core.checking import value_check


def _shape_str(x) -> str:
  return "[" + ", ".join(str(d) for d in np.shape(x)) + "]"


def as_float_array(x, name: str, expected: str) -> jax.Array:
  """Converts to a floating jax array, refusing non-numeric and integer input."""
  if x is None:
    raise ValueError(f"{name} is required, expected shape {expected}.")
  x = x if isinstance(x, jax.Array) else jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"{name} must be a floating array of shape {expected}, got dtype"
      f" {x.dtype}."
    )
  return x


def check_rank(x, name: str, expected: str, rank: int) -> None:
  if x.ndim != rank:
    raise ValueError(
      f"{name} must have shape {expected} (rank {rank}), got shape"
      f" {_shape_str(x)}."
    )


@jax.jit
def _float_stats(x):
  nan = jnp.sum(jnp.isnan(x))
  pos_inf = jnp.sum(x == jnp.inf)
  neg_inf = jnp.sum(x == -jnp.inf)
  return nan, pos_inf, neg_inf


def _finite_stats(x, allow_neg_inf, allow_inf):
  nan, pos_inf, neg_inf = _float_stats(x)
  bad = (
    nan
    + (0 if allow_inf else pos_inf)
    + (0 if allow_neg_inf or allow_inf else neg_inf)
  )
  return bad == 0, dict(nan=nan, pos_inf=pos_inf, neg_inf=neg_inf)


def _finite_quick(x, allow_neg_inf, allow_inf):
  # max and min propagate NaN: one or two plain reductions instead of
  # counting (the counts are only needed for the message).
  hi = jnp.max(x)
  ok = ~jnp.isnan(hi)
  if not allow_inf:
    ok = ok & (hi < jnp.inf)
    if not allow_neg_inf:
      ok = ok & (jnp.min(x) > -jnp.inf)
  return ok


def check_finite(
  x,
  name: str,
  expected: str,
  *,
  allow_neg_inf=False,
  allow_inf=False,
  covered=False,
) -> None:
  """Refuses NaN and +inf (and -inf unless allowed) in ``x``.

  ``covered``: a later check of the same call fails on NaN and +inf too
  (normalisation), so the fused pass need not test for them separately.
  """

  def explain(v):
    found = ", ".join(
      f"{v[k]} {label}"
      for k, label in (("nan", "NaN"), ("pos_inf", "+inf"), ("neg_inf", "-inf"))
      if v[k]
    )
    allowed = (
      " (infinities are allowed)"
      if allow_inf
      else " (or -inf for a zero probability)"
      if allow_neg_inf
      else ""
    )
    return (
      f"{name} (shape {expected}) contains {found}; values must be"
      f" finite{allowed}. Look for a diverged model or a log(0) in"
      " the pipeline that produced it."
    )

  value_check(
    _finite_stats,
    (x,),
    explain,
    f"{name} (shape {expected}) contains {{nan}} NaN, {{pos_inf}}"
    f" +inf and {{neg_inf}} -inf entries; values must be finite"
    + (" or infinite." if allow_inf else " or -inf." if allow_neg_inf else "."),
    quick=implied if covered else _finite_quick,
    params=dict(allow_neg_inf=allow_neg_inf, allow_inf=allow_inf),
  )


def _shape_warning(log_probs, name: str) -> None:
  n, k = log_probs.shape[0], log_probs.shape[1]
  if k > n:
    warnings.warn(
      f"{name} has shape {_shape_str(log_probs)}, read as [N={n}, K={k},"
      f" C]: more posterior samples than pool points. If it is laid out"
      f" [K, N, C] (samples first, as some libraries do), pass"
      f" jnp.swapaxes({name}, 0, 1).",
      stacklevel=_caller_level(),
    )


def _caller_level() -> int:
  """The ``stacklevel`` of the first frame outside alfx (the user's call)."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  frame, level = sys._getframe(1), 1
  while frame is not None and frame.f_code.co_filename.startswith(package):
    frame, level = frame.f_back, level + 1
  return level


def _log_prob_check(lp, tol):
  err, lo, hi, sum_err = _log_prob_stats(lp)
  return err <= tol, dict(err=err, lo=lo, hi=hi, sum_err=sum_err)


def log_prob_quick_bound(tol: float, c: int, dtype) -> float:
  """The quick test's bound on ``max |sum_c exp(lp) - 1|``.

  ``|s - 1| <= 1 - exp(-tol)`` implies ``|log s| <= tol`` in exact
  arithmetic; the margin covers the rounding of both the row sum and the
  precise test's ``logsumexp`` (each ``<= (C + 2) eps`` relative), so that
  a row passing the quick test always passes the precise one.
  """
  eps = float(jnp.finfo(jnp.promote_types(dtype, jnp.float32)).eps)
  return -math.expm1(-tol) - 2 * (c + 4) * eps


def _log_prob_quick(lp, tol):
  # Row sums of exp without the logsumexp shift (or the core's, `share`d),
  # and no statistics for the message (log_prob_quick_bound). NaN and +inf
  # fail it too (a NaN sum compares False).
  bound = log_prob_quick_bound(tol, lp.shape[-1], lp.dtype)
  sums = shared(ROW_SUMS, lp)
  if sums is None:
    lp = lp.astype(jnp.promote_types(lp.dtype, jnp.float32))
    sums = jnp.sum(jnp.exp(lp), axis=-1)
  return jnp.max(jnp.abs(sums - 1)) <= bound


@jax.jit
def _log_prob_stats(lp):
  lp = lp.astype(jnp.promote_types(lp.dtype, jnp.float32))
  lse = jax.nn.logsumexp(lp, axis=-1)
  err = jnp.max(jnp.where(jnp.isfinite(lse), jnp.abs(lse), jnp.inf))
  sum_err = jnp.max(jnp.abs(jnp.sum(lp, axis=-1) - 1))
  return err, jnp.min(lp), jnp.max(lp), sum_err


def _prob_check(p, tol):
  lo, err, lse = _prob_stats(p)
  return (lo >= 0) & (err <= tol), dict(lo=lo, err=err, lse=lse)


def _prob_quick(p, tol):
  # NaN and infinities fail it too.
  p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
  err = jnp.max(jnp.abs(jnp.sum(p, axis=-1) - 1))
  return (jnp.min(p) >= 0) & (err <= tol)


@jax.jit
def _prob_stats(p):
  p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
  return (
    jnp.min(p),
    jnp.max(jnp.abs(jnp.sum(p, axis=-1) - 1)),
    jnp.max(jnp.abs(jax.nn.logsumexp(p, axis=-1))),
  )


@jax.jit
def count_selectable(mask, labeled=None):
  count = jnp.sum(mask, dtype=jnp.int32)
  if labeled is None:
    return count
  return count, jnp.sum(mask & ~labeled, dtype=jnp.int32)


def _selectable_check(mask, labeled=None, *, batch_size):
  count = count_selectable(mask)
  free = count if labeled is None else count_selectable(mask, labeled)[1]
  return free >= batch_size, dict(count=count, free=free)


def check_log_probs(
  log_probs,
  name: str = "log_probs",
  expected: str = "[N, K, C]",
  rank: int = 3,
  pool: bool = True,
) -> jax.Array:
  """Checks predictive log-probabilities, natural log, normalised over the last axis.

  Args:
    log_probs: array of the given rank; the last axis is the class axis.
    name: argument name used in error messages.
    expected: the documented shape, used in error messages.
    rank: required rank.
    pool: axis 0 is the pool (warn when it looks like ``[K, N, C]``).

  Returns:
    ``log_probs`` as a floating jax array.
  """
  log_probs = as_float_array(log_probs, name, expected)
  check_rank(log_probs, name, expected, rank)
  if log_probs.shape[0] == 0:
    raise ValueError(
      f"{name} has an empty pool: shape {_shape_str(log_probs)},"
      f" expected {expected} with N >= 1."
    )
  if any(d == 0 for d in log_probs.shape[1:]):
    raise ValueError(
      f"{name} must have shape {expected} with every axis >= 1,"
      f" got {_shape_str(log_probs)}."
    )
  if pool and rank == 3:
    _shape_warning(log_probs, name)
  check_finite(log_probs, name, expected, allow_neg_inf=True, covered=True)
  tol = tolerance(log_probs.dtype)

  def explain(v):
    off = (
      f"{name} (shape {expected}) must be log-probabilities (natural"
      f" log) normalised over the class axis, logsumexp over C equal to"
      f" 0, but it is off by up to {v['err']:.3g}"
    )
    if v["lo"] >= 0 and v["hi"] <= 1 and v["sum_err"] <= tol:
      return (
        f"{name} looks like probabilities (rows sum to 1, values in"
        f" [0, 1]): {off}; pass jnp.log(probs), or"
        " jax.nn.log_softmax(logits)."
      )
    if v["hi"] > tol:
      return (
        f"{name} looks like logits or scores (values up to"
        f" {v['hi']:.3g}, log-probabilities are <= 0): {off}; pass"
        " jax.nn.log_softmax(logits)."
      )
    return (
      f"{off}; pass jax.nn.log_softmax(logits), not the log of"
      " unnormalised scores."
    )

  value_check(
    _log_prob_check,
    (log_probs,),
    explain,
    f"{name} (shape {expected}) must be log-probabilities normalised"
    " over the class axis, but logsumexp is off by up to {err}; pass"
    " jax.nn.log_softmax(logits).",
    quick=_log_prob_quick,
    params=dict(tol=tol),
  )
  return log_probs


def check_probs(probs, n: int, name: str = "probs") -> jax.Array:
  """Checks class probabilities ``[N, C]``: finite, non-negative, summing to one."""
  expected = f"[N={n}, C]"
  probs = as_float_array(probs, name, expected)
  check_rank(probs, name, expected, 2)
  if probs.shape[0] != n:
    raise ValueError(
      f"{name} must have shape {expected}, got {_shape_str(probs)}."
    )
  if probs.shape[1] == 0:
    raise ValueError(
      f"{name} must have at least one class, got {_shape_str(probs)}."
    )
  check_finite(probs, name, expected, covered=True)
  tol = tolerance(probs.dtype)

  def explain(v):
    msg = (
      f"{name} (shape {expected}) must be probabilities: non-negative"
      f" and summing to 1 over classes (min {v['lo']:.3g}, largest"
      f" deviation of a row sum from 1: {v['err']:.3g})"
    )
    if v["lo"] < 0 and v["lse"] <= tol:
      return f"{msg}; it looks like log-probabilities: pass jnp.exp({name})."
    return f"{msg}; pass jax.nn.softmax(logits)."

  value_check(
    _prob_check,
    (probs,),
    explain,
    f"{name} (shape {expected}) must be probabilities: min {{lo}},"
    " largest deviation of a row sum from 1 {err}.",
    quick=_prob_quick,
    params=dict(tol=tol),
  )
  return probs


def check_matrix(
  x, name: str, n: int | None = None, dim_name: str = "D"
) -> jax.Array:
  """Checks a finite float matrix ``[N, D]`` (embeddings, features)."""
  expected = f"[N{'' if n is None else '=' + str(n)}, {dim_name}]"
  x = as_float_array(x, name, expected)
  check_rank(x, name, expected, 2)
  if n is not None and x.shape[0] != n:
    raise ValueError(f"{name} must have shape {expected}, got {_shape_str(x)}.")
  if x.shape[0] == 0:
    raise ValueError(f"{name} has an empty pool: shape {_shape_str(x)}.")
  check_finite(x, name, expected)
  return x


def check_utilities(utilities, name: str = "utilities") -> jax.Array:
  """Checks per-point utilities ``[N]``; NaN is refused, infinities allowed."""
  expected = "[N]"
  utilities = as_float_array(utilities, name, expected)
  check_rank(utilities, name, expected, 1)
  if utilities.shape[0] == 0:
    raise ValueError(
      f"{name} has an empty pool: shape [0], expected [N], N >= 1."
    )
  check_finite(utilities, name, expected, allow_inf=True)
  return utilities


def check_optional_mask(mask, n: int, name: str = "mask") -> jax.Array | None:
  """`check_mask`, but ``None`` stays ``None`` (every point selectable).

  For cores that build the all-True mask inside their own program
  (`alfx._core.selection.all_selectable`): no eager array op per call.
  """
  return None if mask is None else check_mask(mask, n, name)


def check_mask(
  mask, n: int, name: str = "mask", default: bool = True
) -> jax.Array:
  """Checks a boolean mask ``[N]``; ``None`` becomes all ``default``."""
  if mask is None:
    return jnp.full((n,), default, dtype=bool)
  if not hasattr(mask, "dtype"):
    mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(
      f"{name} must be a boolean array of shape [N={n}], got dtype"
      f" {mask.dtype}: pass {name}.astype(bool) for a 0/1 array, or"
      f" jnp.zeros({n}, bool).at[indices].set(True) for a list of"
      " indices."
    )
  if mask.shape != (n,):
    raise ValueError(f"{name} must have shape [N={n}], got {_shape_str(mask)}.")
  return mask if isinstance(mask, jax.Array) else jnp.asarray(mask)


def check_batch_size(
  batch_size, mask, name: str = "batch_size", *, labeled=None, n=None
) -> int:
  """Checks a static batch size against the selectable points.

  The static part (an ``int`` in ``[1, N]``) is always checked; the count of
  selectable points (``mask``, less ``labeled`` when given) only when the
  masks are concrete. ``mask=None`` (with the pool size ``n``, from
  `check_optional_mask`) selects every point: ``batch_size <= N`` is then
  enough.
  """
  if isinstance(batch_size, bool) or not isinstance(
    batch_size, (int, np.integer)
  ):
    raise ValueError(
      f"{name} must be a static Python int, got {type(batch_size).__name__}."
    )
  batch_size = int(batch_size)
  if mask is None and labeled is not None:
    mask = check_mask(None, labeled.shape[0])
  if mask is not None:
    n = mask.shape[0]
  elif n is None:
    raise TypeError("check_batch_size: mask=None needs the pool size n.")
  if batch_size < 1:
    raise ValueError(f"{name} must be >= 1, got {batch_size}.")
  if batch_size > n:
    raise ValueError(f"{name}={batch_size} is larger than the pool (N={n}).")
  if mask is None:
    return batch_size  # every point selectable: batch_size <= N suffices
  args = (mask,) if labeled is None else (mask, labeled)

  def explain(v):
    if v["count"] == 0:
      return "mask selects no points: the pool of selectable points is empty."
    if v["free"] == 0:
      return (
        f"labeled marks every point that mask selects ({v['count']}):"
        " nothing is left to pick. Labelled points are never picked;"
        " pass labeled=None if nothing is labelled."
      )
    what = (
      "selectable points"
      if labeled is None
      else "selectable, unlabelled points (mask & ~labeled)"
    )
    return (
      f"{name}={batch_size} is larger than the number of {what}:"
      f" {v['free']} of N={n}. Lower {name} or select more points."
    )

  value_check(
    _selectable_check,
    args,
    explain,
    f"{name}={batch_size} is larger than the number of selectable"
    " points ({free}).",
    params=dict(batch_size=batch_size),
  )
  return batch_size


def check_key(key, name: str = "key") -> jax.Array:
  """Checks a PRNG key: a typed key or a raw ``uint32[2]`` key."""
  if key is None:
    raise ValueError(
      f"{name} is required: pass {name}=jax.random.key(seed);"
      " alfx never draws randomness without an explicit key."
    )
  key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(
        f"{name} must be a single PRNG key (shape []), got a"
        f" key array of shape {_shape_str(key)}; split it and"
        " pass one key, or jax.vmap over the keys."
      )
  elif key.dtype != jnp.uint32 or key.shape != (2,):
    raise ValueError(
      f"{name} must be a PRNG key (jax.random.key(seed) or"
      f" jax.random.PRNGKey(seed)), got dtype {key.dtype} and"
      f" shape {_shape_str(key)}."
    )
  return key


def check_positive_int(value, name: str) -> int:
  """A static Python ``int >= 1`` (``None``, floats and arrays refused)."""
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, np.integer))
    or value < 1
  ):
    raise ValueError(f"{name} must be a positive static int, got {value!r}.")
  return int(value)


def check_chunk_size(chunk_size, default: int) -> int:
  """``chunk_size``: ``None`` (the default) or a positive static int."""
  if chunk_size is None:
    return default
  return check_positive_int(chunk_size, "chunk_size")


def check_choice(value, name: str, choices) -> str:
  if value not in choices:
    raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}.")
  return value


def check_scalar(
  value,
  name: str,
  *,
  minimum: float | None = None,
  positive: bool = False,
  optional: bool = False,
  static: bool = False,
) -> Any:
  """The one scalar validator: a real number, traced or static.

  Args:
    value: a Python number or a scalar array (traced values are allowed
      unless ``static``: changing them never recompiles).
    name: the argument's name, for the message.
    minimum: refuse values below this (when concrete).
    positive: refuse values ``<= 0`` (when concrete).
    optional: ``None`` is allowed and returned as is.
    static: must be a concrete Python number (returned as ``float``).

  Returns:
    ``value`` as a float (Python numbers and ``static``) or a scalar array.
  """
  if value is None:
    if optional:
      return None
    raise ValueError(f"{name} is required: a real number, got None.")
  if isinstance(value, bool) or not (
    isinstance(value, (int, float, np.integer, np.floating))
    or hasattr(value, "dtype")
  ):
    raise ValueError(
      f"{name} must be a real number, got {type(value).__name__} {value!r}."
    )
  if hasattr(value, "dtype"):
    # An array scalar (hasattr does not narrow the int | float annotation).
    dtype = value.dtype  # pyright: ignore[reportAttributeAccessIssue]
    if np.ndim(value) != 0:
      raise ValueError(
        f"{name} must be a scalar (shape []), got shape {_shape_str(value)}."
      )
    if not (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
      raise ValueError(f"{name} must be a real number, got dtype {dtype}.")
  if static and not is_concrete(value):
    raise ValueError(
      f"{name} must be a static Python number, not a traced value."
    )
  if is_concrete(value):
    v = float(value)
    bound = (
      "> 0" if positive else f">= {minimum:g}" if minimum is not None else ""
    )
    if (
      not math.isfinite(v)
      or (positive and v <= 0)
      or (minimum is not None and v < minimum)
    ):
      raise ValueError(
        f"{name} must be a finite number{' ' + bound if bound else ''},"
        f" got {v!r}."
      )
    if static or not hasattr(value, "dtype"):
      return v
  return value

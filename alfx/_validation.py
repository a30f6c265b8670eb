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
without a selectable point left as ``valid=False`` instead of failing.

Every failure is a ``ValueError`` that names the argument and the expected
shape.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

#: ``|logsumexp(log_probs, axis=-1)|`` above this is "not normalised".
NORMALISATION_TOLERANCE = 1e-3


def is_concrete(*arrays) -> bool:
  """True when no argument is a tracer (we are not inside jit/vmap/grad)."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _host(fn, *args):
  """Runs a jitted value check on concrete arrays and fetches the result.

  ``ensure_compile_time_eval`` evaluates it eagerly even when a public
  function is called inside someone's trace with concrete (closed-over)
  arrays, where it would otherwise be staged out as a tracer.
  """
  with jax.ensure_compile_time_eval(), _mesh_context(args):
    return jax.device_get(fn(*args))


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
    if isinstance(mesh, jax.sharding.Mesh) and mesh.size > 1 and any(
        t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
      try:
        return jax.set_mesh(mesh)
      except ValueError:  # inside someone's jit (closed-over arrays)
        return contextlib.nullcontext()
  return contextlib.nullcontext()


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
        f" {x.dtype}.")
  return x


def check_rank(x, name: str, expected: str, rank: int) -> None:
  if x.ndim != rank:
    raise ValueError(
        f"{name} must have shape {expected} (rank {rank}), got shape"
        f" {_shape_str(x)}.")


@jax.jit
def _float_stats(x):
  return jnp.any(jnp.isnan(x)), jnp.any(x == jnp.inf), jnp.any(x == -jnp.inf)


@jax.jit
def _normalisation_error(log_probs):
  lse = jax.nn.logsumexp(log_probs, axis=-1)
  return jnp.max(jnp.where(jnp.isfinite(lse), jnp.abs(lse), jnp.inf))


def check_finite(x, name: str, expected: str, *, allow_neg_inf=False) -> None:
  """Refuses NaN and +inf (and -inf unless allowed) on concrete input."""
  if not is_concrete(x) or x.size == 0:
    return
  has_nan, has_pos_inf, has_neg_inf = (
      bool(v) for v in _host(_float_stats, x))
  if has_nan or has_pos_inf or (has_neg_inf and not allow_neg_inf):
    what = "NaN" if has_nan else ("+inf" if has_pos_inf else "-inf")
    raise ValueError(
        f"{name} (shape {expected}) contains {what}; values must be finite"
        + (" (or -inf for a zero probability)." if allow_neg_inf else "."))


def check_log_probs(log_probs, name: str = "log_probs",
                    expected: str = "[N, K, C]", rank: int = 3) -> jax.Array:
  """Checks predictive log-probabilities, natural log, normalised over the last axis.

  Args:
    log_probs: array of the given rank; the last axis is the class axis.
    name: argument name used in error messages.
    expected: the documented shape, used in error messages.
    rank: required rank.

  Returns:
    ``log_probs`` as a floating jax array.
  """
  log_probs = as_float_array(log_probs, name, expected)
  check_rank(log_probs, name, expected, rank)
  if log_probs.shape[0] == 0:
    raise ValueError(f"{name} has an empty pool: shape {_shape_str(log_probs)},"
                     f" expected {expected} with N >= 1.")
  if any(d == 0 for d in log_probs.shape[1:]):
    raise ValueError(f"{name} must have shape {expected} with every axis >= 1,"
                     f" got {_shape_str(log_probs)}.")
  check_finite(log_probs, name, expected, allow_neg_inf=True)
  if is_concrete(log_probs):
    err = float(_host(_normalisation_error, log_probs))
    if not err <= NORMALISATION_TOLERANCE:
      raise ValueError(
          f"{name} (shape {expected}) must be log-probabilities normalised over"
          f" the class axis (logsumexp over C equal to 0), but it is off by up"
          f" to {err:.3g}; pass log_softmax(logits), not logits or"
          f" log(probabilities) of unnormalised scores.")
  return log_probs


def check_probs(probs, n: int, name: str = "probs") -> jax.Array:
  """Checks class probabilities ``[N, C]``: finite, non-negative, summing to one."""
  expected = f"[N={n}, C]"
  probs = as_float_array(probs, name, expected)
  check_rank(probs, name, expected, 2)
  if probs.shape[0] != n:
    raise ValueError(f"{name} must have shape {expected}, got"
                     f" {_shape_str(probs)}.")
  if probs.shape[1] == 0:
    raise ValueError(f"{name} must have at least one class, got"
                     f" {_shape_str(probs)}.")
  check_finite(probs, name, expected)
  if is_concrete(probs):
    lo, err = _host(_prob_stats, probs)
    if float(lo) < 0 or float(err) > NORMALISATION_TOLERANCE:
      raise ValueError(
          f"{name} (shape {expected}) must be probabilities: non-negative and"
          f" summing to 1 over classes (min {float(lo):.3g}, largest deviation"
          f" of a row sum from 1: {float(err):.3g}).")
  return probs


@jax.jit
def _prob_stats(probs):
  return jnp.min(probs), jnp.max(jnp.abs(jnp.sum(probs, axis=-1) - 1))


def check_matrix(x, name: str, n: int | None = None, dim_name: str = "D"
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
    raise ValueError(f"{name} has an empty pool: shape [0], expected [N], N >= 1.")
  if is_concrete(utilities) and bool(_host(_float_stats, utilities)[0]):
    raise ValueError(f"{name} (shape {expected}) contains NaN.")
  return utilities


def check_mask(mask, n: int, name: str = "mask", default: bool = True
               ) -> jax.Array:
  """Checks a boolean mask ``[N]``; ``None`` becomes all ``default``."""
  if mask is None:
    return jnp.full((n,), default, dtype=bool)
  mask = mask if isinstance(mask, jax.Array) else jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(f"{name} must be a boolean array of shape [N={n}], got"
                     f" dtype {mask.dtype}.")
  if mask.shape != (n,):
    raise ValueError(f"{name} must have shape [N={n}], got {_shape_str(mask)}.")
  return mask


def check_batch_size(batch_size, mask, name: str = "batch_size") -> int:
  """Checks a static batch size against the mask of selectable points.

  The static part (an ``int`` in ``[1, N]``) is always checked; the count of
  selectable points only when ``mask`` is concrete.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size,
                                                      (int, np.integer)):
    raise ValueError(f"{name} must be a static Python int, got"
                     f" {type(batch_size).__name__}.")
  batch_size = int(batch_size)
  n = mask.shape[0]
  if batch_size < 1:
    raise ValueError(f"{name} must be >= 1, got {batch_size}.")
  if batch_size > n:
    raise ValueError(f"{name}={batch_size} is larger than the pool (N={n}).")
  if is_concrete(mask):
    count = int(_host(_count, mask))
    if count == 0:
      raise ValueError("mask selects no points: the pool of selectable points"
                       " is empty.")
    if batch_size > count:
      raise ValueError(f"{name}={batch_size} is larger than the number of"
                       f" selectable points ({count} of N={n} in mask).")
  return batch_size


@jax.jit
def _count(mask):
  return jnp.sum(mask)


def check_key(key, name: str = "key") -> jax.Array:
  """Checks a PRNG key: a typed key or a raw ``uint32[2]`` key."""
  if key is None:
    raise ValueError(f"{name} is required: pass a jax.random.key(...); alfx"
                     " never draws randomness without an explicit key.")
  key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"{name} must be a single PRNG key (shape []), got a"
                       f" key array of shape {_shape_str(key)}.")
  elif key.dtype != jnp.uint32 or key.shape != (2,):
    raise ValueError(f"{name} must be a PRNG key (jax.random.key(seed) or"
                     f" jax.random.PRNGKey(seed)), got dtype {key.dtype} and"
                     f" shape {_shape_str(key)}.")
  return key


def check_positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
      or value < 1:
    raise ValueError(f"{name} must be a positive static int, got {value!r}.")
  return int(value)


def check_choice(value, name: str, choices) -> str:
  if value not in choices:
    raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}.")
  return value


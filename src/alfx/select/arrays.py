"""The arrays of ``alfx-select``: saved values in, checked JAX arrays out.

`to_log_probs` turns predictions saved as log-probabilities, probabilities
or logits, laid out ``[N, K, C]``, ``[K, N, C]`` or ``[N, C]``, into one
``float32[N, K, C]`` JAX array of log-probabilities; `to_matrix` does the
same for ``[N, D]`` embeddings and class probabilities. Both read their
input (a `numpy.memmap` from `alfx.select.inputs.load_array`, or any array)
in chunks of rows and check every chunk: NaN and infinities, the class
axis normalised (the message says when the values look like another flag's).

Memory: the file is read once, in chunks, into the one float32 buffer that
becomes the JAX array (on the CPU, JAX shares a NumPy buffer instead of
copying it), so a 4 GB float32 predictions file costs 4 GB of memory plus a
chunk, not 8 GB (measured: a 400 MB ``[500000, 20, 10]`` file, +470 MB at
the peak of reading; ``numpy.load`` then ``jnp.asarray``, +800 MB); the
memory-mapped pages are the operating system's file cache, not the
process's. The acquisition's own working memory comes on top of the array.

May import: jax, numpy, `alfx.select.inputs` (its `InputError`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from alfx.select import inputs

#: Tolerance on ``logsumexp`` (log-probabilities) or the row sum
#: (probabilities) over the class axis, as alfx's own checks use: this, or
#: 8 eps of the saved dtype when larger (float16: 7.8e-3).
TOLERANCE = 1e-3


def tolerance(dtype) -> float:
  """The normalisation tolerance for values saved as ``dtype``.

  Example:
    >>> tolerance(np.float32), tolerance(np.float16)
    (0.001, 0.0078125)
  """
  return max(TOLERANCE, 8 * float(np.finfo(dtype).eps))


#: Elements per chunk while converting (float32: 64 MB).
CHUNK_ELEMENTS = 1 << 24

_KINDS = ("log-probs", "probs", "logits")


def _shape(shape) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_float(x: np.ndarray, flag: str, expected: str) -> None:
  if not np.issubdtype(x.dtype, np.floating):
    raise inputs.InputError(
      f"{flag}: expected floating-point values {expected}, got dtype"
      f" {x.dtype} (from PyTorch: save tensor.float().numpy())."
    )


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = np.max(x, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    return (m + np.log(np.sum(np.exp(x - m), -1, keepdims=True)))[..., 0]


def _first(bad: np.ndarray) -> int:
  """The first pool point (axis 0) with a True anywhere in its rows."""
  return int(np.argmax(bad.reshape(bad.shape[0], -1).any(-1)))


def _at(n: int, k: int, x: np.ndarray) -> str:
  return f"{n}" if x.shape[1] == 1 else f"{n} (sample {k})"


def _convert_chunk(x: np.ndarray, kind: str, flag: str, start: int, tol: float):
  """Log-probabilities of a chunk ``[n, K, C]``; raises on bad values."""
  where = lambda bad: start + _first(bad)
  nan = np.isnan(x)
  if nan.any():
    raise inputs.InputError(
      f"{flag}: contains NaN (first at pool point {where(nan)}); look for"
      " a diverged model or a 0/0 in the code that saved it."
    )
  if np.isposinf(x).any():
    raise inputs.InputError(
      f"{flag}: contains +inf (first at pool point {where(np.isposinf(x))})."
    )
  if kind == "logits":
    lse = _logsumexp(x)
    if np.isneginf(lse).any():
      raise inputs.InputError(
        f"{flag}: every logit is -inf at pool point"
        f" {where(np.isneginf(lse))}: no class has any probability."
      )
    return x - lse[..., None]
  if kind == "probs":
    sums = np.sum(x, -1)
    off = (np.abs(sums - 1) > tol) | (x < -tol).any(-1)
    off |= (x > 1 + tol).any(-1)
    if off.any():
      hint = (
        "they look like log-probabilities (all <= 0): pass --log-probs"
        if (x <= 0).all()
        else "they look like logits: pass --logits"
        if (x < 0).any() or (x > 1).any()
        else "normalise them over the class axis (softmax)"
      )
      i, k = np.argwhere(off)[0]
      raise inputs.InputError(
        f"{flag}: probabilities must lie in [0, 1] and sum to 1 over the"
        f" class axis (within {tol:g}), but at pool point"
        f" {_at(start + i, k, x)} they sum to {float(sums[i, k]):.4g};"
        f" {hint}."
      )
    # Renormalised: a float16 row off by 5e-3 must not fail alfx's float32
    # check (1e-3) after this one passed it.
    with np.errstate(divide="ignore"):
      return np.log(np.clip(x, 0, None) / sums[..., None])
  lse = _logsumexp(x)
  off = ~(np.abs(lse) <= tol)
  if off.any():
    sums = np.sum(x, -1)
    hint = (
      "they look like probabilities (values in [0, 1] summing to 1): pass"
      " --probs"
      if (x >= 0).all() and (np.abs(sums - 1) <= tol).all()
      else "they look like logits (values above 0): pass --logits"
      if (x > tol).any()
      else "pass --logits if they are unnormalised scores"
    )
    i, k = np.argwhere(off)[0]
    raise inputs.InputError(
      f"{flag}: log-probabilities must satisfy logsumexp over the class"
      f" axis = 0 (within {tol:g}), but at pool point"
      f" {_at(start + i, k, x)} it is {float(lse[i, k]):.4g}; {hint}."
    )
  return x - lse[..., None]  # renormalised, as probabilities are


def to_log_probs(
  raw: np.ndarray, kind: str, flag: str, layout: str = "NKC"
) -> jax.Array:
  """``float32[N, K, C]`` log-probabilities from saved predictions.

  Args:
    raw: ``[N, K, C]`` (``layout="NKC"``), ``[K, N, C]`` (``"KNC"``) or
      ``[N, C]`` (one model: ``K = 1``), e.g. from `load_array`.
    kind: ``"log-probs"`` (natural log), ``"probs"`` or ``"logits"``.
    flag: the flag, for messages.
    layout: ``"NKC"`` or ``"KNC"`` (ignored for ``[N, C]``).

  Returns:
    ``float32[N, K, C]`` log-probabilities (log-softmax of logits, log of
    probabilities, a zero probability giving ``-inf``), renormalised over
    the class axis (the rows are checked to be normalised to within
    `tolerance` of the saved dtype first).

  Raises:
    InputError: another rank, an empty axis, non-float values, NaN or
      ``+inf``, probabilities outside ``[0, 1]`` or not summing to 1,
      log-probabilities not normalised (the message says which of the
      other flags the values look like).

  Example:
    >>> p = np.array([[0.5, 0.5], [0.9, 0.1]])  # [N, C]: one model
    >>> lp = to_log_probs(p, "probs", "--probs")
    >>> lp.shape, bool(jnp.allclose(jnp.exp(lp[:, 0]), p))
    ((2, 1, 2), True)
    >>> to_log_probs(2 * p, "probs", "--probs")
    Traceback (most recent call last):
    ...
    alfx.select.inputs.InputError: --probs: probabilities must lie in [0, 1]
    and sum to 1 over the class axis (within 0.001), but at pool point 0
    they sum to 2; they look like logits: pass --logits.
  """
  if kind not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
  if layout not in ("NKC", "KNC"):
    raise ValueError(f"layout must be 'NKC' or 'KNC', got {layout!r}.")
  expected = (
    "[N, K, C] (or [N, C] for one model)"
    if layout == "NKC"
    else "[K, N, C] with --layout KNC (or [N, C] for one model)"
  )
  if raw.ndim not in (2, 3):
    raise inputs.InputError(
      f"{flag}: shape {_shape(raw.shape)} has {raw.ndim} axes; expected"
      f" {expected}: N pool points, K posterior samples, C classes."
    )
  _check_float(raw, flag, expected)
  if raw.ndim == 2:
    view = raw[:, None, :]
  else:
    view = raw if layout == "NKC" else np.swapaxes(raw, 0, 1)
  if 0 in view.shape:
    raise inputs.InputError(
      f"{flag}: shape {_shape(raw.shape)} has an empty axis; expected"
      f" {expected} with N, K, C >= 1."
    )
  n, k, c = view.shape
  out = np.empty((n, k, c), np.float32)
  rows = max(1, CHUNK_ELEMENTS // (k * c))
  compute = np.promote_types(raw.dtype, np.float32)
  for start in range(0, n, rows):
    chunk = np.asarray(view[start : start + rows], dtype=compute)
    out[start : start + rows] = _convert_chunk(
      chunk, kind, flag, start, tolerance(raw.dtype)
    )
  return jnp.asarray(out)


def to_matrix(
  raw: np.ndarray, flag: str, n: int, *, probs: bool = False
) -> jax.Array:
  """``float32[N, D]`` from a ``[N, D]`` array (embeddings, probabilities).

  Args:
    raw: ``[N, D]`` floating-point values.
    flag: the flag, for messages.
    n: the pool's size (the predictions' ``N``).
    probs: the rows are class probabilities (checked to sum to 1).

  Returns:
    ``float32[N, D]``.

  Raises:
    InputError: another rank, another ``N``, non-float, NaN or infinite
      values, rows of ``probs`` not summing to 1.

  Example:
    >>> to_matrix(np.ones((3, 2)), "--embeddings", 3).shape
    (3, 2)
    >>> to_matrix(np.ones((4, 2)), "--embeddings", 3)
    Traceback (most recent call last):
    ...
    alfx.select.inputs.InputError: --embeddings: 4 rows but the predictions
    have N=3 pool points; both must list the same pool in the same order.
  """
  if raw.ndim != 2:
    raise inputs.InputError(
      f"{flag}: shape {_shape(raw.shape)}; expected [N, D] (one row per"
      " pool point)."
    )
  _check_float(raw, flag, "[N, D]")
  if raw.shape[0] != n:
    raise inputs.InputError(
      f"{flag}: {raw.shape[0]} rows but the predictions have N={n} pool"
      " points; both must list the same pool in the same order."
    )
  if raw.shape[1] == 0:
    raise inputs.InputError(
      f"{flag}: shape {_shape(raw.shape)} has D=0 columns."
    )
  tol = tolerance(raw.dtype)
  out = np.empty(raw.shape, np.float32)
  rows = max(1, CHUNK_ELEMENTS // raw.shape[1])
  for start in range(0, n, rows):
    x = np.asarray(raw[start : start + rows])
    bad = ~np.isfinite(x)
    if bad.any():
      raise inputs.InputError(
        f"{flag}: contains NaN or infinite values (first at pool point"
        f" {start + _first(bad)})."
      )
    if probs and (np.abs(x.sum(-1) - 1) > tol).any():
      raise inputs.InputError(
        f"{flag}: rows must be class probabilities summing to 1 (pool"
        f" point {start + _first(np.abs(x.sum(-1) - 1) > tol)} does"
        " not); pass the softmax of the network that gave the embeddings."
      )
    out[start : start + rows] = x
  return jnp.asarray(out)

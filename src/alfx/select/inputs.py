"""Reading the arrays of ``alfx-select``: files in, checked JAX arrays out.

`load_array` opens a ``.npy`` (memory-mapped) or one array of a ``.npz``
(memory-mapped too when the member is stored uncompressed, as `numpy.savez`
writes it); `to_log_probs` turns predictions saved as log-probabilities,
probabilities or logits, laid out ``[N, K, C]``, ``[K, N, C]`` or ``[N, C]``,
into one ``float32[N, K, C]`` JAX array of log-probabilities; `to_matrix`
does the same for ``[N, D]`` embeddings; `read_points` reads a set of pool
points given as a boolean mask or as indices.

Memory: the file is read once, in chunks of rows, into the one float32
buffer that becomes the JAX array (on the CPU, JAX shares a NumPy buffer
instead of copying it), so a 4 GB float32 predictions file costs 4 GB of
memory plus a chunk, not 8 GB (measured: a 400 MB ``[500000, 20, 10]``
file, +470 MB at the peak of reading; ``numpy.load`` then ``jnp.asarray``,
+800 MB); the memory-mapped pages are the operating system's file cache,
not the process's. A compressed ``.npz`` member (`numpy.savez_compressed`)
is decompressed into memory first (one more copy). The acquisition's own
working memory comes on top of the array.

Every malformed input raises `InputError` (a `ValueError`) whose message
names the flag, the file, what is wrong and how to fix it.

May import: jax, numpy (no alfx internals: the checks here are the
command's own, the acquisitions check again).
"""

import os
import re
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

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


class InputError(ValueError):
  """A malformed input file; the message is for the command's user."""


def _split_spec(spec: str) -> tuple[str, str | None]:
  """``"file.npz:name"`` -> ``("file.npz", "name")`` unless the whole
  string is an existing path."""
  m = re.fullmatch(r"(.+\.npz):([^:/\\]+)", spec)
  if m and not os.path.exists(spec):
    return m.group(1), m.group(2)
  return spec, None


def _npz_memmap(path: str, member: str) -> np.ndarray | None:
  """A read-only memory map of an uncompressed ``.npz`` member, or None."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(member)
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
      return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      return None
    offset = f.tell()
  if dtype.hasobject:
    return None
  return np.memmap(
    path,
    dtype=dtype,
    mode="r",
    offset=offset,
    shape=shape,
    order="F" if fortran else "C",
  )


def load_array(spec: str, flag: str, array: str | None = None) -> np.ndarray:
  """One array from a ``.npy`` or ``.npz`` file, memory-mapped when possible.

  Args:
    spec: the path; ``FILE.npz:NAME`` picks the array ``NAME`` of a ``.npz``.
    flag: the command-line flag, for messages (``"--log-probs"``).
    array: the array's name in a ``.npz`` (``--array``); None takes the only
      array.

  Returns:
    A NumPy array (a read-only `numpy.memmap` for ``.npy`` files and
    uncompressed ``.npz`` members).

  Raises:
    InputError: a missing or unreadable file, another extension, a ``.npz``
      with several arrays and no name (the names found are listed), a name
      that is not there.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "preds.npz")
    >>> np.savez(path, pool=np.zeros((4, 2, 3)), test=np.zeros((2, 2, 3)))
    >>> load_array(path + ":test", "--probs").shape
    (2, 2, 3)
    >>> load_array(path, "--probs")
    Traceback (most recent call last):
    ...
    alfx.select.inputs.InputError: --probs: ...preds.npz holds 2 arrays
    (pool, test); pick one with --array NAME or FILE.npz:NAME.
  """
  path, name = _split_spec(spec)
  name = name or array
  if not os.path.exists(path):
    raise InputError(f"{flag}: no such file: {path}.")
  if os.path.isdir(path):
    raise InputError(f"{flag}: {path} is a directory, not a .npy/.npz file.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    if name is not None:
      raise InputError(
        f"{flag}: {path} is a .npy file (one array); --array or :NAME"
        " applies to .npz files only."
      )
    try:
      return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise InputError(
        f"{flag}: {path} is not a readable .npy file ({e}); write it with"
        " numpy.save(path, array)."
      ) from None
  if ext != ".npz":
    raise InputError(
      f"{flag}: {path}: expected a .npy or .npz file (numpy.save /"
      f" numpy.savez), got {ext or 'no extension'!r}. From PyTorch:"
      " numpy.save(path, tensor.cpu().numpy())."
    )
  try:
    with np.load(path, allow_pickle=False) as z:
      names = list(z.files)
      if name is None:
        if len(names) != 1:
          found = ", ".join(names) if names else "none"
          raise InputError(
            f"{flag}: {path} holds {len(names)} arrays ({found}); pick"
            " one with --array NAME or FILE.npz:NAME."
          )
        name = names[0]
      elif name not in names:
        raise InputError(
          f"{flag}: {path} has no array {name!r}; it holds:"
          f" {', '.join(names) or 'none'}."
        )
      mapped = _npz_memmap(path, name + ".npy")
      return mapped if mapped is not None else z[name]
  except InputError:
    raise
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise InputError(
      f"{flag}: {path} is not a readable .npz file ({e}); write it with"
      " numpy.savez(path, name=array)."
    ) from None


def _shape(shape) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_float(x: np.ndarray, flag: str, expected: str) -> None:
  if not np.issubdtype(x.dtype, np.floating):
    raise InputError(
      f"{flag}: expected floating-point values {expected}, got dtype {x.dtype}."
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
    raise InputError(
      f"{flag}: contains NaN (first at pool point {where(nan)}); look for"
      " a diverged model or a 0/0 in the code that saved it."
    )
  if np.isposinf(x).any():
    raise InputError(
      f"{flag}: contains +inf (first at pool point {where(np.isposinf(x))})."
    )
  if kind == "logits":
    lse = _logsumexp(x)
    if np.isneginf(lse).any():
      raise InputError(
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
      raise InputError(
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
    raise InputError(
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
    raise InputError(
      f"{flag}: shape {_shape(raw.shape)} has {raw.ndim} axes; expected"
      f" {expected}: N pool points, K posterior samples, C classes."
    )
  _check_float(raw, flag, expected)
  if raw.ndim == 2:
    view = raw[:, None, :]
  else:
    view = raw if layout == "NKC" else np.swapaxes(raw, 0, 1)
  if 0 in view.shape:
    raise InputError(
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
    raise InputError(
      f"{flag}: shape {_shape(raw.shape)}; expected [N, D] (one row per"
      " pool point)."
    )
  _check_float(raw, flag, "[N, D]")
  if raw.shape[0] != n:
    raise InputError(
      f"{flag}: {raw.shape[0]} rows but the predictions have N={n} pool"
      " points; both must list the same pool in the same order."
    )
  if raw.shape[1] == 0:
    raise InputError(f"{flag}: shape {_shape(raw.shape)} has D=0 columns.")
  tol = tolerance(raw.dtype)
  out = np.empty(raw.shape, np.float32)
  rows = max(1, CHUNK_ELEMENTS // raw.shape[1])
  for start in range(0, n, rows):
    x = np.asarray(raw[start : start + rows])
    bad = ~np.isfinite(x)
    if bad.any():
      raise InputError(
        f"{flag}: contains NaN or infinite values (first at pool point"
        f" {start + _first(bad)})."
      )
    if probs and (np.abs(x.sum(-1) - 1) > tol).any():
      raise InputError(
        f"{flag}: rows must be class probabilities summing to 1 (pool"
        f" point {start + _first(np.abs(x.sum(-1) - 1) > tol)} does"
        " not); pass the softmax of the network that gave the embeddings."
      )
    out[start : start + rows] = x
  return jnp.asarray(out)


def _read_text(path: str, flag: str) -> np.ndarray:
  """Integers from a text/CSV file: one column, or the ``index`` column of
  a file with a header (``alfx-select``'s own CSV output)."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = [ln.strip() for ln in f if ln.strip() and ln[0] != "#"]
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"{flag}: cannot read {path} as text ({e}).") from None
  split = lambda ln: [t for t in re.split(r"[,\s;]+", ln) if t]
  column = None
  if lines and not all(re.fullmatch(r"[+-]?\d+", t) for t in split(lines[0])):
    header = [t.lower() for t in split(lines[0])]
    lines = lines[1:]
    if "index" in header:
      column = header.index("index")
    elif len(header) != 1:
      raise InputError(
        f"{flag}: {path} has a header ({', '.join(header)}) but no"
        " 'index' column; give one integer per line, or a CSV with an"
        " 'index' column."
      )
  values = []
  for number, ln in enumerate(lines, start=2 if column is not None else 1):
    tokens = split(ln)
    picked = tokens if column is None else tokens[column : column + 1]
    for t in picked:
      if not re.fullmatch(r"[+-]?\d+", t):
        raise InputError(
          f"{flag}: {path}: {t!r} (line ~{number}) is not an integer index."
        )
      values.append(int(t))
  return np.asarray(values, np.int64)


def read_points(spec: str, flag: str, n: int) -> np.ndarray:
  """A set of pool points as ``bool[N]``, from a mask or from indices.

  Args:
    spec: a ``.npy``/``.npz`` boolean mask ``[N]`` or integer indices
      ``[L]``, or a text/CSV file of integer indices (separated by commas,
      spaces or newlines; a CSV with a header uses its ``index`` column,
      so ``alfx-select``'s own output can be fed back).
    flag: the flag, for messages.
    n: the pool's size.

  Returns:
    ``bool[N]``, True for the listed points.

  Raises:
    InputError: a mask of another length, an index out of ``[0, N)``,
      non-integer indices, an integer 0/1 array of length N (a mask saved
      as integers: save it as bool).

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labeled.txt")
    >>> _ = open(path, "w").write("0, 3\\n4\\n")
    >>> read_points(path, "--labeled", 5).tolist()
    [True, False, False, True, True]
  """
  path, _ = _split_spec(spec)
  if os.path.splitext(path)[1].lower() in (".npy", ".npz"):
    x = np.asarray(load_array(spec, flag))
  elif not os.path.exists(path):
    raise InputError(f"{flag}: no such file: {path}.")
  else:
    x = _read_text(path, flag)
  if x.ndim != 1:
    raise InputError(
      f"{flag}: shape {_shape(x.shape)}; expected a boolean mask [N={n}] or"
      " a list of integer indices [L]."
    )
  if x.dtype == np.bool_:
    if x.shape[0] != n:
      raise InputError(
        f"{flag}: a boolean mask of length {x.shape[0]}, but the"
        f" predictions have N={n} pool points."
      )
    return x.copy()
  if not np.issubdtype(x.dtype, np.integer):
    raise InputError(
      f"{flag}: dtype {x.dtype}; expected a boolean mask [N={n}] or"
      " integer indices (e.g. numpy.save(path, indices.astype(int)))."
    )
  if x.shape[0] == n and n > 2 and set(np.unique(x).tolist()) <= {0, 1}:
    raise InputError(
      f"{flag}: {n} integer values, all 0 or 1: this looks like a mask"
      " saved as integers; save it as bool (mask.astype(bool)), or list"
      " the indices."
    )
  bad = (x < 0) | (x >= n)
  if bad.any():
    raise InputError(
      f"{flag}: index {int(x[bad][0])} is outside the pool [0, {n})."
    )
  out = np.zeros(n, bool)
  out[x] = True
  return out

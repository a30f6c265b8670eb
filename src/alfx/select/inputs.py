"""Reading the files of ``alfx-select``: one array per flag, memory-mapped.

`load_array` opens a ``.npy`` (memory-mapped) or one array of a ``.npz``
(memory-mapped too when the member is stored uncompressed, as `numpy.savez`
writes it; a compressed member, `numpy.savez_compressed`, is read into
memory); `read_points` reads a set of pool points given as a boolean mask or
as indices (``.npy``, or a text/CSV file). `alfx.select.arrays` turns what
`load_array` returns into checked JAX arrays.

Every malformed input raises `InputError` (a `ValueError`) whose message
names the flag, the file, what is wrong and how to fix it.

May import: numpy (no alfx internals: the checks here are the command's
own, the acquisitions check again).
"""

import os
import re
import struct
import zipfile

import numpy as np


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

"""Image files as distributed: IDX (MNIST, Fashion-MNIST) and CIFAR-10 batches.

The readers parse the files with NumPy and the standard library only:

* `read_idx`: the IDX format of MNIST and Fashion-MNIST, gzipped or not
  (told apart by the gzip magic bytes, not by the name).
* `read_cifar_batch`: one pickled batch of ``cifar-10-batches-py``, unpickled
  by a restricted unpickler that builds NumPy arrays, lists and dicts only
  (a pickle can run code: an unexpected one is refused, not run).
* `extract_cifar`: the batches out of ``cifar-10-python.tar.gz``.

Where the files are, and their download: `alfx.experiment.downloads`.

May import: numpy and the standard library.
"""

import gzip
import os
import pickle
import shutil
import tarfile

import numpy as np

#: The folder inside the CIFAR-10 archive and the batches read from it.
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"

# IDX type codes (the third magic byte) and their big-endian dtypes.
_IDX_DTYPES = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    try:
      return gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(
        f"{path}: a damaged gzip file ({e}); delete it and place a fresh"
        " copy (or load with download=True / --download)."
      ) from e
  return data


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
  """An array from the bytes of an IDX file (already decompressed).

  The header: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8,
  ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the
  number of dimensions, then each dimension as a big-endian uint32; the
  values follow, big-endian, row-major.

  Args:
    data: the file's bytes.
    where: the file's name, for error messages.

  Returns:
    The array, shape the header's dimensions, in native byte order.

  Raises:
    ValueError: a header that is not IDX, or a size that does not match it.

  Example:
    >>> from alfx.experiment import images
    >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") * 2
    >>> images.parse_idx(header + bytes([1, 2, 3, 4])).tolist()
    [[1, 2], [3, 4]]
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(
      f"{where}: not an IDX file (the first two bytes must be zero, got"
      f" {data[:4].hex() or 'an empty file'}); expected MNIST-format files"
      " such as train-images-idx3-ubyte(.gz)."
    )
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise ValueError(
      f"{where}: unknown IDX type code 0x{code:02x} (valid: "
      + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
      + "); the file is damaged or not an IDX file."
    )
  offset = 4 + 4 * ndim
  if ndim == 0 or len(data) < offset:
    raise ValueError(
      f"{where}: an IDX header with {ndim} dimensions needs {offset} bytes,"
      f" the file has {len(data)}; the file is truncated or damaged."
    )
  shape = tuple(
    int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(
      f"{where}: the IDX header says shape {list(shape)} ({expected} bytes"
      f" of {dtype.name}) but {len(data) - offset} bytes follow; the file"
      " is truncated or damaged: delete it and place a fresh copy."
    )
  array = np.frombuffer(data, dtype, offset=offset).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
  """An IDX file (``.gz`` or not) as an array; see `parse_idx`.

  Example:
    >>> import gzip, os, tempfile
    >>> from alfx.experiment import images
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> with gzip.open(path, "wb") as f:
    ...   _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    >>> images.read_idx(path).tolist()
    [7, 0, 9]
  """
  return parse_idx(_read_bytes(path), path)


class _ArraysOnly(pickle.Unpickler):
  """Unpickles dicts, lists, bytes and NumPy arrays; refuses anything else."""

  ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(
        f"refusing to unpickle {module}.{name}: a CIFAR batch holds only"
        " arrays, lists and dicts"
      )
    return super().find_class(module, name)


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 python batch: images ``uint8[n, 32, 32, 3]``, labels.

  The batch is a pickled dict with ``b"data"`` (``uint8[n, 3072]``, each row
  the red, green and blue planes of a 32x32 image) and ``b"labels"``
  (``n`` ints); the images are returned channels-last (NHWC).

  Args:
    path: e.g. ``.../cifar-10-batches-py/data_batch_1``.

  Returns:
    ``(images uint8[n, 32, 32, 3], labels int32[n])``.

  Raises:
    ValueError: not a CIFAR-10 batch (with what was found instead).

  Example:
    >>> import os, pickle, tempfile
    >>> from alfx.experiment import images
    >>> path = os.path.join(tempfile.mkdtemp(), "data_batch_1")
    >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 5]}
    >>> with open(path, "wb") as f:
    ...   pickle.dump(batch, f, protocol=2)
    >>> x, y = images.read_cifar_batch(path)
    >>> x.shape, y.tolist()
    ((2, 32, 32, 3), [3, 5])
  """
  try:
    with open(path, "rb") as f:
      batch = _ArraysOnly(f, encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise ValueError(
      f"{path}: not a CIFAR-10 python batch ({e}); delete it and place a"
      " fresh copy (or load with download=True / --download)."
    ) from e
  if not isinstance(batch, dict):
    raise ValueError(
      f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels', got"
      f" a {type(batch).__name__}."
    )
  batch = {
    k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()
  }
  if "data" not in batch or "labels" not in batch:
    raise ValueError(
      f"{path}: a CIFAR-10 batch needs b'data' and b'labels', found"
      f" {sorted(map(str, batch))}."
    )
  data = np.asarray(batch["data"])
  labels = np.asarray(batch["labels"])
  if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
    raise ValueError(
      f"{path}: b'data' must be uint8 [n, 3072] (3 x 32 x 32 per row), got"
      f" {data.dtype} {list(data.shape)}."
    )
  if labels.shape != (data.shape[0],) or not np.issubdtype(
    labels.dtype, np.integer
  ):
    raise ValueError(
      f"{path}: b'labels' must be {data.shape[0]} integers, got"
      f" {labels.dtype} {list(labels.shape)}."
    )
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def extract_cifar(archive: str, folder: str) -> None:
  """Extracts the batches of ``cifar-10-python.tar.gz`` into ``folder``.

  Only the regular files ``cifar-10-batches-py/<batch>`` are written (no
  links, no paths outside ``folder``).

  Example:
    >>> import io, os, pickle, tarfile, tempfile
    >>> from alfx.experiment import images
    >>> folder = tempfile.mkdtemp()
    >>> archive = os.path.join(folder, "cifar-10-python.tar.gz")
    >>> blob = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
    ...                      b"labels": [0]}, protocol=2)
    >>> with tarfile.open(archive, "w:gz") as tar:
    ...   info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    ...   info.size = len(blob)
    ...   tar.addfile(info, io.BytesIO(blob))
    >>> images.extract_cifar(archive, folder)
    >>> os.listdir(os.path.join(folder, "cifar-10-batches-py"))
    ['test_batch']
  """
  keep = {f"{CIFAR_FOLDER}/{b}" for b in CIFAR_TRAIN + (CIFAR_TEST,)}
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for member in tar.getmembers():
        if member.name not in keep or not member.isfile():
          continue
        target = os.path.join(folder, *member.name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        with source, open(target + ".part", "wb") as out:
          shutil.copyfileobj(source, out)
        os.replace(target + ".part", target)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ValueError(
      f"{archive}: not a readable cifar-10-python.tar.gz ({e}); delete it"
      " and download it again."
    ) from e

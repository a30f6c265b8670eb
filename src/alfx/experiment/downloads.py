"""Where the image datasets' files are: the cache, the mirrors, the download.

`load_raw` reads a dataset's official train/test split as stored.
`find_files` looks for a dataset's files in a local folder and, with
``download_missing=True``, fetches the missing ones from their canonical
mirrors (`SOURCES`), checks their SHA-256 while streaming, and moves a file
into place only when the checksum matches. Offline and without the files,
the error names every file and the full path to place it at.

The cache (`default_data_dir`): ``$ALFX_DATA_DIR``, else
``$XDG_CACHE_HOME/alfx/datasets``, else ``~/.cache/alfx/datasets``; each
dataset in its own folder (``mnist/``, ``fashion-mnist/``, ``cifar10/``).

May import: numpy, the standard library, `alfx.experiment.images` (the
file formats).
"""

from collections.abc import Callable
from collections.abc import Sequence
import hashlib
import http.client
import os
import tempfile
from typing import Any
from typing import NamedTuple
import urllib.error
import urllib.request

import numpy as np

from alfx.experiment import images

#: Seconds a download may wait for the server before it fails.
DOWNLOAD_TIMEOUT = 60.0


class RemoteFile(NamedTuple):
  """One distributed file: its name and the SHA-256 of its bytes.

  Example:
    >>> from alfx.experiment import downloads
    >>> downloads.SOURCES["mnist"].files[0].name
    'train-images-idx3-ubyte.gz'
  """

  name: str
  sha256: str


class Source(NamedTuple):
  """Where a dataset is downloaded from: base URLs tried in order, files."""

  mirrors: tuple[str, ...]
  files: tuple[RemoteFile, ...]


_IDX_NAMES = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)

#: The canonical files and their SHA-256 (the same digests torchvision,
#: tensorflow-datasets and others pin; MD5s in torchvision: MNIST
#: f68b3c2d..., Fashion-MNIST 8d4fb7e6..., CIFAR-10 c58f3010...).
SOURCES = {
  "mnist": Source(
    (
      "https://ossci-datasets.s3.amazonaws.com/mnist/",
      "https://storage.googleapis.com/cvdf-datasets/mnist/",
      "http://yann.lecun.com/exdb/mnist/",
    ),
    tuple(
      RemoteFile(name + ".gz", digest)
      for name, digest in zip(
        _IDX_NAMES,
        (
          "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
          "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
          "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
          "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        strict=True,
      )
    ),
  ),
  "fashion-mnist": Source(
    (
      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/"
      "master/data/fashion/",
    ),
    tuple(
      RemoteFile(name + ".gz", digest)
      for name, digest in zip(
        _IDX_NAMES,
        (
          "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
          "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
          "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
          "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
        strict=True,
      )
    ),
  ),
  "cifar10": Source(
    ("https://www.cs.toronto.edu/~kriz/",),
    (
      RemoteFile(
        "cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
      ),
    ),
  ),
}


def default_data_dir() -> str:
  """The dataset cache: ``$ALFX_DATA_DIR``, else the XDG cache, else ~.

  Example:
    >>> from alfx.experiment import downloads
    >>> downloads.default_data_dir().endswith("datasets")
    True
  """
  explicit = os.environ.get("ALFX_DATA_DIR")
  if explicit:
    return os.path.expanduser(explicit)
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"
  )
  return os.path.join(cache, "alfx", "datasets")


def sha256_of(path: str) -> str:
  """The SHA-256 of a file's bytes (lowercase hex).

  Example:
    >>> import os, tempfile
    >>> from alfx.experiment import downloads
    >>> path = os.path.join(tempfile.mkdtemp(), "empty")
    >>> open(path, "wb").close()
    >>> downloads.sha256_of(path)[:16]
    'e3b0c44298fc1c14'
  """
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download(
  urls: Sequence[str],
  path: str,
  sha256: str,
  *,
  timeout: float = DOWNLOAD_TIMEOUT,
  opener: Callable[..., Any] = urllib.request.urlopen,
) -> str:
  """Fetches ``path`` from the first of ``urls`` that answers; checks SHA-256.

  The bytes stream into a temporary file beside ``path``, hashed on the way;
  the file is moved into place only when the digest matches. A mismatch, an
  interruption or an error leaves nothing behind.

  Args:
    urls: full URLs of the same file, tried in order (network errors move
      on to the next; a checksum mismatch stops at once).
    path: where the file goes.
    sha256: the expected digest (hex).
    timeout: seconds each connection may wait.
    opener: ``opener(url, timeout=...)`` returning a readable response
      (``urllib.request.urlopen``; tests pass their own).

  Returns:
    ``path``.

  Raises:
    ValueError: the checksum does not match, or no URL answered.

  Example:
    >>> import os, pathlib, tempfile
    >>> from alfx.experiment import downloads
    >>> folder = tempfile.mkdtemp()
    >>> source = pathlib.Path(folder, "source.bin")
    >>> _ = source.write_bytes(b"")
    >>> out = downloads.download([source.as_uri()],
    ...                          os.path.join(folder, "f"),
    ...                          downloads.sha256_of(str(source)))
    >>> os.path.getsize(out)
    0
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  errors = []
  for url in urls:
    fd, part = tempfile.mkstemp(
      prefix=os.path.basename(path) + ".", suffix=".part", dir=folder
    )
    try:
      digest = hashlib.sha256()
      with os.fdopen(fd, "wb") as out:
        try:
          with opener(url, timeout=timeout) as response:
            for block in iter(lambda r=response: r.read(1 << 20), b""):
              digest.update(block)
              out.write(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
          errors.append(f"{url}: {e}")
          continue
      if digest.hexdigest() != sha256.lower():
        raise ValueError(
          f"{url}: SHA-256 {digest.hexdigest()} does not match the expected"
          f" {sha256}; the download was discarded (nothing written at"
          f" {path}). The mirror may serve a different file: place a"
          " verified copy there by hand."
        )
      os.replace(part, path)
      return path
    finally:
      if os.path.exists(part):
        os.remove(part)
  raise ValueError(
    f"could not download {os.path.basename(path)}: "
    + "; ".join(errors)
    + f". Place the file at {path} by hand."
  )


def _missing_message(name, folder, missing, root):
  """Every missing file with its full path, and the ways to provide it."""
  cifar = name == "cifar10"
  paths = [
    os.path.join(folder, images.CIFAR_FOLDER, m)
    if cifar
    else os.path.join(folder, m + ".gz")
    for m in missing
  ]
  listing = "\n".join(f"  {p}" for p in paths)
  alternative = (
    f"\n(or the archive {os.path.join(folder, SOURCES[name].files[0].name)},"
    " extracted on first use)"
    if cifar
    else " (gzipped or not)"
  )
  return (
    f"dataset {name!r}: these files are missing:\n{listing}{alternative}.\n"
    f"Download them with --download (download=True in Python; checked by"
    f" SHA-256), place them there by hand, or point --data-dir at a folder"
    f" that holds them (looked in {folder} and {root})."
  )


def find_files(
  name: str,
  wanted: Sequence[str],
  data_dir: str | None = None,
  *,
  download_missing: bool = False,
  opener: Callable[..., Any] = urllib.request.urlopen,
) -> dict[str, str]:
  """The local paths of a dataset's files, downloading them if asked.

  Looks in ``data_dir/<name>/`` and then in ``data_dir`` itself (default
  `default_data_dir`); an IDX file may be gzipped (``.gz``) or not.

  Args:
    name: a key of `SOURCES` (``"mnist"``, ``"fashion-mnist"``,
      ``"cifar10"``).
    wanted: the file names without ``.gz`` (IDX) or the batch names
      (CIFAR-10, inside ``cifar-10-batches-py/``).
    data_dir: the root folder.
    download_missing: fetch what is missing from `SOURCES` (checked by
      SHA-256) into ``data_dir/<name>/``.
    opener: passed to `download`.

  Returns:
    ``{wanted name: path}``.

  Raises:
    ValueError: files missing and ``download_missing`` false (the message
      lists every file with its full path), or a failed download.

  Example:
    >>> import tempfile
    >>> from alfx.experiment import downloads
    >>> try:
    ...   downloads.find_files("mnist", ["t10k-labels-idx1-ubyte"],
    ...                     tempfile.mkdtemp())
    ... except ValueError as e:
    ...   print(str(e).splitlines()[0])
    dataset 'mnist': these files are missing:
  """
  root = os.path.expanduser(data_dir or default_data_dir())
  home = os.path.join(root, name)
  cifar = name == "cifar10"

  def locate():
    found = {}
    for folder in (home, root):
      for w in wanted:
        if w in found:
          continue
        options = (
          [os.path.join(folder, images.CIFAR_FOLDER, w)]
          if cifar
          else [os.path.join(folder, w + ".gz"), os.path.join(folder, w)]
        )
        for option in options:
          if os.path.isfile(option):
            found[w] = option
            break
    return found

  found = locate()
  if len(found) == len(wanted):
    return found
  archive = os.path.join(home, SOURCES["cifar10"].files[0].name)
  if cifar and os.path.isfile(archive):
    images.extract_cifar(archive, home)
    found = locate()
    if len(found) == len(wanted):
      return found
  if not download_missing:
    missing = [w for w in wanted if w not in found]
    raise ValueError(_missing_message(name, home, missing, root))
  source = SOURCES[name]
  for remote in source.files:
    target = os.path.join(home, remote.name)
    stem = remote.name.removesuffix(".gz")
    if not cifar and stem not in wanted:
      continue
    if not cifar and stem in found:
      continue
    download(
      [m + remote.name for m in source.mirrors],
      target,
      remote.sha256,
      opener=opener,
    )
  if cifar:
    images.extract_cifar(archive, home)
  found = locate()
  missing = [w for w in wanted if w not in found]
  if missing:
    raise ValueError(_missing_message(name, home, missing, root))
  return found


def _idx_split(files, images_name, labels_name, classes):
  x = images.read_idx(files[images_name])
  y = images.read_idx(files[labels_name])
  if x.ndim != 3 or x.dtype != np.uint8:
    raise ValueError(
      f"{files[images_name]}: expected uint8 images [N, H, W], got"
      f" {x.dtype} {list(x.shape)}; is this an images file?"
    )
  if y.ndim != 1 or len(y) != len(x):
    raise ValueError(
      f"{files[labels_name]}: expected {len(x)} labels [N] to match"
      f" {files[images_name]}, got shape {list(y.shape)}."
    )
  if y.size and (y.min() < 0 or y.max() >= classes):
    raise ValueError(
      f"{files[labels_name]}: labels must be in [0, {classes}), got"
      f" {int(y.min())}..{int(y.max())}."
    )
  return x, y.astype(np.int32)


def load_raw(
  name: str, data_dir: str | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A dataset's official split as read from its files, unprocessed.

  Args:
    name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    data_dir: the root folder (see `find_files`).
    download: fetch missing files (checked by SHA-256).

  Returns:
    ``(train_x uint8[N, H, W, C], train_y int32[N], test_x, test_y)``.

  Raises:
    ValueError: missing files (with where to place them), or files that do
      not parse or do not belong together.

  Example:
    >>> import tempfile
    >>> from alfx.experiment import downloads
    >>> try:
    ...   downloads.load_raw("fashion-mnist", tempfile.mkdtemp())
    ... except ValueError as e:
    ...   print(str(e).splitlines()[0])
    dataset 'fashion-mnist': these files are missing:
  """
  if name == "cifar10":
    batches = images.CIFAR_TRAIN + (images.CIFAR_TEST,)
    files = find_files(name, batches, data_dir, download_missing=download)
    train = [images.read_cifar_batch(files[b]) for b in images.CIFAR_TRAIN]
    test_x, test_y = images.read_cifar_batch(files[images.CIFAR_TEST])
    train_x = np.concatenate([b[0] for b in train])
    train_y = np.concatenate([b[1] for b in train])
    for where, labels in ((name + " train", train_y), (name + " test", test_y)):
      if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise ValueError(f"{where} labels must be in [0, 10).")
    return train_x, train_y, test_x, test_y
  stems = [f.name.removesuffix(".gz") for f in SOURCES[name].files]
  files = find_files(name, stems, data_dir, download_missing=download)
  train_x, train_y = _idx_split(files, stems[0], stems[1], 10)
  test_x, test_y = _idx_split(files, stems[2], stems[3], 10)
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(
      f"{name}: train images are {list(train_x.shape[1:])}, test images"
      f" {list(test_x.shape[1:])}; the files do not belong together."
    )
  return train_x[..., None], train_y, test_x[..., None], test_y

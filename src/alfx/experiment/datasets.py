"""The experiment's data: digits, MNIST, Fashion-MNIST, CIFAR-10, ``.npz``.

Built in (``--datasets``): ``digits``, scikit-learn's bundled 8x8
handwritten digits (no download), and ``repeated-digits``, each pool image
three times with Gaussian noise (the Repeated-MNIST setting of the BatchBALD
paper in miniature). Both use one fixed split (`DATA_SEED`): every
experiment seed sees the same pool and test set.

Image datasets, read from local files (``data_dir``, default the cache of
`alfx.experiment.downloads.default_data_dir`, each in its own folder), fetched
and checked by SHA-256 only with ``download=True``:

* ``mnist``, ``fashion-mnist``: the four IDX files
  (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; gzipped or
  not) in ``<data_dir>/mnist/`` or ``<data_dir>/fashion-mnist/``; 60,000
  pool and 10,000 test images ``[28, 28, 1]``.
* ``cifar10``: ``<data_dir>/cifar10/cifar-10-batches-py/`` with
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (or the archive
  ``cifar-10-python.tar.gz`` in ``<data_dir>/cifar10/``, extracted on first
  use); 50,000 pool and 10,000 test images ``[32, 32, 3]``.
* ``repeated-mnist``: MNIST's training images, each three times with
  independent N(0, 0.1) noise (`load_image_data`).

The official train/test split is kept; ``subsample`` (``test_subsample``)
keeps that many training (test) images, drawn once with `DATA_SEED`, for
runs that must fit a CPU.

User data (``--data FILE.npz``): ``x`` (features ``[N, D]`` or images
``[N, H, W(, C)]``, flattened; the image shape is kept in
`Dataset.image_shape`) and integer ``y`` ``[N]``; optional
``x_test``/``y_test`` (else ``test_fraction`` of the points is held out).
Precomputed embeddings of a frozen backbone with ``--model linear`` is the
Fast-Fishing setting (train only the last layer).

Every loader returns a `Dataset` of NumPy arrays, standardised with the
pool's statistics (one global mean and scale; per channel for CIFAR-10);
the examples and benchmarks load their data here too.

May import: numpy, `alfx.experiment.images`,
`alfx.experiment.downloads`, scikit-learn (inside
`load_digits_data` only), jax and `alfx` (inside `loop_data` only).
"""

import dataclasses
import os
from typing import Any

import numpy as np

from alfx.experiment import downloads

#: The built-in datasets, all run by default.
DEFAULT_DATASETS = ("digits", "repeated-digits")
#: Image datasets read from files (`load_image_data`).
IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "repeated-mnist")
#: Every name `load_dataset` knows.
DATASET_NAMES = DEFAULT_DATASETS + IMAGE_DATASETS
#: Fixed data split seed: every experiment seed sees the same pool and test set.
DATA_SEED = 0
DIGITS_TEST_SIZE = 500
REPEATS = 3
REPEAT_NOISE = 0.1  # in units of the (globally standardised) pixel scale


@dataclasses.dataclass
class Dataset:
  """A pool and a test set, as NumPy arrays.

  Attributes:
    name: the dataset's name.
    pool_x: ``float32[N, D]`` features or ``float32[N, H, W, C]`` images
      (channels last).
    pool_y: ``int32[N]`` labels.
    test_x: ``float32[M, ...]``, the same layout as ``pool_x``.
    test_y: ``int32[M]``.
    num_classes: ``C``.
    image_shape: ``(H, W, C)`` when the points are images (stored as such or
      flattened), for models that need it (``--model cnn``); None for plain
      features.

  Example:
    >>> from alfx.experiment import datasets
    >>> d = datasets.Dataset("toy", np.zeros((4, 2), np.float32),
    ...                      np.array([0, 1, 0, 1], np.int32),
    ...                      np.zeros((2, 2), np.float32),
    ...                      np.array([0, 1], np.int32), 2)
    >>> d.input_shape, d.image_shape
    ((2,), None)
  """

  name: str
  pool_x: np.ndarray
  pool_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  image_shape: tuple[int, ...] | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one point as stored: ``(D,)`` or ``(H, W, C)``."""
    return tuple(self.pool_x.shape[1:])


def _standardise(pool_x, test_x):
  """One global mean and scale from the pool (keeps images' pixel geometry)."""
  mean, std = float(pool_x.mean()), float(pool_x.std())
  std = std if std > 0 else 1.0
  return ((pool_x - mean) / std).astype(np.float32), (
    (test_x - mean) / std
  ).astype(np.float32)


def subsample_indices(n: int, size: int | None, name: str) -> np.ndarray:
  """Sorted indices of ``size`` of ``n`` points, drawn with `DATA_SEED`.

  ``size=None`` (or ``size >= n``) keeps all ``n``. The draw depends only
  on ``n`` and ``size``: every run sees the same subset.

  Example:
    >>> from alfx.experiment import datasets
    >>> datasets.subsample_indices(10, 3, "subsample").tolist()
    [1, 4, 8]
  """
  if size is None:
    return np.arange(n)
  if isinstance(size, bool) or not isinstance(size, int | np.integer):
    raise ValueError(f"{name} must be an int or None, got {size!r}.")
  if size < 1:
    raise ValueError(f"{name} must be >= 1 (or None for all), got {size}.")
  if size >= n:
    return np.arange(n)
  rng = np.random.default_rng([DATA_SEED, n, size])
  return np.sort(rng.choice(n, size, replace=False))


def load_digits_data(
  repeated: bool = False,
  *,
  subsample: int | None = None,
  test_subsample: int | None = None,
) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images, 10 classes, no download).

  500 images are the test set, the other 1297 the pool. ``repeated``: the
  pool holds every image ``REPEATS`` times, each copy with independent
  Gaussian noise of standard deviation ``REPEAT_NOISE`` (after global
  standardisation, as Repeated-MNIST adds N(0, 0.1) to normalised MNIST):
  a batch of near-copies teaches little more than one of them. The points
  are flat ``[64]``; ``image_shape`` is ``(8, 8, 1)``.

  Args:
    repeated: build ``repeated-digits``.
    subsample: keep this many pool images (before the repetition).
    test_subsample: keep this many test images.

  Returns:
    The `Dataset`.

  Example:
    >>> from alfx.experiment import datasets
    >>> d = datasets.load_digits_data(subsample=100)
    >>> d.pool_x.shape, d.test_x.shape, d.image_shape
    ((100, 64), (500, 64), (8, 8, 1))
  """
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(DATA_SEED)
  perm = rng.permutation(len(x))
  test, pool = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
  pool = pool[subsample_indices(len(pool), subsample, "subsample")]
  test = test[subsample_indices(len(test), test_subsample, "test_subsample")]
  pool_x, test_x = _standardise(
    x[pool].astype(np.float32), x[test].astype(np.float32)
  )
  pool_y = y[pool].astype(np.int32)
  if repeated:
    pool_x, pool_y = _repeat(pool_x, pool_y, rng, np.float64)
  return Dataset(
    "repeated-digits" if repeated else "digits",
    pool_x,
    pool_y,
    test_x,
    y[test].astype(np.int32),
    10,
    (8, 8, 1),
  )


def _repeat(pool_x, pool_y, rng, dtype: Any = np.float32):
  """``REPEATS`` copies of the pool, each plus N(0, ``REPEAT_NOISE``).

  The noise is drawn in ``dtype``: the digits keep their float64 draws (so
  their pool is what it always was); MNIST's are float32 and written in
  place, so the peak memory is the pool and its copies, nothing more.
  """
  n = len(pool_x)
  out = np.empty((REPEATS * n, *pool_x.shape[1:]), np.float32)
  for k in range(REPEATS):
    copy = out[k * n : (k + 1) * n]
    if dtype == np.float32:
      rng.standard_normal(dtype=np.float32, out=copy)
      copy *= np.float32(REPEAT_NOISE)
      copy += pool_x
    else:
      copy[...] = pool_x + REPEAT_NOISE * rng.standard_normal(pool_x.shape)
  return out, np.tile(pool_y, REPEATS)


def load_image_data(
  name: str,
  *,
  data_dir: str | None = None,
  download: bool = False,
  subsample: int | None = None,
  test_subsample: int | None = None,
) -> Dataset:
  """MNIST, Fashion-MNIST, CIFAR-10 or Repeated-MNIST from local files.

  Images are scaled to [0, 1] and standardised with the pool's statistics
  (MNIST and Fashion-MNIST: one mean and scale, close to MNIST's usual
  0.1307 and 0.3081; CIFAR-10: per channel), channels last.

  ``repeated-mnist`` is Repeated-MNIST of Kirsch, van Amersfoort and Gal,
  "BatchBALD: Efficient and Diverse Batch Acquisition for Deep Bayesian
  Active Learning" (NeurIPS 2019, arXiv:1906.08158): the pool holds every
  MNIST training image three times, each copy plus independent Gaussian
  noise of standard deviation 0.1 drawn once with `DATA_SEED`. The noise is
  added to the standardised pixels, as their reference implementation adds
  N(0, 0.1) after normalising with MNIST's mean and scale; the pool is the
  three copies one after another (``pool[k * N + i]`` is copy ``k`` of
  image ``i``). The test set is MNIST's, without noise.

  Args:
    name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or
      ``"repeated-mnist"``.
    data_dir: the root folder (default
      `alfx.experiment.downloads.default_data_dir`); the files are looked for
      in ``<data_dir>/<name>/`` (``mnist/`` for ``repeated-mnist``), then
      in ``<data_dir>`` itself.
    download: fetch missing files from the canonical mirrors (checked by
      SHA-256); otherwise a missing file raises a ``ValueError`` that lists
      the full paths to place them at.
    subsample: keep this many training images (drawn once with
      `DATA_SEED`, before the repetition of ``repeated-mnist``).
    test_subsample: keep this many test images.

  Returns:
    The `Dataset`, ``pool_x`` ``float32[N, H, W, C]``.

  Example:
    >>> import tempfile
    >>> from alfx.experiment import datasets
    >>> try:
    ...   datasets.load_image_data("cifar10", data_dir=tempfile.mkdtemp())
    ... except ValueError as e:
    ...   print(str(e).splitlines()[0])
    dataset 'cifar10': these files are missing:
  """
  if name not in IMAGE_DATASETS:
    raise ValueError(
      f"unknown image dataset {name!r}; valid: {', '.join(IMAGE_DATASETS)}."
    )
  source = "mnist" if name == "repeated-mnist" else name
  try:
    train_x, train_y, test_x, test_y = downloads.load_raw(
      source, data_dir, download
    )
  except ValueError as e:
    if source == name:
      raise
    raise ValueError(f"{name} is built from MNIST's files. {e}") from e
  keep = subsample_indices(len(train_x), subsample, "subsample")
  keep_test = subsample_indices(len(test_x), test_subsample, "test_subsample")
  pool_x = train_x[keep].astype(np.float32)
  test_x = test_x[keep_test].astype(np.float32)
  pool_x /= 255
  test_x /= 255
  axes = (0, 1, 2) if name == "cifar10" else None
  mean = pool_x.mean(axis=axes, dtype=np.float64)
  std = pool_x.std(axis=axes, dtype=np.float64)
  std = np.where(std > 0, std, 1.0)
  for x in (pool_x, test_x):
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
  pool_y = train_y[keep]
  if name == "repeated-mnist":
    pool_x, pool_y = _repeat(pool_x, pool_y, np.random.default_rng(DATA_SEED))
  return Dataset(
    name,
    pool_x,
    pool_y,
    test_x,
    test_y[keep_test],
    10,
    tuple(pool_x.shape[1:]),
  )


def _first_key(arrays, names, path):
  for name in names:
    if name in arrays:
      return name
  raise ValueError(
    f"{path}: no array named {' or '.join(repr(n) for n in names)}; the"
    f" file holds {sorted(arrays) or 'no arrays'}. Expected x (features"
    " [N, D] or images [N, H, W(, C)]) and y (integer labels [N]),"
    " optionally x_test and y_test."
  )


def _labels(y, name, path):
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(
      f"{path}: {name} must be labels of shape [N], got shape {list(y.shape)}."
    )
  if not np.issubdtype(y.dtype, np.integer):
    if (
      not np.issubdtype(y.dtype, np.floating)
      or not np.all(np.isfinite(y))
      or np.any(y != np.round(y))
    ):
      raise ValueError(
        f"{path}: {name} must hold integer class labels, got"
        f" dtype {y.dtype} with non-integer values."
      )
  y = y.astype(np.int64)
  if y.size and y.min() < 0:
    raise ValueError(
      f"{path}: {name} must be class indices >= 0, got {int(y.min())}."
    )
  return y.astype(np.int32)


def _features(x, name, path):
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(
      f"{path}: {name} must be features [N, D] or images"
      f" [N, H, W(, C)], got shape {list(x.shape)}."
    )
  if not (
    np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
  ):
    raise ValueError(f"{path}: {name} must be numeric, got dtype {x.dtype}.")
  x = x.reshape(x.shape[0], -1).astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{path}: {name} contains NaN or infinite values.")
  return x


def load_npz_data(path: str, test_fraction: float = 0.2) -> Dataset:
  """A user dataset from an ``.npz`` (format: see the module docstring)."""
  if not os.path.exists(path):
    raise ValueError(f"--data {path}: no such file.")
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  x_key = _first_key(arrays, ("x", "features", "images", "X"), path)
  y_key = _first_key(arrays, ("y", "labels", "Y"), path)
  shape = np.shape(arrays[x_key])[1:]
  image_shape = (
    (*shape, 1) if len(shape) == 2 else shape if len(shape) == 3 else None
  )
  x = _features(arrays[x_key], x_key, path)
  y = _labels(arrays[y_key], y_key, path)
  if len(x) != len(y):
    raise ValueError(
      f"{path}: {x_key} has {len(x)} points but {y_key} has"
      f" {len(y)} labels; they must match one to one."
    )
  has_test = ("x_test" in arrays, "y_test" in arrays)
  if any(has_test) and not all(has_test):
    raise ValueError(
      f"{path}: give both x_test and y_test, or neither (then"
      " --test-fraction of the points is held out)."
    )
  if all(has_test):
    test_x = _features(arrays["x_test"], "x_test", path)
    test_y = _labels(arrays["y_test"], "y_test", path)
    if len(test_x) != len(test_y):
      raise ValueError(
        f"{path}: x_test has {len(test_x)} points but y_test"
        f" has {len(test_y)} labels."
      )
    if test_x.shape[1:] != x.shape[1:]:
      raise ValueError(
        f"{path}: x_test points have {test_x.shape[1]}"
        f" features, x points {x.shape[1]}."
      )
    pool_x, pool_y = x, y
  else:
    if not 0 < test_fraction < 1:
      raise ValueError(
        f"--test-fraction must be in (0, 1), got {test_fraction}."
      )
    perm = np.random.default_rng(DATA_SEED).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    test_x, test_y = x[perm[:n_test]], y[perm[:n_test]]
    pool_x, pool_y = x[perm[n_test:]], y[perm[n_test:]]
  if len(pool_x) == 0 or len(test_x) == 0:
    raise ValueError(
      f"{path}: need at least one pool point and one test point."
    )
  num_classes = int(max(pool_y.max(), test_y.max())) + 1
  if num_classes < 2:
    raise ValueError(f"{path}: the labels hold a single class.")
  pool_x, test_x = _standardise(pool_x, test_x)
  name = os.path.splitext(os.path.basename(path))[0]
  return Dataset(name, pool_x, pool_y, test_x, test_y, num_classes, image_shape)


def load_dataset(
  name: str,
  *,
  data_dir: str | None = None,
  download: bool = False,
  subsample: int | None = None,
  test_subsample: int | None = None,
) -> Dataset:
  """A dataset by name (`DATASET_NAMES`).

  Args:
    name: ``digits``, ``repeated-digits`` (`load_digits_data`; no files),
      ``mnist``, ``fashion-mnist``, ``cifar10`` or ``repeated-mnist``
      (`load_image_data`).
    data_dir: where the image datasets' files are (see `load_image_data`).
    download: fetch missing image files (checked by SHA-256).
    subsample: keep this many training images (pool points before any
      repetition); None keeps all.
    test_subsample: keep this many test images.

  Returns:
    The `Dataset`.

  Example:
    >>> from alfx.experiment import datasets
    >>> d = datasets.load_dataset("repeated-digits", subsample=50)
    >>> len(d.pool_y), len(d.test_y)
    (150, 500)
  """
  if name in ("digits", "repeated-digits"):
    return load_digits_data(
      repeated=name == "repeated-digits",
      subsample=subsample,
      test_subsample=test_subsample,
    )
  if name in IMAGE_DATASETS:
    return load_image_data(
      name,
      data_dir=data_dir,
      download=download,
      subsample=subsample,
      test_subsample=test_subsample,
    )
  raise ValueError(
    f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)} (or"
    " --data FILE.npz)."
  )


def check_budget(
  dataset: Dataset, initial: int, rounds: int, batch_size: int
) -> None:
  """Raises when the pool is smaller than the labelling budget."""
  need = initial + rounds * batch_size
  if need > len(dataset.pool_y):
    raise ValueError(
      f"{dataset.name}: the pool has {len(dataset.pool_y)} points but the"
      f" budget needs {need} (--initial {initial} + --rounds {rounds} x"
      f" --batch-size {batch_size}); lower the budget or use more data."
    )


def loop_data(dataset: Dataset) -> Any:
  """The dataset as the compiled loop's `alfx.Data` (JAX arrays).

  Example:
    >>> from alfx.experiment import datasets
    >>> data = datasets.loop_data(datasets.load_digits_data())
    >>> data.pool_inputs.shape[1], data.test_labels.dtype
    (64, dtype('int32'))
  """
  import jax.numpy as jnp

  import alfx

  return alfx.Data(
    jnp.asarray(dataset.pool_x),
    jnp.asarray(dataset.pool_y),
    jnp.asarray(dataset.test_x),
    jnp.asarray(dataset.test_y),
  )

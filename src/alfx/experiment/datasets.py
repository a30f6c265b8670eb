"""The experiment's data: scikit-learn's digits and user ``.npz`` files.

Built in (``--datasets``): ``digits``, scikit-learn's bundled 8x8
handwritten digits (no download), and ``repeated-digits``, each pool image
three times with Gaussian noise (the Repeated-MNIST setting of the BatchBALD
paper in miniature). Both use one fixed split (`DATA_SEED`): every
experiment seed sees the same pool and test set.

User data (``--data FILE.npz``): ``x`` (features ``[N, D]`` or images
``[N, H, W(, C)]``, flattened) and integer ``y`` ``[N]``; optional
``x_test``/``y_test`` (else ``test_fraction`` of the points is held out).
Precomputed embeddings of a frozen backbone with ``--model linear`` is the
Fast-Fishing setting (train only the last layer).

Every loader returns a `Dataset` of NumPy arrays, standardised with one
global mean and scale from the pool; the examples and benchmarks load their
data here too.

May import: numpy, scikit-learn (inside `load_digits_data` only).
"""

import dataclasses
import os

import numpy as np

#: The built-in datasets, all run by default.
DEFAULT_DATASETS = ("digits", "repeated-digits")
#: Fixed data split seed: every experiment seed sees the same pool and test set.
DATA_SEED = 0
DIGITS_TEST_SIZE = 500
REPEATS = 3
REPEAT_NOISE = 0.1  # in units of the (globally standardised) pixel scale


@dataclasses.dataclass
class Dataset:
  name: str
  pool_x: np.ndarray  # float32 [N, D]
  pool_y: np.ndarray  # int32 [N]
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int


def _standardise(pool_x, test_x):
  """One global mean and scale from the pool (keeps images' pixel geometry)."""
  mean, std = float(pool_x.mean()), float(pool_x.std())
  std = std if std > 0 else 1.0
  return ((pool_x - mean) / std).astype(np.float32), (
    (test_x - mean) / std
  ).astype(np.float32)


def load_digits_data(repeated: bool = False) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images, 10 classes, no download).

  500 images are the test set, the other 1297 the pool. ``repeated``: the
  pool holds every image ``REPEATS`` times, each copy with independent
  Gaussian noise of standard deviation ``REPEAT_NOISE`` (after global
  standardisation, as Repeated-MNIST adds N(0, 0.1) to normalised MNIST):
  a batch of near-copies teaches little more than one of them.
  """
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(DATA_SEED)
  perm = rng.permutation(len(x))
  test, pool = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
  pool_x, test_x = _standardise(
    x[pool].astype(np.float32), x[test].astype(np.float32)
  )
  pool_y = y[pool].astype(np.int32)
  if repeated:
    pool_x = np.concatenate(
      [
        pool_x + REPEAT_NOISE * rng.standard_normal(pool_x.shape)
        for _ in range(REPEATS)
      ]
    ).astype(np.float32)
    pool_y = np.concatenate([pool_y] * REPEATS)
  return Dataset(
    "repeated-digits" if repeated else "digits",
    pool_x,
    pool_y,
    test_x,
    y[test].astype(np.int32),
    10,
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
  return Dataset(name, pool_x, pool_y, test_x, test_y, num_classes)


def load_dataset(name: str) -> Dataset:
  if name == "digits":
    return load_digits_data(repeated=False)
  if name == "repeated-digits":
    return load_digits_data(repeated=True)
  raise ValueError(
    f"unknown dataset {name!r}; valid: digits,"
    " repeated-digits (or --data FILE.npz)."
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

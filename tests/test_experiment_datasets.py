"""Image datasets: IDX and CIFAR-10 files written here in their exact formats.

Nothing touches the network: downloads come from ``file://`` URLs or from an
opener that fails on purpose.
"""

import gzip
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest

from alfx.experiment import datasets
from alfx.experiment import downloads
from alfx.experiment import images

IDX_CODES = {
  np.dtype(np.uint8): 0x08,
  np.dtype(np.int8): 0x09,
  np.dtype(np.int16): 0x0B,
  np.dtype(np.int32): 0x0C,
  np.dtype(np.float32): 0x0D,
  np.dtype(np.float64): 0x0E,
}
STEMS = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)


def idx_bytes(array):
  """The IDX encoding of ``array``, written independently of the reader."""
  array = np.asarray(array)
  header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
  for d in array.shape:
    header += int(d).to_bytes(4, "big")
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if gz:
    with gzip.open(path + ".gz", "wb") as f:
      f.write(data)
    return path + ".gz"
  with open(path, "wb") as f:
    f.write(data)
  return path


def fake_idx_dataset(folder, rng, n_train=30, n_test=12, gz=True):
  """Four IDX files of random 28x28 images; returns the arrays written."""
  arrays = (
    rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
    rng.integers(0, 10, n_train).astype(np.uint8),
    rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
    rng.integers(0, 10, n_test).astype(np.uint8),
  )
  for stem, a in zip(STEMS, arrays, strict=True):
    write(os.path.join(folder, stem), idx_bytes(a), gz)
  return arrays


def cifar_batch(rng, n):
  return {
    b"batch_label": b"training batch",
    b"labels": [int(v) for v in rng.integers(0, 10, n)],
    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    b"filenames": [b"img_%d.png" % i for i in range(n)],
  }


def fake_cifar(folder, rng, n=4):
  """The six CIFAR-10 python batches (n images each), pickled as CIFAR is."""
  batches = {}
  os.makedirs(os.path.join(folder, images.CIFAR_FOLDER), exist_ok=True)
  for name in images.CIFAR_TRAIN + (images.CIFAR_TEST,):
    batches[name] = cifar_batch(rng, n)
    path = os.path.join(folder, images.CIFAR_FOLDER, name)
    with open(path, "wb") as f:
      pickle.dump(batches[name], f, protocol=2)
  return batches


def standardised(x, axes=None):
  x = x.astype(np.float64) / 255
  return (x - x.mean(axis=axes)) / x.std(axis=axes)


@pytest.mark.parametrize("dtype", sorted(IDX_CODES, key=str))
def test_parse_idx_reads_every_type_code(rng, dtype):
  a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
  out = images.parse_idx(idx_bytes(a))
  assert out.dtype == a.dtype.newbyteorder("=") and out.shape == a.shape
  np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_datasets_load_gzipped_or_raw(tmp_path, rng, name, gz):
  train_x, train_y, test_x, test_y = fake_idx_dataset(
    str(tmp_path / name), rng, gz=gz
  )
  d = datasets.load_dataset(name, data_dir=str(tmp_path))
  assert d.name == name and d.num_classes == 10
  assert d.pool_x.shape == (30, 28, 28, 1) and d.pool_x.dtype == np.float32
  assert d.test_x.shape == (12, 28, 28, 1) and d.test_x.dtype == np.float32
  assert d.pool_y.dtype == np.int32 and d.test_y.dtype == np.int32
  assert d.image_shape == (28, 28, 1) == d.input_shape
  np.testing.assert_array_equal(d.pool_y, train_y)
  np.testing.assert_array_equal(d.test_y, test_y)
  # One global mean and scale from the pool, applied to both sets.
  np.testing.assert_allclose(
    d.pool_x[..., 0], standardised(train_x), rtol=1e-5, atol=1e-5
  )
  pool = train_x.astype(np.float64) / 255
  np.testing.assert_allclose(
    d.test_x[..., 0],
    (test_x / 255 - pool.mean()) / pool.std(),
    rtol=1e-5,
    atol=1e-5,
  )


def test_files_directly_in_data_dir_are_found(tmp_path, rng):
  train_x = fake_idx_dataset(str(tmp_path), rng)[0]
  d = datasets.load_dataset("mnist", data_dir=str(tmp_path))
  assert d.pool_x.shape[0] == len(train_x)


def test_cifar10_batches_become_nhwc(tmp_path, rng):
  batches = fake_cifar(str(tmp_path / "cifar10"), rng)
  d = datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  assert d.pool_x.shape == (20, 32, 32, 3) and d.test_x.shape == (4, 32, 32, 3)
  assert d.pool_x.dtype == np.float32 and d.image_shape == (32, 32, 3)
  data = np.concatenate([batches[b][b"data"] for b in images.CIFAR_TRAIN])
  labels = sum((batches[b][b"labels"] for b in images.CIFAR_TRAIN), [])
  np.testing.assert_array_equal(d.pool_y, labels)
  np.testing.assert_array_equal(d.test_y, batches["test_batch"][b"labels"])
  # Row layout: 1024 red, then 1024 green, then 1024 blue, row-major.
  i, h, w, c = 7, 3, 30, 2
  raw = np.array([[[data[i, c * 1024 + h * 32 + w]]]], np.float64)
  nhwc = np.stack(
    [data[:, k * 1024 : (k + 1) * 1024].reshape(-1, 32, 32) for k in range(3)],
    axis=-1,
  )
  assert nhwc[i, h, w, c] == raw
  # Per-channel standardisation with the pool's statistics.
  np.testing.assert_allclose(
    d.pool_x, standardised(nhwc, axes=(0, 1, 2)), rtol=1e-5, atol=1e-5
  )


def test_cifar10_archive_is_extracted(tmp_path, rng):
  staging = tmp_path / "staging"
  fake_cifar(str(staging), rng, n=2)
  folder = tmp_path / "cifar10"
  folder.mkdir()
  with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
    tar.add(staging / images.CIFAR_FOLDER, arcname=images.CIFAR_FOLDER)
  d = datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  assert len(d.pool_y) == 10 and len(d.test_y) == 2
  assert (folder / images.CIFAR_FOLDER / "data_batch_5").is_file()


def test_repeated_mnist_is_three_noisy_copies(tmp_path, rng):
  fake_idx_dataset(str(tmp_path / "mnist"), rng, n_train=40)
  plain = datasets.load_dataset("mnist", data_dir=str(tmp_path))
  rep = datasets.load_dataset("repeated-mnist", data_dir=str(tmp_path))
  n = len(plain.pool_y)
  assert rep.pool_x.shape == (3 * n, 28, 28, 1) and rep.name == "repeated-mnist"
  np.testing.assert_array_equal(rep.pool_y, np.tile(plain.pool_y, 3))
  np.testing.assert_array_equal(rep.test_x, plain.test_x)  # no test noise
  noise = rep.pool_x.reshape(3, n, -1) - plain.pool_x.reshape(1, n, -1)
  assert abs(noise.mean()) < 0.003  # 3 * 40 * 784 draws: se 0.0003
  assert abs(noise.std() - 0.1) < 0.003
  assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.02
  again = datasets.load_dataset("repeated-mnist", data_dir=str(tmp_path))
  np.testing.assert_array_equal(again.pool_x, rep.pool_x)  # a fixed seed


def test_subsample_keeps_a_fixed_subset(tmp_path, rng):
  train_x, train_y, _, test_y = fake_idx_dataset(str(tmp_path / "mnist"), rng)
  d = datasets.load_dataset(
    "mnist", data_dir=str(tmp_path), subsample=10, test_subsample=5
  )
  keep = datasets.subsample_indices(30, 10, "subsample")
  assert len(set(keep.tolist())) == 10 and np.all(np.diff(keep) > 0)
  np.testing.assert_array_equal(d.pool_y, train_y[keep])
  np.testing.assert_allclose(
    d.pool_x[..., 0], standardised(train_x[keep]), rtol=1e-5, atol=1e-5
  )
  assert len(d.test_y) == 5
  rep = datasets.load_dataset(
    "repeated-mnist", data_dir=str(tmp_path), subsample=10
  )
  assert len(rep.pool_y) == 30 and len(rep.test_y) == len(test_y)
  digits = datasets.load_dataset("repeated-digits", subsample=20)
  assert digits.pool_x.shape == (60, 64) and digits.image_shape == (8, 8, 1)
  with pytest.raises(ValueError, match="subsample must be >= 1"):
    datasets.load_dataset("digits", subsample=0)
  with pytest.raises(ValueError, match="test_subsample must be an int"):
    datasets.load_dataset("digits", test_subsample="10")
  assert len(datasets.load_dataset("digits", subsample=10**6).pool_y) == 1297


def test_missing_files_say_where_to_put_them(tmp_path):
  with pytest.raises(ValueError) as e:
    datasets.load_dataset("fashion-mnist", data_dir=str(tmp_path))
  text = str(e.value)
  for stem in STEMS:
    assert os.path.join(str(tmp_path), "fashion-mnist", stem + ".gz") in text
  assert "--download" in text
  with pytest.raises(ValueError) as e:
    datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  folder = os.path.join(str(tmp_path), "cifar10", images.CIFAR_FOLDER)
  assert os.path.join(folder, "test_batch") in str(e.value)
  assert "cifar-10-python.tar.gz" in str(e.value)
  with pytest.raises(ValueError, match="built from MNIST's files") as e:
    datasets.load_dataset("repeated-mnist", data_dir=str(tmp_path))
  assert os.path.join(str(tmp_path), "mnist", STEMS[0] + ".gz") in str(e.value)


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv("ALFX_DATA_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert downloads.default_data_dir() == str(tmp_path / "alfx" / "datasets")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert downloads.default_data_dir() == str(
    tmp_path / "home" / ".cache" / "alfx" / "datasets"
  )
  monkeypatch.setenv("ALFX_DATA_DIR", str(tmp_path / "mine"))
  assert downloads.default_data_dir() == str(tmp_path / "mine")


@pytest.mark.parametrize(
  "data, match",
  [
    (b"\x08\x03\x00\x00" + bytes(12), "first two bytes must be zero"),
    (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "type code 0x07"),
    (bytes([0, 0, 0x08, 3, 0, 0]), "truncated"),
    (bytes([0, 0, 0x08, 1, 0, 0, 0, 4, 1, 2]), r"shape \[4\]"),
    (b"", "empty file"),
  ],
)
def test_corrupt_idx_files_are_refused(tmp_path, rng, data, match):
  folder = str(tmp_path / "mnist")
  fake_idx_dataset(folder, rng)
  write(os.path.join(folder, STEMS[1]), data, gz=True)
  with pytest.raises(ValueError, match=match) as e:
    datasets.load_dataset("mnist", data_dir=str(tmp_path))
  assert STEMS[1] in str(e.value)  # the message names the file


def test_damaged_gzip_and_mismatched_files_are_refused(tmp_path, rng):
  folder = str(tmp_path / "mnist")
  fake_idx_dataset(folder, rng)
  path = os.path.join(folder, STEMS[0] + ".gz")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match="damaged gzip"):
    datasets.load_dataset("mnist", data_dir=str(tmp_path))
  fake_idx_dataset(folder, rng)
  labels = rng.integers(0, 10, 29).astype(np.uint8)  # one label short
  write(os.path.join(folder, STEMS[1]), idx_bytes(labels), gz=True)
  with pytest.raises(ValueError, match="expected 30 labels"):
    datasets.load_dataset("mnist", data_dir=str(tmp_path))


def test_cifar_reader_refuses_other_pickles(tmp_path, rng):
  fake_cifar(str(tmp_path / "cifar10"), rng)
  path = tmp_path / "cifar10" / images.CIFAR_FOLDER / "test_batch"
  marker = tmp_path / "ran"

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
  with pytest.raises(ValueError, match="refusing to unpickle"):
    datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  assert not marker.exists()  # nothing ran
  path.write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
  with pytest.raises(ValueError, match="needs b'data' and b'labels'"):
    datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
  path.write_bytes(pickle.dumps(bad, protocol=2))
  with pytest.raises(ValueError, match=r"uint8 \[n, 3072\]"):
    datasets.load_dataset("cifar10", data_dir=str(tmp_path))


def mirror(tmp_path, rng, digests=None):
  """A local mirror of fake MNIST files and a `Source` pointing at it."""
  served = tmp_path / "served"
  fake_idx_dataset(str(served), rng)
  files = tuple(
    downloads.RemoteFile(
      stem + ".gz",
      (digests or {}).get(stem)
      or downloads.sha256_of(str(served / (stem + ".gz"))),
    )
    for stem in STEMS
  )
  return downloads.Source((served.as_uri() + "/",), files)


def test_download_fetches_and_verifies(tmp_path, rng, monkeypatch):
  source = mirror(tmp_path, rng)
  monkeypatch.setitem(downloads.SOURCES, "mnist", source)
  root = tmp_path / "cache"
  d = datasets.load_dataset("mnist", data_dir=str(root), download=True)
  assert d.pool_x.shape == (30, 28, 28, 1)
  assert sorted(os.listdir(root / "mnist")) == sorted(s + ".gz" for s in STEMS)
  # Offline afterwards: the files are found, nothing is fetched again.
  monkeypatch.setitem(
    downloads.SOURCES, "mnist", source._replace(mirrors=("file:///nowhere/",))
  )
  again = datasets.load_dataset("mnist", data_dir=str(root), download=True)
  np.testing.assert_array_equal(again.pool_x, d.pool_x)


def test_checksum_mismatch_leaves_no_file(tmp_path, rng, monkeypatch):
  source = mirror(tmp_path, rng, digests={STEMS[2]: "0" * 64})
  monkeypatch.setitem(downloads.SOURCES, "mnist", source)
  root = tmp_path / "cache"
  with pytest.raises(ValueError, match="SHA-256 .* does not match") as e:
    datasets.load_dataset("mnist", data_dir=str(root), download=True)
  assert "0" * 64 in str(e.value)
  left = os.listdir(root / "mnist")
  assert STEMS[2] + ".gz" not in left
  assert not [f for f in left if f.endswith(".part")]


def test_download_tries_the_next_mirror_and_cleans_up(tmp_path):
  payload = b"some bytes" * 1000
  target = tmp_path / "out" / "file.gz"
  calls = []

  class Response:
    def __init__(self, fail_after):
      self.left, self.fail_after = payload, fail_after

    def read(self, n):
      if self.fail_after is not None and len(self.left) < len(payload) // 2:
        raise urllib.error.URLError("connection reset")
      block, self.left = self.left[:100], self.left[100:]
      return block

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

  def opener(url, timeout):
    calls.append((url, timeout))
    if url == "a":
      raise urllib.error.URLError("no route to host")
    return Response(fail_after=0 if url == "b" else None)

  digest = __import__("hashlib").sha256(payload).hexdigest()
  out = downloads.download(
    ["a", "b", "c"], str(target), digest, opener=opener, timeout=5
  )
  assert [u for u, _ in calls] == ["a", "b", "c"] and calls[0][1] == 5
  assert open(out, "rb").read() == payload
  os.remove(out)
  with pytest.raises(ValueError, match="no route to host.*connection reset"):
    downloads.download(["a", "b"], str(target), digest, opener=opener)
  assert os.listdir(target.parent) == []  # no partial file


def test_known_checksums_are_sha256():
  for name, source in downloads.SOURCES.items():
    assert source.mirrors and all(m.endswith("/") for m in source.mirrors)
    for f in source.files:
      assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0, (name, f)


def test_unknown_dataset_lists_the_valid_names():
  with pytest.raises(ValueError, match="mnist, fashion-mnist, cifar10"):
    datasets.load_dataset("imagenet")


def test_npz_images_keep_their_shape(tmp_path, rng):
  path = tmp_path / "imgs.npz"
  np.savez(path, x=rng.random((20, 6, 5)), y=np.arange(20) % 2)
  d = datasets.load_npz_data(str(path))
  assert d.pool_x.shape[1:] == (30,) and d.image_shape == (6, 5, 1)
  np.savez(path, x=rng.random((20, 7)), y=np.arange(20) % 2)
  assert datasets.load_npz_data(str(path)).image_shape is None

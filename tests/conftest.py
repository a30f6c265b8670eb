import os
import sys
import zlib

import numpy as np
import pytest

# Tests import the checkout's alfx and the shared references in tests/.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Set ALFX_TEST_SEED to draw different random inputs; failures print it.
BASE_SEED = int(os.environ.get("ALFX_TEST_SEED", "0"))


def seed_for(name: str) -> int:
  """A stable per-test seed (crc32 of the test id, mixed with ALFX_TEST_SEED)."""
  return (zlib.crc32(name.encode()) + 7919 * BASE_SEED) % (2**32)


@pytest.fixture
def rng(request):
  """A fresh NumPy generator per test."""
  return np.random.default_rng(seed_for(request.node.nodeid))


def pytest_report_header(config):
  return f"alfx test inputs: ALFX_TEST_SEED={BASE_SEED}"

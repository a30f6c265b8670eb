"""pytest configuration: the per-test ``rng`` fixture and the report header."""

import numpy as np
import pytest

from tests.helpers import BASE_SEED
from tests.helpers import seed_for


@pytest.fixture
def rng(request):
  """A fresh NumPy generator per test."""
  return np.random.default_rng(seed_for(request.node.nodeid))


def pytest_report_header(config):
  return f"alfx test inputs: ALFX_TEST_SEED={BASE_SEED}"

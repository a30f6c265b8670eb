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


# Every backend compilation, from jax.monitoring (public API): the event
# carries the compiled function's name. A listener registered once per
# process; `compile_log` reads the slice recorded inside its block.
_COMPILES: list[str] = []


def _on_duration(event, duration_secs, **kwargs):
  del duration_secs
  if event == "/jax/core/compile/backend_compile_duration":
    _COMPILES.append(str(kwargs.get("fun_name", "?")))


def _register_compile_listener():
  import jax  # pylint: disable=import-outside-toplevel
  jax.monitoring.register_event_duration_secs_listener(_on_duration)


_register_compile_listener()


class compile_log:  # pylint: disable=invalid-name
  """Context manager: ``.names`` lists the XLA compilations in its block.

  >>> with compile_log() as log:
  ...   f(x)
  >>> assert not log.names, log.names   # nothing compiled
  """

  def __enter__(self):
    self._start = len(_COMPILES)
    self.names = []
    return self

  def __exit__(self, *exc):
    self.names = _COMPILES[self._start:]

"""Shared test helpers: per-test seeds, the compile log, chi-square tests,
the Flax models and data of the nn and loop tests."""

import functools
import os
import zlib

import numpy as np
from scipy import stats

#: Set ALFX_TEST_SEED to draw different random inputs; failures print it.
BASE_SEED = int(os.environ.get("ALFX_TEST_SEED", "0"))


def seed_for(name: str) -> int:
  """A stable per-test seed (crc32 of the test id, mixed with ALFX_TEST_SEED)."""
  return (zlib.crc32(name.encode()) + 7919 * BASE_SEED) % (2**32)


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
    self.names = _COMPILES[self._start :]


#: Significance level of the statistical tests: a correct sampler fails one
#: with probability 1e-6 (the keys are fixed, so a pass is reproducible).
ALPHA = 1e-6


def chi_square_p_value(counts: dict, probs: dict) -> float:
  """p-value of observed outcome counts against the given probabilities.

  Outcomes never observed count as 0; an outcome observed but of
  probability 0 fails outright. Cells with small expected counts are pooled
  into one so that the chi-square approximation holds.
  """
  total = sum(counts.values())
  for outcome in counts:
    assert probs.get(outcome, 0) > 0, f"impossible outcome {outcome} drawn"
  keys = sorted(probs, key=lambda o: probs[o])
  observed, expected, pool_o, pool_e = [], [], 0, 0.0
  for o in keys:
    e = probs[o] * total
    if e < 5:
      pool_o += counts.get(o, 0)
      pool_e += e
    else:
      observed.append(counts.get(o, 0))
      expected.append(e)
  if pool_e > 0:
    observed.append(pool_o)
    expected.append(pool_e)
  expected = np.array(expected) * sum(observed) / sum(expected)
  return stats.chisquare(observed, expected).pvalue


def count_rows(rows):
  out = {}
  for r in np.asarray(rows):
    key = tuple(int(i) for i in r)
    out[key] = out.get(key, 0) + 1
  return out


# ----------------------------------------------------------------------------
# Flax models and data shared by test_nn.py and test_loop.py. Flax is
# imported on first use: conftest imports this module in every test process.


@functools.cache
def _mlp_class():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class MLP(nn.Module):
    """x -> relu(Dense) -> [Dropout] -> Dense head (named ``head``)."""

    hidden: int = 6
    classes: int = 4
    rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
      h = nn.relu(nn.Dense(self.hidden)(x))
      if self.rate:
        h = nn.Dropout(self.rate, deterministic=not train)(h)
      return nn.Dense(self.classes, name="head")(h)

  return MLP


def mlp(hidden: int = 6, classes: int = 4, rate: float = 0.0):
  """A Linen ``MLP``: ``x[b, d] -> logits[b, classes]``, dropout if ``rate``."""
  return _mlp_class()(hidden=hidden, classes=classes, rate=rate)


@functools.cache
def _ensemble_init(model, num_members: int):
  import jax  # pylint: disable=import-outside-toplevel

  import alfx  # pylint: disable=import-outside-toplevel

  return jax.jit(
    lambda key, x: alfx.init_ensemble(
      lambda k: model.init(k, x), num_members, key=key
    )
  )


def ensemble_params(model, x, num_members: int, key):
  """`alfx.init_ensemble` of ``model.init(., x[:1])``, jitted once per model
  and size: eager Linen init dispatches op by op (seconds a call)."""
  return _ensemble_init(model, num_members)(key, x[:1])


def blobs(
  rng, n: int, d: int, classes: int = 3, spread: float = 4.0, noise: float = 0.3
):
  """Gaussian blobs: ``(float32 x[n, d], int32 y[n])``, ``classes`` centres
  of scale ``spread``, points ``noise`` around them."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  y = rng.integers(0, classes, n)
  centres = spread * rng.standard_normal((classes, d))
  x = centres[y] + noise * rng.standard_normal((n, d))
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)

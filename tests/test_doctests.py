"""Every example in alfx's docstrings runs, as a doctest, on the installed alfx.

Examples print small concrete values (indices, rounded scores); ``...`` and
whitespace are normalised. ``alfx``, ``jax``, ``jnp`` and ``np`` are in
every example's namespace (examples may still import them, as users would). Modules of the Flax helpers and the experiment
are skipped when their extra is not installed.
"""

import doctest
import importlib
import importlib.util
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx

_EXTRAS = {"alfx.nn": "flax", "alfx.loop": "flax", "alfx.experiment": "sklearn"}


def _modules():
  names = ["alfx"]
  names += [m.name for m in pkgutil.walk_packages(alfx.__path__, "alfx.")]
  return sorted(n for n in names if not n.endswith("__main__"))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
  for prefix, extra in _EXTRAS.items():
    if name.startswith(prefix) and importlib.util.find_spec(extra) is None:
      pytest.skip(f"needs {extra}")
  module = importlib.import_module(name)
  result = doctest.testmod(
    module,
    extraglobs={"alfx": alfx, "jax": jax, "jnp": jnp, "np": np},
    optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    report=True,
    verbose=False,
  )
  assert result.failed == 0, f"{result.failed} failing examples in {name}"


def test_the_public_functions_have_examples():
  """Every public function and class of `alfx.__all__` shows an example."""
  missing = []
  for name in alfx.__all__:
    obj = getattr(alfx, name)
    if not callable(obj) or isinstance(obj, type(alfx.Forward)):
      continue
    doc = getattr(obj, "__doc__", "") or ""
    if ">>>" not in doc:
      missing.append(name)
  assert not missing, f"public names without a docstring example: {missing}"

"""The lazy import of Flax and optax, the ``flax`` extra.

`alfx.nn` imports neither at module level, so ``import alfx`` works without
the extra; each helper calls `require` when it first needs one, which names
the extra to install if it is missing.

May import: the standard library only.
"""

import importlib


def require(module: str, what: str):
  """Imports an optional dependency, or says which extra provides it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(
      f"{what} needs {module.split('.')[0]}, which alfx installs with its"
      " flax extra: pip install 'alfx[flax]'."
    ) from e

"""alfx's test suite (a package: tests import the installed alfx).

The oldest supported jax (0.6.1) has ``jax.experimental.enable_x64`` but not
yet ``jax.enable_x64`` (jax >= 0.7): the tests use the new name, provided
here on the old versions so that one suite runs on the whole tested range.
"""

import jax

if not hasattr(jax, "enable_x64"):
  from jax.experimental import enable_x64 as _enable_x64  # pylint: disable=g-import-not-at-top

  jax.enable_x64 = _enable_x64

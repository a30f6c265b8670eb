"""Run in a venv with only alfx's core installed (jax, numpy): no Flax, no optax.

`import alfx` and the acquisitions must work; the Flax helpers must raise an
ImportError that names the extra.
"""

import importlib.util
import sys

import jax
import jax.numpy as jnp

import alfx

for name in ("flax", "optax", "chex"):
  assert importlib.util.find_spec(name) is None, f"{name} is installed"
  assert name not in sys.modules, f"import alfx imported {name}"

key = jax.random.key(0)
lp = jax.nn.log_softmax(jax.random.normal(key, (50, 4, 3)))
assert alfx.batchbald(lp, 3).valid.all()
assert alfx.kbald(lp, 3).valid.all()
emb = jax.random.normal(key, (50, 5))
probs = jnp.exp(lp[:, 0])
labeled = jnp.arange(50) < 5
assert alfx.bait(emb, probs, 3, labeled=labeled).valid.all()
try:
  alfx.linen_forward(object())
except ImportError as e:
  assert "alfx[flax]" in str(e), e
else:
  raise AssertionError("linen_forward without flax did not raise")
print("core-only install: import alfx, batchbald, kbald, bait: ok")

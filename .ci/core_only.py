"""Run in a venv with only alfx's core installed (jax, numpy): no Flax, no optax.

`import alfx` and the acquisitions must work; the Flax helpers must raise an
ImportError that names the extra; `alfx-select` must pick a batch.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

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

# alfx-select (the console script of the wheel) on a tiny .npy, core only.
with tempfile.TemporaryDirectory() as tmp:
  np.save(os.path.join(tmp, "lp.npy"), np.asarray(lp))
  np.save(os.path.join(tmp, "emb.npy"), np.asarray(emb))
  script = os.path.join(os.path.dirname(sys.executable), "alfx-select")
  for extra in (
    ["--strategy", "batchbald"],
    ["--strategy", "bait-full", "--embeddings", os.path.join(tmp, "emb.npy")],
  ):
    out = subprocess.run(
      [script, "--log-probs", os.path.join(tmp, "lp.npy"), "--batch-size", "3"]
      + extra,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0] == "rank,index,score" and len(rows) == 4, out.stdout
print("core-only install: import alfx, batchbald, kbald, bait, alfx-select: ok")

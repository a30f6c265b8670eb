"""Runs the baselines' cores under ``jax.shard_map`` on 4 host CPU devices.

Executed in a subprocess by ``test_diversity.py::test_sharded_picks_equal_
single_device`` (the device count must be set before JAX starts). Prints one
line per strategy and exits non-zero if a sharded run differs from the
single-device run.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from alfx._core import sampling as _sampling  # noqa: E402
from alfx.baselines import _badge  # noqa: E402
from alfx.baselines import _coreset  # noqa: E402
from alfx.baselines import _kmeans  # noqa: E402


def main(seed):
  assert jax.device_count() == 4, jax.devices()
  mesh = jax.make_mesh((4,), ("pool",))
  rng = np.random.default_rng(seed)
  n, d, c, b = 64, 5, 3, 6
  x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  p = jax.nn.softmax(jnp.asarray(rng.standard_normal((n, c)), jnp.float32))
  mask = jnp.asarray(rng.random(n) < 0.8)
  labeled = jnp.asarray(rng.random(n) < 0.1) & ~mask
  u = jnp.asarray(rng.random(n), jnp.float32)
  key = jax.random.key(seed)

  def sharded(f, pool_args, replicated_args, out_specs=P()):
    g = jax.shard_map(
        f, mesh=mesh, out_specs=out_specs, check_vma=False,
        in_specs=(P("pool"),) * len(pool_args) + (P(),) * len(replicated_args))
    placed = [jax.device_put(a, NamedSharding(mesh, P("pool")))
              for a in pool_args]
    return jax.jit(g)(*placed, *replicated_args)

  kw = dict(max_clusters=8, max_iterations=50, tol=0.0, chunk_size=8,
            block_size=4)
  cases = {
      "badge": (lambda x, p, m, k, axis_name=None: _badge._badge(
          x, p, m, k, b, axis_name=axis_name), [x, p, mask], [key], P()),
      "coreset": (lambda x, l, m, axis_name=None: _coreset._coreset(
          x, l, m, b, 8, 4, axis_name=axis_name), [x, labeled, mask], [], P()),
      "random_batch": (lambda m, k, axis_name=None: _sampling._random_batch(
          m, k, b, axis_name=axis_name), [mask], [key], P()),
      "kmeans": (lambda x, m, k, axis_name=None: _kmeans.kmeans(
          x, m, jnp.int32(5), k, axis_name=axis_name, **kw),
                 [x, mask | labeled], [key], (P(), P("pool"), P())),
  }
  for mode in ("power", "softmax"):
    cases[f"stochastic_batch({mode})"] = (
        lambda u, m, k, axis_name=None, mode=mode:
        _sampling._stochastic_batch(u, m, k, 1.0, b, mode,
                                    axis_name=axis_name),
        [u, mask], [key], P())
  failed = False
  for name, (fn, pool_args, replicated_args, out_specs) in cases.items():
    want = fn(*pool_args, *replicated_args)
    got = sharded(lambda *a, fn=fn: fn(*a, axis_name="pool"), pool_args,
                  replicated_args, out_specs)
    same = all(np.allclose(w, g, rtol=1e-5, atol=1e-6) for w, g in
               zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    failed |= not same
    print(f"{name}: {'same' if same else 'DIFFERENT'}", flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)

"""BAIT's ``r x r`` solves above the unrolled size against float64 NumPy.

`alfx.bait_family._greedy.trace_solve` (``tr((I + U)^-1 W)`` through the
blocked inverse) and `alfx.bait_family._blocks.spd_inverse`, at the ranks
the structured full path reaches (``r = C``), on well and ill-conditioned
matrices, in float32 and float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alfx.bait_family import _blocks
from alfx.bait_family import _greedy

RANKS = [13, 17, 50, 100]


def _spd_pair(rng, n, r, cond):
  """``U`` PSD with eigenvalues log-spread in ``[0, cond - 1]`` (so ``I +
  U`` has condition number ``cond``) and ``W`` symmetric PSD, float64."""
  q, _ = np.linalg.qr(rng.standard_normal((n, r, r)))
  lam = np.geomspace(1.0, cond, r) - 1.0
  lam = rng.permuted(np.broadcast_to(lam, (n, r)), axis=1)
  u = np.einsum("nij,nj,nkj->nik", q, lam, q)
  u = 0.5 * (u + np.swapaxes(u, 1, 2))
  b = rng.standard_normal((n, r, r)) / np.sqrt(r)
  return u, np.einsum("nij,nkj->nik", b, b)


def _tolerance(dtype, r, cond):
  """A relative bound ``~ r eps cond`` with a margin (a wrong solve is off
  by O(1))."""
  return 20 * r * np.finfo(dtype).eps * cond


@pytest.mark.parametrize("r", RANKS)
@pytest.mark.parametrize(
  "dtype, cond",
  [("float32", 10.0), ("float32", 1e3), ("float64", 10.0), ("float64", 1e8)],
)
def test_trace_solve_against_numpy(rng, r, dtype, cond):
  u, w = _spd_pair(rng, 6, r, cond)
  with jax.enable_x64(dtype == "float64"):
    got = _greedy.trace_solve(jnp.asarray(u, dtype), jnp.asarray(w, dtype), 1.0)
    assert got.dtype == np.dtype(dtype)
    got = np.asarray(got, np.float64)
  # The reference on the inputs as rounded to dtype.
  u32, w32 = u.astype(dtype).astype(np.float64), w.astype(dtype)
  want = np.einsum(
    "nij,nji->n", np.linalg.inv(np.eye(r) + u32), w32.astype(np.float64)
  )
  np.testing.assert_allclose(got, want, rtol=_tolerance(dtype, r, cond))


@pytest.mark.parametrize("r", RANKS)
@pytest.mark.parametrize("dtype, cond", [("float32", 1e3), ("float64", 1e8)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_spd_inverse_against_numpy(rng, r, dtype, cond, symmetric):
  u, _ = _spd_pair(rng, 6, r, cond)
  s = np.eye(r) + u.astype(dtype).astype(np.float64)
  with jax.enable_x64(dtype == "float64"):
    got = _blocks.spd_inverse(jnp.asarray(s, dtype), 16, symmetric)
    assert got.dtype == np.dtype(dtype)
    got = np.asarray(got, np.float64)
  want = np.linalg.inv(s)
  # Normwise: |S^-1| = 1 / lambda_min(S) = 1 here.
  err = np.max(np.linalg.norm(got - want, 2, axis=(1, 2)))
  assert err < _tolerance(dtype, r, cond)
  if symmetric:
    np.testing.assert_array_equal(got, np.swapaxes(got, 1, 2))

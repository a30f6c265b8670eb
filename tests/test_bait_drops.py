"""BAIT's backward pass on the picks' blocks against dense float64 algebra.

`alfx.bait_family._drops.pick_blocks` rebuilds ``X_p^T M^-1 X_q`` and
``X_p^T M^-1 F M^-1 X_q`` between the picks from the forward pass's
history; `drop_pick` applies a drop. Both are checked against explicit
inverses of the ``d x d`` matrices on fresh random inputs.
"""

import jax
import numpy as np
import pytest

from alfx.bait_family import _drops


def _problem(rng, t, c_f, dim, r):
  d = c_f * dim
  q = rng.standard_normal((d, d))
  m0 = q @ q.T / d + np.eye(d)
  g = rng.standard_normal((d, 2 * d))
  big_f = g @ g.T / (2 * d)
  hp = rng.standard_normal((t, dim))
  ap = rng.standard_normal((t, c_f, r)) / np.sqrt(c_f)
  x = np.einsum("pak,pi->paik", ap, hp).reshape(t, d, r)  # X_p = A_p (x) h_p
  return m0, big_f, hp, ap, x


def _forward_history(m0, big_f, x, valid):
  """The greedy's history for picks made in order: Z_s, Y_s, S_s^-1, W_s."""
  t, d, r = x.shape
  m = m0.copy()
  zs, ys, s_invs, ws = [], [], [], []
  for s in range(t):
    m_inv = np.linalg.inv(m)
    z = m_inv @ x[s] * valid[s]
    y = m_inv @ big_f @ m_inv @ x[s] * valid[s]
    s_mat = np.eye(r) + x[s].T @ z
    zs.append(z)
    ys.append(y)
    s_invs.append(np.linalg.inv(s_mat))
    ws.append(x[s].T @ y)
    if valid[s]:
      m = m + x[s] @ x[s].T
  return m, np.array(zs), np.array(ys), np.array(s_invs), np.array(ws)


def _layout(v, c_f, dim):
  """``[T, d, r]`` -> the greedy's transposed ``[T, r, C_f, D]``."""
  t, _, r = v.shape
  return np.transpose(v, (0, 2, 1)).reshape(t, r, c_f, dim)


def _blocks(x, m, big_f):
  m_inv = np.linalg.inv(m)
  g = m_inv @ big_f @ m_inv
  return (
    np.einsum("pdk,de,qel->pqkl", x, m_inv, x),
    np.einsum("pdk,de,qel->pqkl", x, g, x),
  )


@pytest.mark.parametrize("t, c_f, dim, r", [(1, 2, 3, 2), (5, 3, 4, 3)])
def test_pick_blocks_equal_the_dense_blocks(rng, t, c_f, dim, r):
  m0, big_f, hp, ap, x = _problem(rng, t, c_f, dim, r)
  valid = np.ones(t, bool)
  m, z, y, s_inv, w_hist = _forward_history(m0, big_f, x, valid)
  with jax.enable_x64(True):
    u, w = _drops.pick_blocks(
      _layout(z, c_f, dim), _layout(y, c_f, dim), s_inv, w_hist, hp, ap
    )
  want_u, want_w = _blocks(x, m, big_f)
  np.testing.assert_allclose(u, want_u, rtol=1e-9, atol=1e-11)
  np.testing.assert_allclose(w, want_w, rtol=1e-9, atol=1e-11)
  # Negative control: without the later steps' corrections the blocks are
  # those of an earlier M (the check above can tell them apart).
  stale = np.einsum("qpik->pqki", np.einsum("sdi,pdk->spik", z, x))
  assert np.abs(stale - want_u).max() > 1e-3 * np.abs(want_u).max()


def test_invalid_forward_picks_leave_the_valid_blocks_exact(rng):
  t, c_f, dim, r = 6, 3, 4, 2
  m0, big_f, hp, ap, x = _problem(rng, t, c_f, dim, r)
  valid = np.array([True, True, False, True, False, True])
  m, z, y, s_inv, w_hist = _forward_history(m0, big_f, x, valid)
  with jax.enable_x64(True):
    u, w = _drops.pick_blocks(
      _layout(z, c_f, dim), _layout(y, c_f, dim), s_inv, w_hist, hp, ap
    )
  want_u, want_w = _blocks(x, m, big_f)
  ok = np.flatnonzero(valid)
  np.testing.assert_allclose(
    u[np.ix_(ok, ok)], want_u[np.ix_(ok, ok)], rtol=1e-9
  )
  np.testing.assert_allclose(
    w[np.ix_(ok, ok)], want_w[np.ix_(ok, ok)], rtol=1e-9
  )


@pytest.mark.parametrize("r", [1, 3])
def test_drops_equal_the_dense_blocks_after_removal(rng, r):
  t, c_f, dim = 5, 3, 4
  m0, big_f, _, _, x = _problem(rng, t, c_f, dim, r)
  m = m0 + sum(x[p] @ x[p].T for p in range(t))
  u, w = _blocks(x, m, big_f)
  with jax.enable_x64(True):
    for k in (3, 0, 4):
      u, w = _drops.drop_pick(u, w, k, jax.numpy.asarray(True))
      m = m - x[k] @ x[k].T
      want_u, want_w = _blocks(x, m, big_f)
      np.testing.assert_allclose(u, want_u, rtol=1e-8, atol=1e-10)
      np.testing.assert_allclose(w, want_w, rtol=1e-8, atol=1e-10)
    # An inactive drop changes nothing.
    same = _drops.drop_pick(u, w, 1, jax.numpy.asarray(False))
  np.testing.assert_array_equal(same[0], u)
  np.testing.assert_array_equal(same[1], w)

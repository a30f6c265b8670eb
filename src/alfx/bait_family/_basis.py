"""A well-conditioned basis of the last layer's parameters.

``tr(M^-1 F)`` is invariant under any orthogonal change of basis of the
parameters (``M``, ``F`` and every ``I(x)`` are conjugated alike, and ``lam
I`` stays ``lam I``). Two such changes make float32 accurate where the
standard basis is not:

* Embeddings with a large common offset ``mu`` (ReLU features, or the issue's
  shared offset of 1e3) make every ``D x D`` block of ``M`` and ``F`` ~
  ``|mu|^2`` along ``mu`` and ``O(spread^2)`` across it; in the standard
  basis the small part is lost to the rounding of the large entries (``eps
  |mu|^2 ~ 0.6`` at ``|mu| = 2e3``, against ``lam = 1``). A Householder
  reflection ``Q`` that maps ``mu`` to ``e_1`` keeps the two scales in
  separate coordinates: ``h' = Q (h - mu) - s |mu| e_1`` (`rotate`).
* For full and topc, every column of ``A_n`` sums to zero over the classes,
  so ``1_C (x) R^D`` is a null space of every Fisher: there ``M = lam I`` and
  ``F = 0``, while the quadratic forms ``h^T (M^-1)_ab h`` carry a common
  ``|h|^2 / (C lam)`` that cancels in ``A_n^T (.) A_n`` (error ``eps |h|^2 /
  lam``). The dense path drops that null space (`dense_factors`): the class
  factors become ``P^T A_n``, ``[C - 1, r]``, ``P`` an orthonormal basis of
  ``1_C^perp``. The trace is unchanged (``M`` is block diagonal across
  ``1_C^perp`` and ``1_C``, and ``F`` vanishes on the latter), and ``d``
  shrinks from ``C D`` to ``(C - 1) D``.

Measured at N=12, D=5, C=3, two labelled, offsets 1e3 (float32 against
float64 picks): see tests/test_bait_float32.py::test_float32_offset_*.

May import: `alfx._core`, `alfx.bait_family._factors`.
"""

import math

import jax.numpy as jnp
import numpy as np

from alfx._core import pool as _pool
from alfx.bait_family import _factors


def pool_center(h, row_weight, n_total, axis_name):
  """The mean embedding over the pool's rows (``row_weight``: 0/1 or None)."""
  if row_weight is not None:
    h = h * row_weight[:, None]
  return _pool.psum(jnp.sum(h, axis=0), axis_name) / n_total


def rotate(h, center):
  """``Q h`` for the Householder reflection ``Q`` that maps ``center`` to
  ``-s |center| e_1`` (``s`` the sign of ``center[0]``), computed as ``Q (h -
  center) - s |center| e_1`` so that the coordinates across ``center`` keep
  the precision of ``h - center``."""
  norm = jnp.sqrt(jnp.sum(center * center))
  sign = jnp.where(center[0] >= 0, 1, -1).astype(h.dtype)
  v = center.at[0].add(sign * norm)
  vv = jnp.sum(v * v)
  coef = jnp.where(vv > 0, 2 / jnp.where(vv > 0, vv, 1), 0) * v
  x = h - center
  x = x - (x @ v)[:, None] * coef
  return x.at[:, 0].add(-sign * norm)


def null_free(kind, c):
  """Whether the dense path drops the class null space ``1_C``.

  See the module docstring.
  """
  return kind in ("full", "topc") and c > 1


def _project_classes(x):
  """``P^T x`` over axis -2 (``[..., C, q] -> [..., C - 1, q]``).

  ``P``: the first ``C - 1`` columns of the Householder reflection ``H = I -
  2 w w^T / w^T w``, ``w = 1_C / sqrt(C) - e_C``, which maps ``1_C /
  sqrt(C)`` to ``e_C``: an orthonormal basis of ``1_C^perp``, applied in
  ``O(C q)``.
  """
  c = x.shape[-2]
  w = np.full((c,), 1 / math.sqrt(c))
  w[-1] -= 1
  w = jnp.asarray(w / np.linalg.norm(w) * math.sqrt(2), x.dtype)
  y = x - w[:, None] * jnp.einsum("a,...aq->...q", w, x)[..., None, :]
  return y[..., :-1, :]


def dense_factors(probs, kind, top_c):
  """Class factors of the dense path, ``[N, C_f, r]``, null space dropped."""
  factors = _factors.class_factors(probs, kind, top_c)
  if null_free(kind, probs.shape[1]):
    factors = _project_classes(factors)
  return factors

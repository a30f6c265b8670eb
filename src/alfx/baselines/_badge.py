"""BADGE: k-means++ seeding on gradient embeddings (Ash et al. 2020).

May import: `alfx._core`, `alfx.baselines._distances`.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.baselines._distances import check_embeddings
from alfx.baselines._distances import d2_sample
from alfx.baselines._distances import guard_overflow
from alfx.baselines._distances import sq_norms
from alfx.baselines._distances import SQUARE_HEADROOM


@_validation.fused_checks
def badge(
  embeddings: ArrayLike,
  probs: ArrayLike,
  batch_size: int,
  *,
  key: ArrayLike,
  mask: ArrayLike | None = None,
) -> _selection.Selection:
  """BADGE: k-means++ seeding on gradient embeddings (Ash et al. 2020).

  The gradient embedding of pool point ``n`` is the gradient of the
  cross-entropy at the predicted label ``yhat_n = argmax_c p_nc`` with
  respect to the last linear layer (weights only, no bias), up to sign:
  ``g_n = a_n (x) h_n`` with ``a_n = e_yhat - p_n`` and ``h_n`` the
  penultimate-layer embedding. Distances use the factorisation
  ``|g_i - g_j|^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i.a_j)(h_i.h_j)``,
  so the ``[N, C * D]`` matrix is never formed.

  Like the original (``init_centers`` in JordanAsh/badge), the first pick is
  the selectable point of largest gradient norm, and each further pick is a
  D^2 draw: ``P(n) ∝ min_j |g_n - g_j|^2`` over the selectable points not yet
  picked, ``j`` running over the picks so far (sampled exactly, by
  Gumbel-max on ``log D^2``; already-picked points are excluded, as the
  original's rejection loop does). If every remaining point has
  ``D^2 = 0``, the draw is uniform over them. Labelled points are *not*
  centres (as in the original, which seeds on the unlabelled pool only):
  exclude them through ``mask``.

  Args:
    embeddings: ``float[N, D]`` penultimate-layer embeddings ``h``.
    probs: ``float[N, C]`` predictive class probabilities ``p`` (softmax
      outputs; non-negative, rows summing to 1).
    batch_size: static ``int``, ``B``.
    key: a PRNG key.
    mask: optional ``bool[N]``, True where a point may be picked.

  Returns:
    A :class:`Selection` in pick order; ``scores[0]`` is the first pick's
    squared gradient norm ``|g|^2``, ``scores[t]`` the ``D^2`` of pick ``t``
    (its squared distance to the nearest earlier pick) when it was drawn.

  Raises:
    ValueError: on bad shapes or values; when the embeddings' squared norms
      overflow their dtype (rescale them or pass float64).

  Cost: ``B`` passes over ``h`` and ``a`` (``O(B N (D + C))``, memory-bound),
  memory ``O(N (D + C))`` for ``a`` and a few ``[N]`` vectors.

  Example:
    >>> emb = jnp.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1], [9.0, 0]])
    >>> probs = jax.nn.softmax(emb, axis=-1)  # [N=5, C=2]
    >>> sel = alfx.badge(emb, probs, 2, key=jax.random.key(0))
    >>> sel.indices.shape, bool(sel.valid.all())
    ((2,), True)
  """
  embeddings = check_embeddings(embeddings)
  n = embeddings.shape[0]
  probs = _validation.check_probs(probs, n)
  mask = _validation.check_mask(mask, n)
  batch_size = _validation.check_batch_size(batch_size, mask)
  key = _validation.check_key(key)
  return _badge(embeddings, probs, mask, key, batch_size=batch_size)


def _badge_gradient_factors(embeddings, probs):
  """``(a [N, C], |a|^2 [N], |h|^2 [N])`` of the BADGE gradient embeddings."""
  dtype = jnp.result_type(embeddings.dtype, probs.dtype)
  probs = probs.astype(dtype)
  yhat = jnp.argmax(probs, axis=-1)
  a = jax.nn.one_hot(yhat, probs.shape[-1], dtype=dtype) - probs
  return a, sq_norms(a), sq_norms(embeddings.astype(dtype))


@_sharding.pool_core(
  pool=("embeddings", "probs", "mask"), static=("batch_size",)
)
def _badge(embeddings, probs, mask, key, batch_size, axis_name=None):
  """`badge` without checks; per-point state ``[N]``, shardable."""
  a, a_sq, h_sq = _badge_gradient_factors(embeddings, probs)
  h = embeddings.astype(a.dtype)
  g_sq = a_sq * h_sq

  def sq_dist_to(index):
    a_c, h_c = _pool.take(a, index, axis_name), _pool.take(h, index, axis_name)
    g_c_sq = jnp.sum(a_c * a_c) * jnp.sum(h_c * h_c)
    return jnp.maximum(g_sq + g_c_sq - 2 * (a @ a_c) * (h @ h_c), 0)

  first, first_sq = _pool.argmax(jnp.where(mask, g_sq, -jnp.inf), axis_name)
  available = _pool.set_at(mask, first, False, axis_name)
  min_d2 = sq_dist_to(first)

  def step(carry, t):
    min_d2, available = carry
    index, valid = d2_sample(
      jax.random.fold_in(key, t), min_d2, available, axis_name
    )
    score = _pool.take(min_d2, index, axis_name)
    min_d2 = jnp.minimum(min_d2, sq_dist_to(index))
    available = _pool.set_at(available, index, False, axis_name)
    return (min_d2, available), (index, score, valid)

  _, (indices, scores, valid) = lax.scan(
    step, (min_d2, available), jnp.arange(1, batch_size, dtype=jnp.int32)
  )
  selection = _selection.Selection(
    indices=jnp.concatenate([first[None], indices]).astype(jnp.int32),
    scores=jnp.concatenate([first_sq[None], scores]),
    valid=jnp.concatenate([(first_sq > -jnp.inf)[None], valid]),
  )
  # |g_i - g_j|^2 terms reach 8 max |h|^2 (|a|^2 <= 2).
  return guard_overflow(selection, jnp.max(h_sq), SQUARE_HEADROOM, axis_name)

"""The per-example Fisher information in factored (Kronecker) form.

`fisher_factors` (public) and the class factors ``A_n`` that every BAIT path
is built from (`class_factors`, `class_outer`), and the working dtype.

May import: `alfx._core`, `alfx.bait_family._checks`.
"""

import functools
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx.bait_family import _checks


class FisherFactors(NamedTuple):
  """Per-example Fisher information in factored (Kronecker) form.

  ``I(x_n) = V_n V_n^T`` with ``V_n = class_factors[n] (x) embeddings[n]``:
  column ``k`` of ``V_n`` is ``class_factors[n, :, k] (x) embeddings[n]``, a
  vector over the ``d = C_f * D`` last-layer parameters (class-major). For
  ``fisher='diagonal'`` the Fisher is the diagonal ``diag(V_n V_n^T)``.

  Attributes:
    class_factors: ``float[N, C_f, r]``, ``A_n``.
    embeddings: ``float[N, D]``, ``h_n``.

  Example:
    >>> probs = jnp.array([[0.7, 0.2, 0.1]])
    >>> f = alfx.fisher_factors(jnp.ones((1, 4)), probs, fisher="binary")
    >>> f.class_factors.shape, f.embeddings.shape
    ((1, 1, 1), (1, 4))
    >>> round(float(f.class_factors[0, 0, 0] ** 2), 3)  # p_max (1 - p_max)
    0.21
  """

  class_factors: jax.Array
  embeddings: jax.Array


def fisher_factors(
  embeddings: ArrayLike,
  probs: ArrayLike,
  *,
  fisher: str = "full",
  top_c: int = 2,
) -> FisherFactors:
  """The per-example last-layer Fisher information of a softmax classifier.

  For a last layer ``logits = W h`` with softmax outputs ``p``, the Fisher of
  one example is ``(diag(p) - p p^T) (x) h h^T``. It is returned factored,
  ``I(x_n) = V_n V_n^T`` with ``V_n = A_n (x) h_n`` (never a dense ``d x r``
  matrix per point):

  * ``'full'``: ``A_n[:, k] = sqrt(p_k) (e_k - p)``, ``[C, C]``.
  * ``'topc'`` (BAIT Exp): the ``top_c`` columns of the most probable
    classes (ties to the lower class), ``sqrt(p_k / sum_top p) (e_k - p)``,
    ``[C, top_c]``.
  * ``'binary'`` (BAIT Binary, Bernoulli likelihood on ``p_max``):
    ``sqrt(p_max (1 - p_max))``, ``[1, 1]``.
  * ``'diagonal'``: ``sqrt(p (1 - p))`` as ``[C, 1]``; the Fisher is the
    diagonal of ``V V^T``, equal to the diagonal of the full Fisher.

  Args:
    embeddings: ``float[N, D]`` last-layer inputs ``h``.
    probs: ``float[N, C]`` softmax probabilities.
    fisher: ``'full'``, ``'topc'``, ``'binary'`` or ``'diagonal'``.
    top_c: static ``int`` in ``[1, C]``, the classes kept by ``'topc'``.

  Returns:
    `FisherFactors` ``(class_factors[N, C_f, r], embeddings[N, D])``.

  Example:
    >>> import jax.numpy as jnp, alfx
    >>> f = alfx.fisher_factors(jnp.ones((4, 3)), jnp.full((4, 5), 0.2))
    >>> f.class_factors.shape
    (4, 5, 5)
  """
  embeddings, probs = _checks.check_inputs(embeddings, probs)
  top_c = _checks.check_fisher(fisher, top_c, probs.shape[1])
  return _fisher_factors(embeddings, probs, fisher, top_c)


@functools.partial(jax.jit, static_argnames=("kind", "top_c"))
def _fisher_factors(embeddings, probs, kind, top_c):
  dtype = float_dtype(embeddings, probs)
  return FisherFactors(
    class_factors(probs.astype(dtype), kind, top_c), embeddings.astype(dtype)
  )


def class_factors(probs, kind, top_c):
  """``A_n``: ``[N, C_f, r]`` (see `fisher_factors`)."""
  c = probs.shape[1]
  if kind == "full":
    eye = jnp.eye(c, dtype=probs.dtype)
    return jnp.sqrt(probs)[:, None, :] * (eye[None] - probs[:, :, None])
  if kind == "topc":
    values, classes = lax.top_k(probs, top_c)  # ties: lower class first
    total = jnp.sum(values, axis=-1, keepdims=True)
    weight = jnp.sqrt(values / jnp.where(total > 0, total, 1))
    onehot = jnp.arange(c)[None, :, None] == classes[:, None, :]
    return weight[:, None, :] * (onehot.astype(probs.dtype) - probs[:, :, None])
  if kind == "binary":
    p_max = jnp.max(probs, axis=-1)
    return jnp.sqrt(jnp.maximum(p_max * (1 - p_max), 0))[:, None, None]
  if kind == "diagonal":
    return jnp.sqrt(jnp.maximum(probs * (1 - probs), 0))[:, :, None]
  raise ValueError(kind)


def class_outer(factors):
  """``A_n A_n^T``, ``[N, C_f, C_f]``."""
  return jnp.einsum("nar,nbr->nab", factors, factors)


def float_dtype(*arrays):
  """The working dtype: the inputs' common float dtype (float32 otherwise)."""
  dtype = jnp.result_type(*arrays)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32

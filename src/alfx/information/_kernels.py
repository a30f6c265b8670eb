"""Exact information-theoretic kernels of the BALD family (nats).

Notation: predictive samples are ``log_probs[N, K, C]``, the log-probability
``log p(y = c | x_n, omega_k)`` of class ``c`` for pool point ``n`` under
posterior sample ``k``. Labels of several points are modelled jointly by the
``K``-sample mixture ``p(y_1..y_B) = mean_k prod_i p(y_i | x_i, omega_k)``.

Zero-probability classes (``log_prob = -inf``) contribute ``0 log 0 = 0``.

May import: `alfx._core`.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import validation as _validation

#: Largest number of label configurations ``C**B`` that `joint_entropy` and
#: `co_information` enumerate. Their memory is ``C**B * K`` floats.
MAX_CONFIGURATIONS = 2**20


def xlogx(p: jax.Array) -> jax.Array:
  """``p * log(p)`` with ``0 log 0 = 0`` (no NaN for p = 0; NaN stays NaN)."""
  zero = p == 0
  return jnp.where(zero, 0, p * jnp.log(jnp.where(zero, 1, p)))


def plogp_from_log(log_p: jax.Array) -> jax.Array:
  """``p * log(p)`` from ``log(p)``: ``-inf`` gives 0, NaN stays NaN."""
  impossible = log_p == -jnp.inf
  safe = jnp.where(impossible, 0, log_p)
  return jnp.where(impossible, 0, jnp.exp(safe) * safe)


@_validation.fused_checks
def entropy(log_probs: ArrayLike, axis: int = -1) -> jax.Array:
  """Shannon entropy ``H = -sum_c p_c log p_c`` of categorical distributions.

  Args:
    log_probs: ``float[..., C, ...]`` normalised log-probabilities along
      ``axis`` (natural log). ``-inf`` entries are classes of probability 0.
    axis: the class axis.

  Returns:
    ``float[...]``: the entropies in nats, ``axis`` removed.

  Example:
    >>> import jax.numpy as jnp, alfx
    >>> float(alfx.entropy(jnp.log(jnp.array([0.5, 0.5]))))  # log 2
    0.693...
  """
  log_probs = _validation.as_float_array(log_probs, "log_probs", "[..., C]")
  return _validation.run_core(_entropy, log_probs, axis=axis)


@functools.partial(jax.jit, static_argnames="axis")
def _entropy(log_probs: jax.Array, axis: int) -> jax.Array:
  return -jnp.sum(plogp_from_log(log_probs), axis=axis)


def _mean_log_probs(log_probs: jax.Array) -> jax.Array:
  """``log mean_k p_k`` over the sample axis of ``[..., K, C]``."""
  k = log_probs.shape[-2]
  return jax.nn.logsumexp(log_probs, axis=-2) - math.log(k)


@_validation.fused_checks
def bald(log_probs: ArrayLike) -> jax.Array:
  """BALD score: mutual information between a label and the parameters.

  ``I[Y; Omega | x] = H[mean_k p_k] - mean_k H[p_k]`` (Houlsby et al. 2011),
  the expected information gain of labelling each pool point on its own.
  Rounding can make the difference negative by a few ulps; it is clipped at 0.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities.

  Returns:
    ``float[N]`` in ``[0, log C]``.

  Example:
    >>> import jax.numpy as jnp, alfx
    >>> p = jnp.array([[0.9, 0.1], [0.5, 0.5]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=2, K=2, C=2]
    >>> [round(float(s), 3) for s in alfx.bald(lp)]  # the 2 samples disagree
    [0.368, 0.0]
  """
  log_probs = _validation.check_log_probs(log_probs)
  return _validation.run_core(_bald, log_probs)


@_validation.checks_apart
@jax.jit
def _bald(log_probs: jax.Array) -> jax.Array:
  total, aleatoric = entropy_terms(log_probs)
  return jnp.maximum(total - aleatoric, 0)


def entropy_terms(log_probs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(H[mean_k p_k], mean_k H[p_k])`` of ``[..., K, C]``: ``[...]`` each.

  The mean predictive is averaged in probability space: normalised
  log-probabilities are ``<= 0`` (no ``exp`` overflows), and a mean that
  underflows float32 to 0 would have added less than 1e-35 nats to the
  entropy. One pass of ``exp`` instead of a ``logsumexp``'s two.
  """
  mean = jnp.mean(jnp.exp(log_probs), axis=-2)
  return -jnp.sum(xlogx(mean), axis=-1), conditional_entropy(log_probs)


def conditional_entropy(log_probs: jax.Array) -> jax.Array:
  """``H[Y | x, Omega] = mean_k H[p_k]`` for ``[..., K, C]``: ``[...]``."""
  return -jnp.mean(jnp.sum(plogp_from_log(log_probs), axis=-1), axis=-1)


def _check_enumerable(
  b: int, c: int, max_configurations, name: str, entries: int | None = None
):
  max_configurations = _validation.check_positive_int(
    max_configurations, "max_configurations"
  )
  entries = int(c**b) if entries is None else entries
  if entries > max_configurations:
    raise ValueError(
      f"{name}: enumerating {entries} label configurations (C={c} classes,"
      f" B={b} points) exceeds max_configurations={max_configurations};"
      " use fewer points, raise max_configurations (memory grows with"
      " it), or use alfx.batchbald, which switches to sampled"
      " configurations."
    )


def log_joint_table(log_probs: jax.Array) -> jax.Array:
  """``log p(y_1..y_B, omega_k)`` (up to 1/K) over all ``C**B`` configurations.

  Returns ``float[C**B, K]``; row ``r`` is configuration ``r`` in row-major
  order (the first point's label varies slowest).
  """
  b, k, _ = log_probs.shape
  table = log_probs[0].T  # [C, K]
  for i in range(1, b):
    table = (table[:, None, :] + log_probs[i].T[None, :, :]).reshape(-1, k)
  return table


def _log_mean_table(table: jax.Array) -> jax.Array:
  """``log p(y)`` per configuration from ``log p(y, omega_k)`` rows ``[R, K]``."""
  return jax.nn.logsumexp(table, axis=-1) - math.log(table.shape[-1])


@_validation.fused_checks
def joint_entropy(
  log_probs: ArrayLike, *, max_configurations: int = MAX_CONFIGURATIONS
) -> jax.Array:
  """Exact joint entropy of ``B`` labels under the ``K``-sample mixture.

  ``H[Y_1..Y_B] = -sum_y p(y) log p(y)`` with
  ``p(y_1..y_B) = mean_k prod_i p(y_i | x_i, omega_k)``, by enumerating the
  ``C**B`` configurations in log-space (``logsumexp`` over samples), so that
  products of small probabilities do not underflow.

  Args:
    log_probs: ``float[B, K, C]`` predictive log-probabilities of the ``B``
      points.
    max_configurations: refuse (``ValueError``) when ``C**B`` exceeds this.
      Memory is ``C**B * K`` floats (``2**20`` configurations with ``K=100``:
      400 MB in float32).

  Returns:
    ``float[]``, in ``[max_i H[Y_i], sum_i H[Y_i]]``.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> round(float(alfx.joint_entropy(lp[:2])), 3)  # of the first 2 labels
    1.373
  """
  log_probs = _validation.check_log_probs(
    log_probs, expected="[B, K, C]", pool=False
  )
  b, _, c = log_probs.shape
  _check_enumerable(b, c, max_configurations, "joint_entropy")
  return _validation.run_core(_joint_entropy, log_probs)


@jax.jit
def _joint_entropy(log_probs: jax.Array) -> jax.Array:
  log_joint = _log_mean_table(log_joint_table(log_probs))
  return -jnp.sum(plogp_from_log(log_joint))


@_validation.fused_checks
def mutual_information(
  log_probs_a: ArrayLike, log_probs_b: ArrayLike
) -> jax.Array:
  """Pairwise mutual information ``I[Y_i; Y_j]`` between labels of two sets.

  Under the mixture, ``p(y_i, y_j) = mean_k p(y_i | omega_k) p(y_j | omega_k)``
  and ``I[Y_i; Y_j] = sum p(y_i, y_j) log(p(y_i, y_j) / (p(y_i) p(y_j)))``: the
  pairwise term that 2-BALD subtracts. The joint is formed by a matrix product
  in probability space; an entry that underflows float32 (below ~1e-38)
  contributes less than 1e-35 nats.

  Args:
    log_probs_a: ``float[N, K, C]``.
    log_probs_b: ``float[M, K, C]`` with the same ``K`` and ``C``.

  Returns:
    ``float[N, M]``, non-negative. Memory ``N * M * C**2`` floats: call it on
    slices of the pool for large ``N * M``.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> mi = alfx.mutual_information(lp[:2], lp[2:])  # [2, 2]
    >>> print(np.asarray(mi, float).round(3))
    [[0.    0.12 ]
     [0.    0.007]]
  """
  log_probs_a = _validation.check_log_probs(log_probs_a, "log_probs_a")
  log_probs_b = _validation.check_log_probs(
    log_probs_b, "log_probs_b", expected="[M, K, C]"
  )
  if log_probs_a.shape[1:] != log_probs_b.shape[1:]:
    raise ValueError(
      "log_probs_a [N, K, C] and log_probs_b [M, K, C] must share K and C,"
      f" got {list(log_probs_a.shape)} and {list(log_probs_b.shape)}."
    )
  return _validation.run_core(_mutual_information, log_probs_a, log_probs_b)


@jax.jit
def _mutual_information(
  log_probs_a: jax.Array, log_probs_b: jax.Array
) -> jax.Array:
  k = log_probs_a.shape[1]
  joint = (
    jnp.einsum("nkc,mkd->nmcd", jnp.exp(log_probs_a), jnp.exp(log_probs_b)) / k
  )
  log_a = _mean_log_probs(log_probs_a)[:, None, :, None]
  log_b = _mean_log_probs(log_probs_b)[None, :, None, :]
  zero = joint == 0  # NaN stays NaN
  log_joint = jnp.log(jnp.where(zero, 1, joint))
  # KL form rather than H_a + H_b - H_ab: no cancellation between entropies.
  terms = jnp.where(zero, 0, joint * (log_joint - log_a - log_b))
  return jnp.maximum(jnp.sum(terms, axis=(-2, -1)), 0)


@_validation.fused_checks
def co_information(
  log_probs: ArrayLike, *, max_configurations: int = MAX_CONFIGURATIONS
) -> jax.Array:
  """Interaction information (co-information) of ``B`` labels.

  ``I(Y_1; ...; Y_B) = sum over non-empty subsets U of (-1)**(|U|+1) H[Y_U]``,
  with the sign convention ``I(X;Y;Z) = I(X;Y) - I(X;Y|Z)``: for one label it
  is ``H[Y_1]``, for two ``I[Y_1; Y_2]``. With it the joint entropy expands by
  inclusion-exclusion (Kirsch 2023, "Speeding Up BatchBALD: A k-BALD Family
  of Approximations for Active Learning", arXiv:2301.12631, eq. 4):
  ``H[Y_1..Y_B] = sum over non-empty U of (-1)**(|U|+1) I(U)``.

  The marginals of all ``2**B`` subsets are one table of ``(C + 1)**B``
  entries (index ``C`` on an axis = that label summed out), built by ``B``
  ``logsumexp`` passes, so the function compiles to one small program
  whatever ``B`` (no program per subset).

  Args:
    log_probs: ``float[B, K, C]``.
    max_configurations: refuse when the ``(C + 1)**B`` marginal entries
      exceed this. Memory is ``C**B * K + (C + 1)**B`` floats.

  Returns:
    ``float[]`` (can be negative for ``B >= 3``).

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> round(float(alfx.co_information(lp[:2])), 3)  # I[Y_0; Y_1]
    0.013
  """
  log_probs = _validation.check_log_probs(
    log_probs, expected="[B, K, C]", pool=False
  )
  b, _, c = log_probs.shape
  _check_enumerable(
    b, c, max_configurations, "co_information", entries=(c + 1) ** b
  )
  return _validation.run_core(co_information_unchecked, log_probs)


@jax.jit
def co_information_unchecked(log_probs: jax.Array) -> jax.Array:
  b, _, c = log_probs.shape
  table = _log_mean_table(log_joint_table(log_probs)).reshape((c,) * b)
  sign = jnp.ones((), log_probs.dtype)
  for axis in range(b):
    summed_out = jax.nn.logsumexp(table, axis=axis, keepdims=True)
    table = jnp.concatenate([table, summed_out], axis=axis)
    # An entry's subset U holds the axes not summed out: sign (-1)**|U|.
    kept = jnp.where(jnp.arange(c + 1) < c, -1.0, 1.0).astype(sign.dtype)
    sign = sign[..., None] * kept
  # I = sum_U (-1)**(|U|+1) H[Y_U] = sum_U (-1)**|U| sum_y p log p.
  return jnp.sum(sign * plogp_from_log(table))

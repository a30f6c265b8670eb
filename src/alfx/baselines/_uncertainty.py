"""Uncertainty scores: one utility per pool point from predictive samples.

The score functions map predictive samples ``log_probs[N, K, C]`` to one
utility per pool point, higher = more informative, so that every one of them
feeds `alfx.top_b` (the deterministic top-B batch) or `stochastic_batch`
(Kirsch et al. 2021) unchanged. Scores of the mean predictive
``pbar = mean_k p_k`` (entropy, margin, least confidence) also accept a
rank-2 ``log_probs[N, C]``, read as a single sample (``K = 1``); the scores
that measure disagreement between samples (variation ratios, mean standard
deviation) require the sample axis and refuse rank-2 input, which would make
them identically zero.

May import: `alfx._core`, `alfx.information`.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import validation as _validation
from alfx.information._kernels import xlogx

# ----------------------------------------------------------------------------
# Input checks.


def _check_scored_log_probs(
  log_probs, name: str, allow_rank_2: bool, expand: bool = True
) -> jax.Array:
  """``log_probs[N, K, C]`` (or ``[N, C]``, as ``K = 1``) -> ``[N, K, C]``
  (rank-2 input stays ``[N, C]`` unless ``expand``)."""
  expected = "[N, K, C] or [N, C]" if allow_rank_2 else "[N, K, C]"
  x = _validation.as_float_array(log_probs, "log_probs", expected)
  if allow_rank_2 and x.ndim == 2:
    x = _validation.check_log_probs(x, expected="[N, C]", rank=2)
    return x[:, None, :] if expand else x
  if x.ndim == 2:
    raise ValueError(
      f"{name} needs posterior samples: log_probs must have shape [N, K, C]"
      f" (rank 3), got shape {list(x.shape)}; with a single sample (rank-2"
      " [N, C]) it would be zero for every point."
    )
  return _validation.check_log_probs(x, expected=expected, rank=3)


def _mean_probs(log_probs: jax.Array) -> jax.Array:
  """``pbar = mean_k p_k``, ``[N, C]``, averaged in probability space.

  No ``logsumexp`` shift is needed: normalised log-probabilities are
  ``<= 0``, so no ``exp`` overflows, and a ``pbar_c`` below the smallest
  normal float becomes 0 (as ``exp(logsumexp)`` makes it too): in an
  entropy it would have added less than 1e-35 nats (float32). One pass
  over the input instead of two (a max over ``K``, then the shifted sum).
  """
  return jnp.mean(jnp.exp(log_probs), axis=-2)


# ----------------------------------------------------------------------------
# Scores.


@_validation.fused_checks
def predictive_entropy(log_probs: ArrayLike) -> jax.Array:
  """Entropy of the mean predictive, ``H[mean_k p_k]`` (max-entropy sampling).

  ``H[pbar] = -sum_c pbar_c log pbar_c``, zero-probability classes
  contributing 0 (a ``pbar_c`` that underflows float32 would have added
  less than 1e-35 nats). Equals BALD plus the expected aleatoric entropy
  ``mean_k H[p_k]``. Cost: one pass of ``exp`` over ``N K C`` values.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities, or
      ``float[N, C]`` (one sample, ``K = 1``).

  Returns:
    ``float[N]`` in ``[0, log C]`` nats, higher = more uncertain.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4]])
    >>> lp = jnp.log(p.reshape(2, 2, 2))  # [N=2, K=2, C=2]
    >>> [round(float(s), 3) for s in alfx.predictive_entropy(lp)]
    [0.5, 0.688]
  """
  log_probs = _check_scored_log_probs(
    log_probs, "predictive_entropy", True, expand=False
  )
  return _validation.run_core(_predictive_entropy, log_probs)


@_validation.checks_apart
@jax.jit
def _predictive_entropy(log_probs):
  """``[N, K, C]`` or ``[N, C]`` (one sample) -> ``[N]``."""
  k = log_probs.shape[-2]
  if log_probs.ndim == 2 or k == 1:
    return _single_sample_entropy(log_probs)
  return jnp.maximum(-jnp.sum(xlogx(_mean_probs(log_probs)), axis=-1), 0)


def _single_sample_entropy(log_probs):
  """``H[p]`` of ``log_probs[N, 1, C]`` or ``[N, C]`` (one sample: the
  mean predictive is the sample itself).

  One variadic reduction over the ``[N, C]`` rows forms ``sum_c p log p``
  and ``sum_c p`` from one ``exp``: the row sums are offered to the call's
  normalisation check (`alfx._core.validation.offer_row_sums`), which then
  needs no pass of its own. (XLA:CPU also runs this form ~2x faster than a
  plain sum of ``p log p`` terms.)
  """
  x = log_probs.reshape(-1, log_probs.shape[-1])
  p = jnp.exp(x)
  plogp = jnp.where(x == -jnp.inf, 0, p * x)  # 0 log 0 = 0
  zero = jnp.zeros((), x.dtype)
  neg_entropy, mass = jax.lax.reduce((plogp, p), (zero, zero), _add_pairs, (1,))
  _validation.offer_row_sums(log_probs, mass)
  return jnp.maximum(-neg_entropy, 0)


def _add_pairs(a, b):
  return a[0] + b[0], a[1] + b[1]


@_validation.fused_checks
def margin(log_probs: ArrayLike) -> jax.Array:
  """Margin utility ``-(pbar_(1) - pbar_(2))`` of the mean predictive.

  ``pbar_(1) >= pbar_(2)`` are the two largest mean class probabilities;
  margin sampling (Scheffer et al. 2001) labels the points whose top two
  classes are closest, so the utility is the negated gap: ``0`` for a tie,
  ``-1`` for a certain prediction.

  Args:
    log_probs: ``float[N, K, C]`` or ``float[N, C]`` (``K = 1``), ``C >= 2``.

  Returns:
    ``float[N]`` in ``[-1, 0]``, higher = more uncertain.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4]])
    >>> lp = jnp.log(p.reshape(2, 2, 2))  # [N=2, K=2, C=2]
    >>> [round(float(s), 3) for s in alfx.margin(lp)]
    [-0.6, -0.1]
  """
  log_probs = _check_scored_log_probs(log_probs, "margin", True)
  if log_probs.shape[-1] < 2:
    raise ValueError(
      "margin needs at least two classes: log_probs must have"
      f" shape [N, K, C] with C >= 2, got C={log_probs.shape[-1]}."
    )
  return _validation.run_core(_margin, log_probs)


@_validation.checks_apart
@jax.jit
def _margin(log_probs):
  pbar = _mean_probs(log_probs)
  # Two max-reductions rather than lax.top_k(pbar, 2), which XLA:CPU runs as
  # a sort per row (3x slower at N = 10^6). A tied maximum gives margin 0.
  first = jnp.argmax(pbar, axis=-1)
  p1 = jnp.max(pbar, axis=-1)
  others = jnp.arange(pbar.shape[-1]) != first[:, None]
  p2 = jnp.max(jnp.where(others, pbar, -jnp.inf), axis=-1)
  return p2 - p1


@_validation.fused_checks
def least_confidence(log_probs: ArrayLike) -> jax.Array:
  """Least-confidence utility ``1 - max_c pbar_c`` of the mean predictive.

  Args:
    log_probs: ``float[N, K, C]`` or ``float[N, C]`` (``K = 1``).

  Returns:
    ``float[N]`` in ``[0, 1 - 1/C]``, higher = more uncertain.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4]])
    >>> lp = jnp.log(p.reshape(2, 2, 2))  # [N=2, K=2, C=2]
    >>> [round(float(s), 3) for s in alfx.least_confidence(lp)]
    [0.2, 0.45]
  """
  log_probs = _check_scored_log_probs(log_probs, "least_confidence", True)
  return _validation.run_core(_least_confidence, log_probs)


@_validation.checks_apart
@jax.jit
def _least_confidence(log_probs):
  return 1 - jnp.max(_mean_probs(log_probs), axis=-1)


@_validation.fused_checks
def variation_ratios(log_probs: ArrayLike) -> jax.Array:
  """Variation ratio ``1 - f_mode / K`` of the samples' predicted classes.

  Each sample votes for its most probable class (``argmax_c p_k``, ties to
  the lower class index); ``f_mode`` is the number of votes of the most
  voted class (Freeman 1965; Gal et al. 2017). ``0`` when all samples agree.

  Args:
    log_probs: ``float[N, K, C]``; rank-2 input is refused (with one sample
      the ratio is always 0).

  Returns:
    ``float[N]`` in ``[0, 1 - 1/min(K, C)]``, multiples of ``1/K``.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4]])
    >>> lp = jnp.log(p.reshape(2, 2, 2))  # [N=2, K=2, C=2]
    >>> [round(float(s), 3) for s in alfx.variation_ratios(lp)]
    [0.0, 0.5]
  """
  log_probs = _check_scored_log_probs(log_probs, "variation_ratios", False)
  return _validation.run_core(_variation_ratios, log_probs)


@jax.jit
def _variation_ratios(log_probs):
  _, k, c = log_probs.shape
  votes = jax.nn.one_hot(jnp.argmax(log_probs, axis=-1), c, dtype=jnp.int32)
  mode_count = jnp.max(jnp.sum(votes, axis=-2), axis=-1)
  # (K - f) / K is exact in floating point for the integer counts.
  ratio = (k - mode_count).astype(log_probs.dtype) / k
  # argmax would turn NaN rows into plausible votes: propagate NaN instead.
  return jnp.where(jnp.any(jnp.isnan(log_probs), axis=(-2, -1)), jnp.nan, ratio)


@_validation.fused_checks
def mean_std(log_probs: ArrayLike) -> jax.Array:
  """Mean over classes of the standard deviation of ``p_k(c)`` over samples.

  ``mean_c sqrt(mean_k (p_kc - pbar_c)**2)`` (Kampffmeyer et al. 2016), the
  population standard deviation over the ``K`` samples, computed from the
  centred values (no ``E[p^2] - E[p]^2`` cancellation).

  Args:
    log_probs: ``float[N, K, C]``; rank-2 input is refused (with one sample
      the deviation is always 0).

  Returns:
    ``float[N]`` in ``[0, 1/2]``, higher = more disagreement.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4]])
    >>> lp = jnp.log(p.reshape(2, 2, 2))  # [N=2, K=2, C=2]
    >>> [round(float(s), 3) for s in alfx.mean_std(lp)]
    [0.1, 0.15]
  """
  log_probs = _check_scored_log_probs(log_probs, "mean_std", False)
  return _validation.run_core(_mean_std, log_probs)


@_validation.checks_apart
@jax.jit
def _mean_std(log_probs):
  p = jnp.exp(log_probs)
  centred = p - jnp.mean(p, axis=-2, keepdims=True)
  return jnp.mean(jnp.sqrt(jnp.mean(centred**2, axis=-2)), axis=-1)

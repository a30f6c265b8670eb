"""k-EPIG: BatchEPIG's inclusion-exclusion truncated at ``order`` pool labels.

The k-BALD idea (Kirsch 2023, arXiv:2301.12631) applied to EPIG (Bickford
Smith et al. 2023, arXiv:2304.08151), updated incrementally like
`alfx.kbald`: the derivation is in `kepig`; every increment is a signed table
of `alfx.bald_family._epig_tables`, exact or with sampled target labels
(``target_label_samples``).

May import: `alfx._core`, `alfx.information`, `alfx.bald_family._batchbald`,
`alfx.bald_family._increments`, `alfx.bald_family._epig_tables`.
"""

import math

import jax
from jax.typing import ArrayLike
import numpy as np

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family import _epig_tables as _tables
from alfx.bald_family import _increments
from alfx.information import _kernels as _information


def _rows_per_subset(u: int, c: int, m: int, s: int) -> int:
  """Rows of the signed table of one conditioning set of ``u`` labels, with
  ``s`` labels per target (``s = c``: exact)."""
  return c**u * (1 + m * s)


def _check_order(order, batch_size: int, c: int, m: int, s: int) -> int:
  order = _validation.check_positive_int(order, "order")
  order = min(order, batch_size)
  rows = sum(
    math.comb(batch_size - 1, u - 1) * _rows_per_subset(u, c, m, s)
    for u in range(1, order)
  )
  if rows > _information.MAX_CONFIGURATIONS:
    labels = "C" if s == c else "S"
    raise ValueError(
      f"order={order} with C={c} classes, M={m} targets and batch_size="
      f"{batch_size} needs increment tables of {rows} rows per step (sum"
      f" over u < order of binom(B-1, u-1) C**u (1 + M {labels})), above"
      f" alfx.MAX_CONFIGURATIONS = {_information.MAX_CONFIGURATIONS};"
      " use a lower order, fewer target inputs (target_log_probs), fewer"
      " target_label_samples, or alfx.batch_epig, which samples"
      " configurations."
    )
  return order


def _check_samples(samples, key, c: int):
  """``(target_label_samples, key)`` checked: ``(None, None)`` when exact."""
  if samples is None:
    return None, None
  if (
    isinstance(samples, bool)
    or not isinstance(samples, (int, np.integer))
    or not 1 <= samples
  ):
    raise ValueError(
      "target_label_samples must be None (exact tables) or a static int"
      f" S with 1 <= S < C = {c} (S target labels drawn per row), got"
      f" {samples!r}."
    )
  if samples >= c:
    raise ValueError(
      f"target_label_samples={samples} is not below C={c}: the exact"
      f" tables enumerate the C target labels of each row and cost the same"
      f" as C samples; use target_label_samples=None (exact), or"
      f" 1 <= S < {c}."
    )
  if key is None:
    raise ValueError(
      f"key is required: target_label_samples={samples} draws the target"
      " labels of the increment tables. Pass key=jax.random.key(seed), or"
      " target_label_samples=None for the exact tables."
    )
  return int(samples), _validation.check_key(key)


class _KEpigIncrements(_increments.SubsetIncrements):
  """k-BALD's increments with EPIG's signed tables: ``E_u`` gains
  ``sum_{V' subset S_old, |V'| = u-1} mean_m I[Y_n; Y* | Y_V', Y_j]``."""

  def __init__(
    self,
    log_probs,
    target_log_probs,
    batch_size: int,
    order: int,
    chunk_size: int,
    samples: int | None,
    key,
  ):
    super().__init__(log_probs, batch_size, order, chunk_size)
    self.m = target_log_probs.shape[0]
    self.target_log_probs = target_log_probs
    self.target_rows = _tables.target_rows(target_log_probs)
    self.samples, self.key = samples, key

  def table(self, log_tables, t, u: int):
    """The signed tables (`alfx.bald_family._epig_tables.gain_table`),
    ``C**u (1 + M C)`` rows per subset; with ``S`` sampled target labels
    (`alfx.bald_family._epig_tables.labelled_gain_table`) ``C**u (1 + M S)``,
    drawn afresh per step and subset size."""
    if self.samples is None:
      return _tables.gain_table(log_tables, self.target_rows, self.m)
    key = jax.random.fold_in(jax.random.fold_in(self.key, t), u)
    weights, _ = _bald.posterior_table(log_tables)
    labels = _tables.draw_target_labels(
      key, weights, self.target_log_probs, self.samples
    )
    return _tables.labelled_gain_table(
      log_tables, self.target_log_probs, labels
    )

  def kernel(self, probs_t, weights, rho, count):
    """The table kernel, plus the control variate of the sampled tables
    (`alfx.bald_family._epig_tables.control_variate`)."""
    value = super().kernel(probs_t, weights, rho, count)
    if self.samples is None:
      return value
    r = weights.shape[1] // (1 + self.m * self.samples)  # C**u
    return value + _tables.control_variate(
      probs_t, weights, rho, r, self.chunk_size
    )


@_validation.fused_checks
def kepig(
  log_probs: ArrayLike,
  target_log_probs: ArrayLike,
  batch_size: int,
  *,
  key: ArrayLike | None = None,
  order: int = 2,
  mask: ArrayLike | None = None,
  target_label_samples: int | None = None,
  chunk_size: int | None = None,
) -> _selection.Selection:
  r"""Greedy k-EPIG: BatchEPIG's inclusion-exclusion truncated at ``order``.

  The k-BALD idea (Kirsch 2023, "Speeding Up BatchBALD: A k-BALD Family of
  Approximations for Active Learning", arXiv:2301.12631) applied to EPIG
  (Bickford Smith et al. 2023, arXiv:2304.08151). Per target ``Y*`` (then
  averaged over the ``M`` targets):

  **Expansion.** With the co-information
  ``I(Y_T) = sum_{non-empty U subset T} (-1)**(|U|+1) H[Y_U]`` (sign
  convention ``I(X;Y;Z) = I(X;Y) - I(X;Y|Z)``), the joint entropy expands
  as ``H[Y_S] = sum_{non-empty T subset S} (-1)**(|T|+1) I(Y_T)`` and, the
  same identity conditioned on ``Y*``,
  ``H[Y_S | Y*] = sum_T (-1)**(|T|+1) I(Y_T | Y*)``. Subtracting, with
  ``I(Y_T) - I(Y_T | Y*) = I(Y_T; Y*)`` (the co-information of the labels
  of ``T`` together with ``Y*``):

    ``I[Y_S; Y*] = sum_{non-empty T subset S} (-1)**(|T|+1) I(Y_T; Y*)``.

  **Greedy gain.** Adding ``n`` to ``S`` adds the terms ``T + {n}``:
  ``I[Y_{S+n}; Y*] - I[Y_S; Y*] = sum_{T subset S} (-1)**|T| I(Y_T, Y_n; Y*)``.
  k-EPIG keeps the co-informations of at most ``order`` pool labels:

    ``gain_k(n | S) = sum_{T subset S, |T| <= order-1} (-1)**|T|``
    ``mean_m I(Y_T, Y_n; Y*_m)``;

  ``order=1`` is EPIG (top-k EPIG), ``order=2`` is 2-EPIG,
  ``EPIG(n) - sum_{j in S} mean_m I(Y_n; Y_j; Y*_m)``: a pick ``j``
  penalises the candidates that would tell the same about the targets (a
  duplicate of ``j`` above all). The terms can be negative (synergy).

  **Computation.** ``I(Y_T, Y_n; Y*) = sum_{V subset T} (-1)**|V|
  I[Y_n; Y* | Y_V]`` (co-information as iterated differences), and
  collecting the terms of each ``V`` gives, as for `alfx.kbald`,

    ``gain_k(n | S) = sum_{u=0}^{order-1} a_u(|S|) E_u(n)``,
    ``E_u(n) = sum_{V subset S, |V| = u} mean_m I[Y_n; Y*_m | Y_V]``,
    ``a_u(s) = sum_{i=0}^{order-1-u} (-1)**i binom(s - u, i)``,

  with ``E_0 = EPIG``. For ``order > |S|`` only ``a_{|S|} = 1`` survives:
  the BatchEPIG gain ``I[Y_n; Y* | Y_S]``, so ``order >= batch_size`` gives
  the picks and gains of exact `batch_epig` (with the exact tables). The
  ``E_u`` are per-point state of the scan; a pick ``j`` adds only the terms
  that contain it,
  ``E_u += sum_{V' subset S_old, |V'| = u-1} mean_m I[Y_n; Y* | Y_V', Y_j]``,
  each the signed table of `alfx.bald_family._epig_tables` on
  ``C**u (1 + M C)`` rows.

  **Sampled target labels** (``target_label_samples=S``). The table of a
  conditioning set ``V`` has, for every configuration ``r`` of ``y_V``
  (``C**u`` of them, enumerated: cheap), one row ``r`` of weight ``p(r)``
  and ``M C`` rows ``(r, m, y*)`` of weight ``-p(r, y*_m) / M``, whose sum
  is ``-p(r) mean_m E[H[Y_n | r, Y*_m]]``, the expectation over
  ``y* ~ p(y* | r, x*_m) = sum_k p(omega_k | r) p(y* | x*_m, omega_k)``.
  With ``S < C`` labels drawn from that distribution (stratified over its
  CDF: their mean is unbiased and varies no more than that of independent
  draws) the rows become ``(r, m, s)`` of weight ``-p(r) / (M S)``. The
  table kernel is linear in the row weights, so its value is an unbiased
  estimate of the exact increment ``mean_m I[Y_n; Y*_m | Y_V]`` for every
  candidate (the same rows score every candidate). A control variate
  removes most of the noise: a row's entropy ``H[p(Y_n | r, y*)]`` minus
  its first-order expansion around ``p(Y_n | r)``, whose expectation is 0
  because the posterior is a martingale
  (``E[p(omega | r, y*)] = p(omega | r)``), leaves the second-order part,
  which is the information itself
  (`alfx.bald_family._epig_tables.control_variate`; measured at
  ``N=2,000, M=100, K=20, C=10``, ``S = 1``: the spread of the differences
  between candidates' sampled increments 2.9x lower). Each step draws afresh
  (``jax.random.fold_in(key, step)``, and the subset size), so the sums
  ``E_u`` add independent zero-mean errors: unbiased gains at every step.
  The picks, an argmax of noisy gains, can differ from the exact ones.
  Rows per subset ``C**u (1 + M S)`` instead of ``C**u (1 + M C)``: a
  2-EPIG step at ``S = 1`` costs ``2 (1 + M) K C**2 N`` FLOPs, about ``C``
  times fewer.
  Use it when the exact step's ``M C**3 N`` floor is too slow (many targets
  or classes); keep ``None`` (exact, deterministic) otherwise.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities of the pool.
    target_log_probs: ``float[M, K, C]`` those of the target inputs (same
      posterior samples); replicated when the pool is sharded.
    batch_size: static ``int`` ``B``.
    key: PRNG key; required with ``target_label_samples``, ignored without.
    order: static ``int >= 1``; values above ``batch_size`` act as
      ``batch_size``.
    mask: optional ``bool[N]``, True where a point may be picked.
    target_label_samples: ``None`` (default: exact tables, all ``C`` target
      labels) or a static ``int`` ``S``, ``1 <= S < C``: ``S`` target labels
      drawn per row of the increment tables (above).
    chunk_size: static ``int``, the most pool points per chunk (see `epig`).

  Returns:
    `alfx.Selection`; ``scores`` are the order-``k`` gains (they can be
    negative for ``order >= 2``; unbiased estimates with
    ``target_label_samples``).

  Cost: EPIG once, then step ``s`` costs
  ``sum_{u=1}^{order-1} binom(s-1, u-1) 2 C**(u+1) (1 + M C) K N`` FLOPs and
  a ``1 / (2 K)`` as many logs: a 2-EPIG step is ``C`` EPIGs,
  ``2 M K C**3 N`` FLOPs and ``M C**3 N`` logs (4e10 FLOPs and 1e9 logs at
  ``N=10,000, M=100, K=20, C=10``). The co-information ``I(Y_n; Y_j; Y*_m)``
  needs every ``p(y_n, y_j, y*_m)``, ``C**3`` entries per ``(n, m)``: this
  is the floor of an exact 2-EPIG. Memory beyond the inputs: one copy of
  the probabilities, ``(order - 1) N`` floats of state, the increment
  tables (``sum_u binom(B-1, u-1) C**u (1 + M C) K`` floats) and about
  ``2**19`` floats of temporaries. With ``target_label_samples=S`` replace
  ``M C`` by ``M S`` in the tables: ``2 (1 + M S) K C**2 N`` FLOPs and
  ``(1 + M S) C**2 N`` logs a 2-EPIG step.

  Raises:
    ValueError: on bad shapes or values, increment tables above
      ``alfx.MAX_CONFIGURATIONS`` rows, ``target_label_samples`` not in
      ``[1, C)``, or a missing ``key`` with it.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> alfx.kepig(lp, lp, 2).indices.tolist()
    [0, 3]
    >>> key = jax.random.key(0)
    >>> alfx.kepig(lp, lp, 2, key=key, target_label_samples=1).indices.shape
    (2,)
  """
  log_probs, target_log_probs, mask, batch_size = _tables.check_batch_inputs(
    log_probs, target_log_probs, mask, batch_size
  )
  c = log_probs.shape[2]
  samples, key = _check_samples(target_label_samples, key, c)
  order = _check_order(
    order, batch_size, c, target_log_probs.shape[0], samples or c
  )
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  return _kepig(
    log_probs,
    target_log_probs,
    mask,
    key,
    batch_size=batch_size,
    order=order,
    samples=samples,
    chunk_size=chunk_size,
  )


@_sharding.pool_core(
  pool=("log_probs", "mask"),
  static=("batch_size", "order", "samples", "chunk_size"),
)
def _kepig(
  log_probs,
  target_log_probs,
  mask,
  key,
  batch_size,
  order,
  samples,
  chunk_size,
  axis_name=None,
):
  """`kepig` without input checks, over the local slice of the pool."""
  probs_t, marginal, _ = _bald.prepare(log_probs, chunk_size)
  first = _tables.epig_scores(probs_t, marginal, target_log_probs, chunk_size)
  if order == 1:
    return _increments.score_picks(first, mask, batch_size, axis_name)
  state = _KEpigIncrements(
    log_probs, target_log_probs, batch_size, order, chunk_size, samples, key
  )
  return _increments.increment_picks(
    log_probs,
    mask,
    probs_t,
    state,
    lambda t: state.coefficients[t][0] * first,
    batch_size,
    axis_name,
  )

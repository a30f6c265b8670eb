"""Obvious float64 NumPy references for EPIG, BatchEPIG and k-EPIG.

Written from the definitions, not from alfx's formulas: every joint
distribution of pool labels and one target label is enumerated densely
(``p(y_1..y_b, y*) = mean_k prod_i p(y_i | omega_k) p(y* | omega_k)``),
mutual informations are ``H[A] + H[B] - H[A, B]``, co-informations the
alternating sums of joint entropies over subsets, and each greedy loop is
plain Python (ties to the lowest index).
"""

import itertools

import numpy as np

from tests.reference_bald import entropy_of
from tests.reference_bald import greedy


def joint(rows):
  """Dense joint ``[C_1, ..., C_b]`` of labels whose ``[K, C_i]`` rows are given.

  ``rows`` is a list of ``log p(. | x_i, omega_k)`` arrays ``[K, C_i]``.
  """
  p = [np.exp(np.asarray(r, np.float64)) for r in rows]
  k = p[0].shape[0] if p else 1
  table = np.ones((k,))
  for i, pi in enumerate(p):
    table = table[..., None] * pi.reshape((k,) + (1,) * i + (pi.shape[1],))
  return table.mean(0)


class Problem:
  """A pool ``[N, K, C]`` and targets ``[M, K, C]``, with cached entropies."""

  def __init__(self, log_probs, target_log_probs):
    self.lp = np.asarray(log_probs, np.float64)
    self.tlp = np.asarray(target_log_probs, np.float64)
    self._cache = {}

  def h(self, subset, target=None) -> float:
    """``H[Y_U]`` (``target=None``) or ``H[Y_U, Y*_target]``."""
    key = (frozenset(int(i) for i in subset), target)
    if key not in self._cache:
      rows = [self.lp[i] for i in sorted(key[0])]
      if target is not None:
        rows.append(self.tlp[target])
      self._cache[key] = entropy_of(joint(rows)) if rows else 0.0
    return self._cache[key]

  def objective(self, subset) -> float:
    """``mean_m I[Y_S; Y*_m] = mean_m H[Y_S] + H[Y*_m] - H[Y_S, Y*_m]``."""
    m = len(self.tlp)
    return float(
      np.mean(
        [self.h(subset) + self.h([], t) - self.h(subset, t) for t in range(m)]
      )
    )

  def epig(self, n) -> float:
    return self.objective([n])

  def co_information(self, subset, target) -> float:
    """``I(Y_T; Y*_target)``: the co-information of the labels of ``T`` and
    the target label, ``sum over non-empty U of (-1)**(|U|+1) H[U]`` over
    the variables ``T + {Y*}``."""
    variables = [("pool", int(i)) for i in subset] + [("target", target)]
    total = 0.0
    for r in range(1, len(variables) + 1):
      for u in itertools.combinations(variables, r):
        pool = [i for kind, i in u if kind == "pool"]
        with_target = any(kind == "target" for kind, _ in u)
        total += (-1) ** (r + 1) * self.h(pool, target if with_target else None)
    return total

  def mean_co_information(self, subset) -> float:
    return float(
      np.mean([self.co_information(subset, t) for t in range(len(self.tlp))])
    )

  def inclusion_exclusion(self, subset, order=None) -> float:
    """``sum_{non-empty T subset S, |T| <= order} (-1)**(|T|+1)
    mean_m I(Y_T; Y*_m)`` (the full identity when ``order`` is None)."""
    subset = list(subset)
    order = len(subset) if order is None else order
    return sum(
      (-1) ** (r + 1) * self.mean_co_information(t)
      for r in range(1, min(order, len(subset)) + 1)
      for t in itertools.combinations(subset, r)
    )


def epig_scores(log_probs, target_log_probs):
  problem = Problem(log_probs, target_log_probs)
  return np.array([problem.epig(i) for i in range(len(problem.lp))])


def bald_scores(log_probs):
  """``I[Y_n; Omega] = H[mean_k p_k] - mean_k H[p_k]``."""
  p = np.exp(np.asarray(log_probs, np.float64))
  mean = p.mean(1)
  h = lambda q: -np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0).sum(-1)
  return h(mean) - h(p).mean(1)


def batch_epig_gain(problem, picks, n) -> float:
  """``mean_m I[Y_{S+n}; Y*_m] - mean_m I[Y_S; Y*_m]``, enumerated."""
  return problem.objective(list(picks) + [n]) - problem.objective(picks)


def kepig_gain(problem, picks, n, order) -> float:
  """``sum_{T subset S, |T| <= order-1} (-1)**|T| mean_m I(Y_T, Y_n; Y*_m)``."""
  return sum(
    (-1) ** r * problem.mean_co_information(list(t) + [n])
    for r in range(0, min(order - 1, len(picks)) + 1)
    for t in itertools.combinations(picks, r)
  )


def batch_epig_greedy(log_probs, target_log_probs, batch_size, mask=None):
  problem = Problem(log_probs, target_log_probs)
  return greedy(
    len(problem.lp),
    batch_size,
    mask,
    lambda s, n: batch_epig_gain(problem, s, n),
  )


def kepig_greedy(log_probs, target_log_probs, batch_size, order, mask=None):
  problem = Problem(log_probs, target_log_probs)
  return greedy(
    len(problem.lp),
    batch_size,
    mask,
    lambda s, n: kepig_gain(problem, s, n, order),
  )

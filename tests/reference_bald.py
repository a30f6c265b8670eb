"""Obvious float64 NumPy references for the BALD family's greedy selections.

Written from the definitions, not from alfx's formulas: joint entropies by
enumerating every label configuration, BatchBALD gains as differences of
joint mutual informations, k-BALD gains as signed sums of co-informations
over subsets, and each greedy loop in plain Python (ties to the lowest index).
`assert_greedy_matches` replays alfx's picks against these gains.
"""

import itertools

import numpy as np


def joint_distribution(log_probs):
  """p(y_1..y_b) = mean_k prod_i p(y_i | omega_k), dense ``[C] * b``."""
  p = np.exp(np.asarray(log_probs, np.float64))  # [b, K, C]
  b, k, c = p.shape
  table = np.ones((k,))
  for i in range(b):
    table = table[..., None] * p[i].reshape((k,) + (1,) * i + (c,))
  return table.mean(0)


def entropy_of(p):
  p = np.asarray(p, np.float64).ravel()
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


class Pool:
  """Cached joint entropies ``H[Y_U]`` of subsets ``U`` of a pool."""

  def __init__(self, log_probs):
    self.lp = np.asarray(log_probs, np.float64)
    p = np.exp(self.lp)
    self.cond = (
      -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1).mean(-1)
    )  # E_k H[Y_n | omega_k], [N]
    self._cache = {}

  def h(self, subset) -> float:
    """H[Y_U] for a set of pool indices (0 for the empty set)."""
    key = frozenset(int(i) for i in subset)
    if not key:
      return 0.0
    if key not in self._cache:
      self._cache[key] = entropy_of(joint_distribution(self.lp[sorted(key)]))
    return self._cache[key]

  def mi(self, subset) -> float:
    """I[Y_U; Omega] = H[Y_U] - sum_i E_k H[Y_i | omega_k]."""
    subset = [int(i) for i in subset]
    return self.h(subset) - sum(self.cond[i] for i in set(subset))

  def bald(self, n) -> float:
    return self.mi([n])

  def co_information(self, subset) -> float:
    """sum over non-empty V subset U of (-1)**(|V|+1) H[Y_V]."""
    subset = list(subset)
    return sum(
      (-1) ** (r + 1) * self.h(v)
      for r in range(1, len(subset) + 1)
      for v in itertools.combinations(subset, r)
    )

  def pair_mi(self, a, b) -> float:
    return self.h([a]) + self.h([b]) - self.h([a, b])


def greedy(n, batch_size, mask, gain_fn):
  """Plain greedy: at each step the available point of largest gain."""
  available = np.ones(n, bool) if mask is None else np.array(mask, bool)
  picks, gains = [], []
  for _ in range(batch_size):
    candidates = np.flatnonzero(available)
    values = np.array([gain_fn(picks, int(i)) for i in candidates])
    best = int(np.argmax(values))  # first maximum: the lowest index
    picks.append(int(candidates[best]))
    gains.append(float(values[best]))
    available[candidates[best]] = False
  return np.array(picks), np.array(gains)


def assert_greedy_matches(sel, gain_fn, n, mask=None, atol=2e-5):
  """Checks a greedy selection step by step against reference gains.

  Replays alfx's own picks: at every step the reference gain of each
  available candidate is computed; alfx's pick must attain the reference
  maximum (up to ``atol``, float32 against float64), equal the reference
  argmax whenever the runner-up is more than ``10 * atol`` behind, and its
  score must equal the reference gain of the pick.
  """
  available = np.ones(n, bool) if mask is None else np.array(mask, bool)
  picks = []
  for index, score, valid in zip(
    np.asarray(sel.indices), np.asarray(sel.scores), np.asarray(sel.valid)
  ):
    assert valid
    candidates = np.flatnonzero(available)
    gains = np.array([gain_fn(picks, int(i)) for i in candidates])
    assert available[index], (index, picks)
    got = gains[candidates == index][0]
    np.testing.assert_allclose(score, got, atol=atol)
    assert got >= gains.max() - atol, (picks, index, got, gains.max())
    top2 = np.sort(gains)[-2:] if len(gains) > 1 else None
    if top2 is not None and top2[1] - top2[0] > 10 * atol:
      assert index == candidates[np.argmax(gains)]
    picks.append(int(index))
    available[index] = False


def bald_scores(log_probs):
  pool = Pool(log_probs)
  return np.array([pool.bald(i) for i in range(len(pool.lp))])


def batchbald_greedy(log_probs, batch_size, mask=None):
  """Greedy BatchBALD: gain = I[Y_{S+n}; Omega] - I[Y_S; Omega], enumerated."""
  pool = Pool(log_probs)
  return greedy(
    len(pool.lp), batch_size, mask, lambda s, n: pool.mi(s + [n]) - pool.mi(s)
  )


def kbald_gain(pool, picks, n, order) -> float:
  """BALD(n) + sum_{T subset S, 1 <= |T| <= order-1} (-1)**|T| I(T + {n})."""
  gain = pool.bald(n)
  for r in range(1, min(order - 1, len(picks)) + 1):
    for t in itertools.combinations(picks, r):
      gain += (-1) ** r * pool.co_information(list(t) + [n])
  return gain


def kbald_greedy(log_probs, batch_size, order, mask=None):
  pool = Pool(log_probs)
  return greedy(
    len(pool.lp), batch_size, mask, lambda s, n: kbald_gain(pool, s, n, order)
  )


def kbald_value(pool, batch, order) -> float:
  """k-BALD value of a batch: eq. 6 truncated, with BALD for single points."""
  value = sum(pool.bald(i) for i in batch)
  for r in range(2, min(order, len(batch)) + 1):
    for u in itertools.combinations(batch, r):
      value += (-1) ** (r + 1) * pool.co_information(u)
  return value


def kbald_dynamic_reference(log_probs, max_batch_size, tolerance, mask=None):
  """Greedy 2-BALD; stop at the first pick with g2 <= 0 or |V3-V2| > tol |V3|.

  Returns ``(picks, gains, valid)`` of length ``max_batch_size``, with the
  rejected and later entries zero and invalid.
  """
  pool = Pool(log_probs)
  n = len(pool.lp)
  available = np.ones(n, bool) if mask is None else np.array(mask, bool)
  picks, gains = [], []
  for _ in range(max_batch_size):
    candidates = np.flatnonzero(available)
    if not len(candidates):
      break
    values = np.array([kbald_gain(pool, picks, int(i), 2) for i in candidates])
    best = int(np.argmax(values))
    j, g2 = int(candidates[best]), float(values[best])
    batch = picks + [j]
    v2, v3 = kbald_value(pool, batch, 2), kbald_value(pool, batch, 3)
    if not (g2 > 0 and abs(v3 - v2) <= tolerance * abs(v3)):
      break
    picks.append(j)
    gains.append(g2)
    available[j] = False
  m = len(picks)
  pad = max_batch_size - m
  return (
    np.array(picks + [0] * pad),
    np.array(gains + [0.0] * pad),
    np.array([True] * m + [False] * pad),
  )


def conservative_reference(
  log_probs, max_batch_size, threshold, budget=None, mask=None
):
  """Top BALD, dropping n with I[Y_n; Y_j] > threshold; pairwise TC budget."""
  pool = Pool(log_probs)
  n = len(pool.lp)
  bald = np.array([pool.bald(i) for i in range(n)])
  available = np.ones(n, bool) if mask is None else np.array(mask, bool)
  picks, scores = [], []
  tc = 0.0
  for _ in range(max_batch_size):
    candidates = np.flatnonzero(available)
    if not len(candidates):
      break
    j = int(candidates[np.argmax(bald[candidates])])
    new_tc = tc + sum(pool.pair_mi(i, j) for i in picks)
    if budget is not None and new_tc > budget:
      break
    tc = new_tc
    picks.append(j)
    scores.append(bald[j])
    available[j] = False
    for i in np.flatnonzero(available):
      if pool.pair_mi(int(i), j) > threshold:
        available[i] = False
  m = len(picks)
  pad = max_batch_size - m
  return (
    np.array(picks + [0] * pad),
    np.array(scores + [0.0] * pad),
    np.array([True] * m + [False] * pad),
  )


def batch_mutual_information(log_probs, indices) -> float:
  """Exact I[Y_batch; Omega] of a batch (the BatchBALD objective)."""
  return Pool(log_probs).mi(list(indices))

"""Obvious float64 NumPy references for the information kernels.

Written for clarity, not speed: every configuration enumerated explicitly.
"""

import itertools

import numpy as np


def random_log_probs(rng, n, k, c, *, scale=2.0, zero_fraction=0.0):
  """float64 log-probabilities [n, k, c]; optionally some classes have p = 0."""
  logits = scale * rng.standard_normal((n, k, c))
  if zero_fraction:
    drop = rng.random((n, k, c)) < zero_fraction
    drop[..., 0] = False  # keep one class possible in every row
    logits = np.where(drop, -np.inf, logits)
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def xlogx(p):
  p = np.asarray(p, np.float64)
  out = np.zeros_like(p)
  pos = p > 0
  out[pos] = p[pos] * np.log(p[pos])
  return out


def entropy(p, axis=-1):
  return -xlogx(p).sum(axis)


def bald(log_probs):
  p = np.exp(np.asarray(log_probs, np.float64))
  return entropy(p.mean(1)) - entropy(p).mean(1)


def joint_distribution(log_probs):
  """Dict-free dense joint p(y_1..y_B) over C**B configurations, shape [C]*B."""
  p = np.exp(np.asarray(log_probs, np.float64))  # [B, K, C]
  b, k, c = p.shape
  joint = np.zeros((c,) * b)
  for config in itertools.product(range(c), repeat=b):
    joint[config] = np.mean(
      [np.prod([p[i, s, config[i]] for i in range(b)]) for s in range(k)]
    )
  return joint


def joint_entropy(log_probs):
  return entropy(joint_distribution(log_probs).ravel())


def mutual_information(log_probs_a, log_probs_b):
  a = np.asarray(log_probs_a, np.float64)
  b = np.asarray(log_probs_b, np.float64)
  out = np.zeros((len(a), len(b)))
  for i in range(len(a)):
    for j in range(len(b)):
      pair = np.stack([a[i], b[j]])
      out[i, j] = (
        joint_entropy(pair[:1]) + joint_entropy(pair[1:]) - joint_entropy(pair)
      )
  return out


def subset_entropies(log_probs):
  """{subset tuple: H[Y_subset]} for every non-empty subset."""
  lp = np.asarray(log_probs, np.float64)
  b = len(lp)
  return {
    s: joint_entropy(lp[list(s)])
    for r in range(1, b + 1)
    for s in itertools.combinations(range(b), r)
  }


def co_information(log_probs):
  """Sum over non-empty subsets U of (-1)**(|U|+1) H[Y_U]."""
  return sum(
    (-1) ** (len(s) + 1) * h for s, h in subset_entropies(log_probs).items()
  )

"""Obvious float64 NumPy references for the baselines.

Written for clarity, not speed: dense distance matrices, explicit loops over
samples, picks and clusters, probabilities of whole pick sequences.
"""

import itertools

import numpy as np

from tests.reference import entropy


def mean_probs(log_probs):
  return np.exp(np.asarray(log_probs, np.float64)).mean(axis=1)


# ----------------------------------------------------------------------------
# Scores.


def predictive_entropy(log_probs):
  return entropy(mean_probs(log_probs))


def margin(log_probs):
  p = np.sort(mean_probs(log_probs), axis=-1)
  return -(p[:, -1] - p[:, -2])


def least_confidence(log_probs):
  return 1 - mean_probs(log_probs).max(axis=-1)


def variation_ratios(log_probs):
  lp = np.asarray(log_probs, np.float64)
  n, k, _ = lp.shape
  out = np.zeros(n)
  for i in range(n):
    votes = [int(np.argmax(lp[i, s])) for s in range(k)]
    mode_count = max(votes.count(c) for c in set(votes))
    out[i] = 1 - mode_count / k
  return out


def mean_std(log_probs):
  return np.exp(np.asarray(log_probs, np.float64)).std(axis=1).mean(axis=-1)


# ----------------------------------------------------------------------------
# Sampling distributions.


def stochastic_weights(utilities, mode, beta, mask):
  """Unnormalised sampling weights of stochastic batch acquisition."""
  s = np.asarray(utilities, np.float64)
  mask = np.asarray(mask, bool)
  if mode == "power":
    w = np.where(s > 0, np.power(np.where(s > 0, s, 1), beta), 0.0)
  elif mode == "softmax":
    w = np.exp(beta * (s - s[mask].max()))
  else:
    order = sorted(np.flatnonzero(mask), key=lambda i: (-s[i], i))
    rank = np.zeros(len(s))
    rank[order] = np.arange(1, len(order) + 1)
    w = np.where(mask, np.where(mask, rank, 1.0) ** -beta, 0.0)
  return np.where(mask, w, 0.0)


def sequence_probabilities(weights, length):
  """{(i_1..i_length): probability} of sequential draws without replacement."""
  w = np.asarray(weights, np.float64)
  support = np.flatnonzero(w > 0)
  probs = {}
  for seq in itertools.permutations(support, length):
    p, left = 1.0, w.copy()
    for i in seq:
      p *= left[i] / left.sum()
      left[i] = 0
    probs[tuple(int(i) for i in seq)] = p
  return probs


# ----------------------------------------------------------------------------
# BADGE.


def badge_embeddings(embeddings, probs):
  """Dense gradient embeddings g_n = (e_yhat - p_n) (x) h_n, [N, C * D]."""
  h = np.asarray(embeddings, np.float64)
  p = np.asarray(probs, np.float64)
  a = np.eye(p.shape[1])[p.argmax(1)] - p
  return np.stack([np.outer(a[n], h[n]).ravel() for n in range(len(h))])


def sq_dists(x, y):
  """Dense [len(x), len(y)] squared distances, by differences."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def badge_sequence_probabilities(embeddings, probs, mask, length):
  """{picks: probability} of BADGE's first ``length`` picks (k-means++ on g)."""
  g = badge_embeddings(embeddings, probs)
  d2 = sq_dists(g, g)
  mask = np.asarray(mask, bool)
  norms = np.where(mask, (g**2).sum(1), -np.inf)
  first = int(np.argmax(norms))
  out = {}
  for rest in itertools.permutations(
    [i for i in np.flatnonzero(mask) if i != first], length - 1
  ):
    picks, p = [first], 1.0
    for i in rest:
      w = np.where(mask, d2[:, picks].min(1), 0.0)
      w[picks] = 0
      p *= w[i] / w.sum()
      picks.append(i)
    out[tuple(int(i) for i in picks)] = p
  return out


def kmeans_pp_sequence_probabilities(x, points, length):
  """{centres: probability} of k-means++ seeding (first uniform, then D^2)."""
  d2 = sq_dists(x, x)
  points = np.asarray(points, bool)
  out = {}
  for seq in itertools.permutations(np.flatnonzero(points), length):
    p = 1 / points.sum()
    for t in range(1, length):
      w = np.where(points, d2[:, list(seq[:t])].min(1), 0.0)
      p *= w[seq[t]] / w.sum()
    out[tuple(int(i) for i in seq)] = p
  return out


# ----------------------------------------------------------------------------
# CoreSet, k-means, TypiClust.


def kcenter_greedy(x, labeled, selectable, b):
  """(picks, distances) of greedy k-center, from the dense distance matrix."""
  d = np.sqrt(sq_dists(x, x))
  centres = list(np.flatnonzero(labeled))
  available = np.asarray(selectable, bool).copy()
  picks, scores = [], []
  for _ in range(b):
    min_d = d[:, centres].min(1) if centres else np.full(len(x), np.inf)
    value = np.where(available, min_d, -np.inf)
    i = int(np.argmax(value))
    picks.append(i)
    scores.append(value[i])
    centres.append(i)
    available[i] = False
  return np.array(picks), np.array(scores)


def nearest_centroid(x, centroids):
  d2 = sq_dists(x, centroids)
  return d2.argmin(1), d2.min(1)


def lloyd(x, points, centroids, max_iterations):
  """Lloyd iterations until no label changes; returns (centroids, labels)."""
  x = np.asarray(x, np.float64)
  points = np.asarray(points, bool)
  c = np.asarray(centroids, np.float64).copy()
  labels = None
  for _ in range(max_iterations):
    new = nearest_centroid(x[points], c)[0]
    for j in range(len(c)):
      if (new == j).any():
        c[j] = x[points][new == j].mean(0)
    if labels is not None and (new == labels).all():
      break
    labels = new
  return c, nearest_centroid(x[points], c)[0]


def typicality(x_members, k_nn):
  """1 / (mean distance to the min(k_nn, m // 2) nearest others + 1e-5)."""
  x_members = np.asarray(x_members, np.float64)
  m = len(x_members)
  k = min(k_nn, m // 2)
  d = np.sqrt(sq_dists(x_members, x_members))
  np.fill_diagonal(d, np.inf)
  mean = np.sort(d, axis=1)[:, :k].mean(1) if k > 0 else np.zeros(m)
  return 1 / (mean + 1e-5)


def typiclust_select(
  x, labels, labeled, selectable, b, n_clusters, k_nn, min_cluster_size
):
  """TypiClust's selection given cluster labels (n_clusters = outside)."""
  labels = np.asarray(labels)
  labeled = np.asarray(labeled, bool)
  candidates = np.asarray(selectable, bool).copy()
  sizes = np.array([(labels == c).sum() for c in range(n_clusters)])
  covered = np.array(
    [(labeled & (labels == c)).sum() for c in range(n_clusters)]
  )
  picks, scores = [], []
  for _ in range(b):
    open_ = [c for c in range(n_clusters) if (candidates & (labels == c)).any()]
    c = min(
      open_,
      key=lambda c: (
        sizes[c] <= min_cluster_size
        and any(sizes[o] > min_cluster_size for o in open_),
        covered[c],
        -sizes[c],
        c,
      ),
    )
    members = np.flatnonzero(candidates & (labels == c))
    typ = typicality(np.asarray(x)[members], k_nn)
    j = int(np.argmax(typ))
    picks.append(int(members[j]))
    scores.append(typ[j])
    covered[c] += 1
    candidates[members[j]] = False
  return np.array(picks), np.array(scores)

"""Dense float64 NumPy reference for BAIT (issue 4), the rule verbatim.

Every Fisher matrix is formed explicitly as a d x d matrix and every trace
uses an explicit inverse: slow and obvious. Parameter index (c, i) of the last
layer is ``c * D + i`` (``np.kron(class_vector, embedding)``).
"""

import numpy as np

KINDS = ("full", "topc", "binary", "diagonal")


def random_problem(rng, n, d, c, *, scale=2.0, labeled_fraction=0.2,
                   embedding_scale=1.0):
  """float64 embeddings [n, d], probs [n, c] and a labelled mask [n]."""
  emb = embedding_scale * rng.standard_normal((n, d))
  logits = scale * rng.standard_normal((n, c))
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(-1, keepdims=True)
  labeled = rng.random(n) < labeled_fraction
  return emb, probs, labeled


def top_classes(p, top_c):
  """The top_c most probable classes, ties to the lower class index."""
  return np.argsort(-p, kind="stable")[:top_c]


def fisher_factor_matrix(h, p, kind, top_c=2):
  """V [d, r] with I(x) = V V^T (not for 'diagonal')."""
  h = np.asarray(h, np.float64)
  p = np.asarray(p, np.float64)
  c = len(p)
  if kind == "full":
    cols = [np.kron(np.sqrt(p[k]) * (np.eye(c)[k] - p), h) for k in range(c)]
  elif kind == "topc":
    top = top_classes(p, top_c)
    p_hat = p[top] / p[top].sum()
    cols = [np.kron(np.sqrt(p_hat[i]) * (np.eye(c)[k] - p), h)
            for i, k in enumerate(top)]
  elif kind == "binary":
    p_max = p.max()
    cols = [np.sqrt(p_max * (1 - p_max)) * h]
  else:
    raise ValueError(kind)
  return np.stack(cols, axis=1)


def fisher_matrix(h, p, kind, top_c=2):
  """The per-example Fisher I(x), d x d."""
  if kind == "diagonal":
    full = fisher_matrix(h, p, "full")
    return np.diag(np.diag(full))
  v = fisher_factor_matrix(h, p, kind, top_c)
  return v @ v.T


def fisher_matrices(emb, probs, kind, top_c=2):
  return np.stack([fisher_matrix(h, p, kind, top_c)
                   for h, p in zip(emb, probs)])


def bait(emb, probs, labeled, batch_size, *, kind="full", top_c=2, lam=1.0,
         oversample=2, mask=None):
  """BAIT's greedy forward-backward selection, verbatim.

  Returns:
    dict with ``indices`` (kept picks in forward order), ``scores`` (the
    forward trace reduction of each kept pick), ``forward`` (all forward
    picks), ``dropped`` (in drop order), ``M_final`` (M after the backward
    pass), ``M0``, ``F``.
  """
  emb = np.asarray(emb, np.float64)
  probs = np.asarray(probs, np.float64)
  labeled = np.asarray(labeled, bool)
  n = len(emb)
  mask = ~labeled if mask is None else np.asarray(mask, bool)
  fishers = fisher_matrices(emb, probs, kind, top_c)
  d = fishers.shape[-1]
  big_f = fishers.mean(0)
  n_lab = int(labeled.sum())
  b = batch_size
  m = lam * np.eye(d) + fishers[labeled].sum(0) / (n_lab + b)
  m0 = m.copy()
  s2 = b / (n_lab + b)

  def trace_with(mat):
    return np.trace(np.linalg.inv(mat) @ big_f)

  picks, gains = [], []
  for _ in range(oversample * b):
    base = trace_with(m)
    best, best_value = None, np.inf
    for i in range(n):
      if not mask[i] or i in picks:
        continue
      value = trace_with(m + s2 * fishers[i])  # tr((M + X X^T)^-1 F)
      if value < best_value:  # strict: ties go to the lower index
        best, best_value = i, value
    if best is None:
      break
    picks.append(best)
    gains.append(base - best_value)
    m = m + s2 * fishers[best]
  forward = list(picks)
  kept = list(range(len(picks)))
  dropped = []
  while len(kept) > b:
    values = [trace_with(m - s2 * fishers[picks[k]]) for k in kept]
    drop = kept[int(np.argmin(values))]
    m = m - s2 * fishers[picks[drop]]
    kept.remove(drop)
    dropped.append(picks[drop])
  return dict(indices=np.array([picks[k] for k in kept], np.int64),
              scores=np.array([gains[k] for k in kept]),
              forward=np.array(forward, np.int64),
              dropped=np.array(dropped, np.int64), M_final=m, M0=m0,
              F=big_f)


def forward_values(m, big_f, fishers, s2, candidates):
  """tr(M^-1 F) - tr((M + s2 I(x))^-1 F) for each candidate (float64)."""
  base = np.trace(np.linalg.inv(m) @ big_f)
  return np.array([base - np.trace(np.linalg.inv(m + s2 * fishers[i]) @ big_f)
                   for i in candidates])

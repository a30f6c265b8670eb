"""Dense float64 NumPy reference for BAIT (issue 4), the rule verbatim.

Every Fisher matrix is formed explicitly as a d x d matrix and every trace
uses an explicit inverse: slow and obvious. Parameter index (c, i) of the last
layer is ``c * D + i`` (``np.kron(class_vector, embedding)``).

Also the shared harness of the tests/test_bait_*.py files (the shape, the
paths, `problem` and `run`).
"""

import jax
import jax.numpy as jnp
import numpy as np

import alfx
from alfx.bait_family import _bait
from alfx.bait_family import _checks
from alfx.bait_family import _pool_fisher

KINDS = ("full", "topc", "binary", "diagonal")


def random_problem(
  rng, n, d, c, *, scale=2.0, labeled_fraction=0.2, embedding_scale=1.0
):
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
    cols = [
      np.kron(np.sqrt(p_hat[i]) * (np.eye(c)[k] - p), h)
      for i, k in enumerate(top)
    ]
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
  return np.stack(
    [fisher_matrix(h, p, kind, top_c) for h, p in zip(emb, probs)]
  )


def bait(
  emb,
  probs,
  labeled,
  batch_size,
  *,
  kind="full",
  top_c=2,
  lam=1.0,
  oversample=2,
  mask=None,
):
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
  return dict(
    indices=np.array([picks[k] for k in kept], np.int64),
    scores=np.array([gains[k] for k in kept]),
    forward=np.array(forward, np.int64),
    dropped=np.array(dropped, np.int64),
    M_final=m,
    M0=m0,
    F=big_f,
  )


def reference_values(m, big_f, fishers, s2, candidates, sign):
  """Forward (sign=+1): the trace reduction; backward (sign=-1): minus the
  increase of tr(M^-1 F) on removal. Larger is better in both."""
  base = np.trace(np.linalg.solve(m, big_f))
  return np.array(
    [
      sign
      * (base - np.trace(np.linalg.solve(m + sign * s2 * fishers[i], big_f)))
      for i in candidates
    ]
  )


def parameter_basis(center, kind, method, c):
  """The rows of the parameter basis that `bait` works in, ``[d', d]``.

  ``Q``: the Householder reflection mapping ``center`` to a multiple of
  ``e_1``; ``P^T``: for dense full/topc, the orthonormal basis of the class
  directions orthogonal to ``1_C`` (the Fisher's null space). Both leave
  ``tr(M^-1 F)`` unchanged; M^-1 and G restricted to the basis are ``B M^-1
  B^T`` and ``B G B^T`` because M is block diagonal across the null space.
  """
  center = np.asarray(center, np.float64)
  v = center.copy()
  v[0] += np.copysign(np.linalg.norm(center), center[0] or 1.0)
  q = np.eye(len(center)) - 2 * np.outer(v, v) / (v @ v)
  if kind == "binary":
    return q
  classes = np.eye(c)
  if method == "dense" and c > 1:
    w = np.full(c, 1 / np.sqrt(c))
    w[-1] -= 1
    classes = (np.eye(c) - 2 * np.outer(w, w) / (w @ w))[:-1]
  return np.kron(classes, q)


def dense_x(emb, probs, kind, s2, top_c=2):
  """X_n = s V_n as dense [N, d, r] (reference factors)."""
  return np.sqrt(s2) * np.stack(
    [fisher_factor_matrix(h, p, kind, top_c) for h, p in zip(emb, probs)]
  )


# ---------------------------------------------------------------------------
# The harness of the tests/test_bait_*.py files: one shared shape, so that
# the suite compiles each path only a handful of times (values vary freely).

# (fisher, method): every path of the implementation.
PATHS = [
  ("full", "dense"),
  ("full", "structured"),
  ("topc", "dense"),
  ("topc", "structured"),
  ("binary", "dense"),
  ("diagonal", "auto"),
]
PATH_IDS = [f"{k}-{m}" for k, m in PATHS]
N, D, C, B = 96, 5, 4, 3  # the shared shape: d = 20
CAP = 64  # static labelled capacity of the structured path in these tests
# One representative path per kind, for the variants that need a compile each.
PER_KIND = [
  ("full", "dense"),
  ("topc", "structured"),
  ("binary", "dense"),
  ("diagonal", "auto"),
]
PER_KIND_IDS = [f"{k}-{m}" for k, m in PER_KIND]


def problem(rng, n=N, dim=D, c=C, labeled_fraction=0.2, **kw):
  """`random_problem` at the shared shape by default."""
  return random_problem(rng, n, dim, c, labeled_fraction=labeled_fraction, **kw)


def run(emb, probs, labeled, b, kind, method, dtype, **kw):
  """`alfx.bait_family` on ``dtype`` inputs, as NumPy (structured: capacity CAP)."""
  if method == "structured":
    kw.setdefault("labeled_capacity", CAP)
  sel = alfx.bait(
    jnp.asarray(emb, dtype),
    jnp.asarray(probs, dtype),
    b,
    labeled=jnp.asarray(labeled),
    fisher=kind,
    method=method,
    **kw,
  )
  return jax.tree.map(np.asarray, sel)


def state(
  emb,
  probs,
  labeled,
  b,
  kind,
  method,
  *,
  lam=1.0,
  oversample=2,
  top_c=2,
  capacity=None,
  mask=None,
):
  """The private state hook: (Selection, per-point U/W and the history)."""
  emb = jnp.asarray(emb)
  probs = jnp.asarray(probs)
  labeled = jnp.asarray(labeled)
  mask = ~labeled if mask is None else jnp.asarray(mask)
  if method == "structured" and capacity is None:
    capacity = CAP
  top_c = top_c if kind == "topc" else 1
  method = _checks.resolve_method(method, kind, probs.shape[1], emb.shape[1])
  stats = _pool_fisher.pool_fisher_core(
    emb, probs, None, kind, top_c, method, None
  )
  sel, st = _bait._bait(
    emb,
    probs,
    labeled,
    mask,
    lam,
    stats,
    None,
    stats.quad,
    b,
    kind,
    top_c,
    oversample,
    method,
    None,
    capacity,
    with_state=True,
  )
  return jax.tree.map(np.asarray, sel), jax.tree.map(np.asarray, st)

"""BAIT's input checks: arrays, options, the path, what the dtype resolves.

Every check of `fisher_factors`, `pool_fisher` and `bait` beyond the shared
ones of `alfx._core.validation`, the resolution of ``method='auto'`` and
`check_resolved`, which turns picks the core marked unresolved into the
error that says what to change.

May import: `alfx._core`.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from alfx._core import validation as _validation

FISHER_KINDS = ("full", "topc", "binary", "diagonal")
METHODS = ("auto", "dense", "structured")

#: ``method='auto'`` uses the dense path while ``d = C * D`` is at most this.
DENSE_MAX_DIM = 8192

#: The largest ``eps(dtype) * |U|^2`` (``|U|``: the Frobenius norm of a
#: pick's ``X^T M^-1 X``, or of the quantities the structured set-up cancels)
#: at which `bait` still trusts its picks; see `alfx.bait_family._bait`.
RESOLUTION = 0.01

#: `bait` warns when ``eps(dtype) * max_n |h_n| / rms_n |h_n - mean|`` is
#: above this: the embeddings' common offset leaves fewer than ~3 digits for
#: their spread (float32: offsets beyond ~1e4 times the spread).
_OFFSET_WARNING = 1e-3


def check_inputs(embeddings, probs):
  """``embeddings[N, D]`` and ``probs[N, C]``: shapes, dtypes, values."""
  embeddings = _validation.check_matrix(embeddings, "embeddings")
  n = embeddings.shape[0]
  probs = _validation.check_probs(probs, n)
  return embeddings, probs


@jax.jit
def _range_stats(h):
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  sq = jnp.sum(h * h, axis=1)
  spread = jnp.sqrt(jnp.mean(jnp.sum((h - jnp.mean(h, 0)) ** 2, axis=1)))
  return jnp.max(sq), jnp.max(jnp.abs(h)), jnp.sqrt(jnp.max(sq)), spread


def check_range(embeddings):
  """What the dtype of ``embeddings`` cannot hold (concrete input only).

  BAIT's Fisher information is built from ``h h^T``: squared norms that
  overflow are refused. An offset so large that the dtype keeps fewer than
  ~3 digits of the spread gets a warning (picks then answer the rounded
  problem). Scaling ``embeddings`` by ``s`` and ``lam`` by ``s^2`` leaves
  every pick unchanged.
  """
  if not _validation.is_concrete(embeddings):
    return
  dtype = embeddings.dtype
  max_sq, max_abs, max_norm, spread = (
    float(v) for v in _validation.to_host(_range_stats, embeddings)
  )
  info = jnp.finfo(dtype)
  if not max_sq <= float(info.max):
    raise ValueError(
      f"embeddings (shape [N, D], {dtype}) have entries up to"
      f" {max_abs:.3g}, whose squares overflow {dtype} (largest"
      f" {float(info.max):.3g}): BAIT builds its Fisher information from"
      " h h^T. Divide embeddings by s and lam by s**2 (the picks are"
      " unchanged), or use float64: jax.config.update('jax_enable_x64',"
      " True) and float64 embeddings and probs."
    )
  ratio = float(info.eps) * max_norm / spread if spread > 0 else 0.0
  if ratio > _OFFSET_WARNING:
    warnings.warn(
      f"embeddings ({dtype}) share a large offset: norms up to"
      f" {max_norm:.3g} against a spread (rms distance to their mean) of"
      f" {spread:.3g}, so {dtype} keeps only about"
      f" {max(0, round(-math.log10(ratio)))} significant digits of the"
      " spread and BAIT's picks answer that rounded problem. Use float64:"
      " jax.config.update('jax_enable_x64', True) and float64 embeddings"
      " and probs.",
      stacklevel=3,
    )


def check_resolved(sel, dtype, lam, method):
  """Raises when the core marked picks invalid on concrete, checked input.

  After the value checks the only cause left is `RESOLUTION` (or a
  non-finite intermediate): the problem is beyond the dtype.
  """
  if bool(np.all(np.asarray(sel.valid))):
    return
  lam = float(np.asarray(lam))
  fixes = []
  if jnp.finfo(dtype).bits < 64:
    fixes.append(
      "use float64: jax.config.update('jax_enable_x64', True) and"
      " float64 embeddings and probs"
    )
  if method == "structured":
    fixes.append(
      "use method='dense' (a d x d Cholesky, accurate further; d = C * D)"
    )
  fixes.append("use a larger lam")
  raise ValueError(
    f"lam={lam:.3g} is too small for these embeddings in {dtype}"
    f" (method={method!r}): the Fisher information of the points BAIT"
    f" picks exceeds lam I so far that its rank-r updates cancel more than"
    f" {dtype}'s precision (eps={float(jnp.finfo(dtype).eps):.2g}) and the"
    " picks would not be BAIT's. This happens with few labelled points and"
    " embeddings whose squared norm is large against lam (e.g. a large"
    " common offset). To fix: " + "; or ".join(fixes) + "."
  )


def check_in_pool(in_pool, n):
  """``in_pool``: None, or a ``bool[N]`` that marks at least one row."""
  if in_pool is None:
    return None
  in_pool = _validation.check_mask(in_pool, n, name="in_pool")
  if _validation.is_concrete(in_pool) and not bool(
    _validation.to_host(jnp.any, in_pool)
  ):
    raise ValueError(
      f"in_pool (shape [N={n}]) marks no row as part of the pool: F, the"
      " pool's mean Fisher information, would average over nothing. Pass"
      " in_pool=None for every row, or ShardedPool.in_pool of a pool"
      " padded by alfx.shard_pool."
    )
  return in_pool


def check_fisher(kind, top_c, c):
  """The Fisher kind; returns ``top_c`` (1 unless ``kind='topc'``)."""
  _validation.check_choice(kind, "fisher", FISHER_KINDS)
  if kind != "topc":
    return 1
  top_c = _validation.check_positive_int(top_c, "top_c")
  if top_c > c:
    raise ValueError(
      f"top_c={top_c} is larger than the number of classes"
      f" (probs has shape [N, C={c}])."
    )
  return top_c


def check_lam(lam):
  """``lam``, the ridge of ``M``: a finite number > 0, static or traced."""
  return _validation.check_scalar(lam, "lam", positive=True)


def check_capacity(labeled_capacity, labeled, n):
  """The structured path's static bound on the labelled count (see `bait`).

  Given: checked against the labelled count when ``labeled`` is concrete.
  None: the count rounded up to a power of two (at least 8) when concrete,
  ``N`` under ``jit``. At most ``N``.
  """
  count = None
  if _validation.is_concrete(labeled):
    count = int(_validation.to_host(_validation.count_selectable, labeled))
  if labeled_capacity is not None:
    capacity = _validation.check_positive_int(
      labeled_capacity, "labeled_capacity"
    )
    if count is not None and count > capacity:
      raise ValueError(
        f"labeled_capacity={capacity} is smaller than the number of"
        f" labelled points ({count}): the structured path would drop"
        f" some. Pass labeled_capacity >= {count}, or None (the count"
        " rounded up to a power of two)."
      )
  elif count is not None:
    capacity = 1 << max(3, (max(count, 1) - 1).bit_length())
  else:
    capacity = n
  return min(capacity, n)


def resolve_method(method, kind, c, d):
  """The path that runs: ``'dense'``, ``'structured'`` or ``'diagonal'``."""
  _validation.check_choice(method, "method", METHODS)
  if kind == "diagonal":
    return "diagonal"
  if kind == "binary":
    if method == "structured":
      raise ValueError(
        "method='structured' is for fisher='full' or 'topc';"
        " 'binary' has d = D and always runs dense."
      )
    return "dense"
  if method == "auto":
    return "dense" if c * d <= DENSE_MAX_DIM else "structured"
  return method

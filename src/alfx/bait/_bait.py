"""BAIT and its Fast-Fishing approximations (Ash et al. 2021; Huseljic et al.).

Notation. ``N`` pool points with last-layer inputs ``h_n`` (``embeddings[N,
D]``) and softmax outputs ``p_n`` (``probs[N, C]``). The last layer has ``d =
C_f * D`` parameters, parameter ``(a, i)`` at index ``a * D + i``. Every
per-example Fisher used here is a Kronecker product

    I(x_n) = V_n V_n^T,   V_n = A_n (x) h_n,   A_n: [C_f, r] "class factor",

(column ``k`` of ``V_n`` is ``A_n[:, k] (x) h_n``):

* ``full``: ``C_f = C``, ``r = C``, ``A_n[:, k] = sqrt(p_k) (e_k - p)``, so
  ``A_n A_n^T = diag(p) - p p^T``.
* ``topc`` (BAIT Exp): the columns of ``full`` for the ``top_c`` most probable
  classes, with ``p_k`` renormalised over them in the square-root weight only.
* ``binary`` (BAIT Binary): ``C_f = r = 1``, ``A_n = sqrt(p_max (1 - p_max))``.
* ``diagonal``: the diagonal of the full Fisher, ``diag(V V^T)`` with ``A_n =
  sqrt(p (1 - p))`` as a ``[C, 1]`` column: everything is elementwise.

BAIT (the rule of issue 4, as the public implementations do it): ``F`` is the
mean Fisher over the pool, ``M = lam I + sum_{labelled} I(x) / (L + B)`` and
each candidate enters as ``X_n = s V_n`` with ``s^2 = B / (L + B)``. Forward:
``oversample * B`` greedy picks, each maximising the reduction of
``tr(M^-1 F)``, ``tr((I_r + U_n)^-1 W_n)`` with ``U_n = X_n^T M^-1 X_n`` and
``W_n = X_n^T M^-1 F M^-1 X_n``; then ``M += X X^T``. Backward: while more
than ``B`` are picked, drop the pick whose removal leaves the smallest
``tr((M - X X^T)^-1 F) = tr(M^-1 F) + tr((I - U)^-1 W)``.

Implementation. ``U_n`` and ``W_n`` (``r x r``) are formed once for every
point and then updated after each pick by the rank-``r`` Woodbury change of
``M^-1`` (``M'^-1 = M^-1 - Z S^-1 Z^T``, ``Z = M^-1 X_j``, ``S = I + U_j``):
with ``a_n = X_n^T Z`` and ``b_n = X_n^T G X_j`` (``G = M^-1 F M^-1``)

    U_n <- U_n - a_n S^-1 a_n^T
    W_n <- W_n - a_n S^-1 b_n^T - b_n S^-1 a_n^T + a_n S^-1 W_j S^-1 a_n^T,

and ``X_n^T Z`` costs one ``[N, D] @ [D, C_f r]`` product thanks to the
Kronecker structure. ``M^-1`` and ``G`` themselves are never rewritten: the
picks so far are kept as a low-rank history (``Z_k``, ``G_k X_k``, ``S_k^-1``,
``W_k``), from which ``M_t^-1 X_j`` and ``G_t X_j`` follow in ``O(t d r^2)``.
The backward pass is the same update with ``S = U_j - I``.

Two ways to form the initial ``M^-1``, ``G`` and ``U_n, W_n``:

* ``dense`` (small ``d``): ``M`` and ``F`` as ``d x d`` matrices, one
  Cholesky inverse, ``G = M^-1 F M^-1`` by two products, and the block
  quadratic forms ``h_n^T (M^-1)_{ab} h_n``, ``h_n^T G_{ab} h_n`` of every
  point by one ``[N, D] @ [D, C_f(C_f+1)/2 * D]`` product (in chunks).
* ``structured`` (``full``/``topc`` with large ``d``, e.g. ``C = 100``): ``M``
  is block-diagonal (``C`` blocks of ``D x D``; ``lam I`` for ``topc``) plus a
  rank-``L*k`` Kronecker term (``k = 1`` for ``full``: ``diag(p) - p p^T``;
  ``k = top_c`` for ``topc``), inverted by Woodbury, and ``F`` is kept as
  block-diagonal plus the pool's Kronecker atoms. No ``d x d`` matrix is ever
  formed; the one ``N^2`` term is ``X_n^T K^-1 F K^-1 X_n``.
"""

import dataclasses
import functools
import math
from typing import NamedTuple
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

from alfx._core import pool as _pool
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx._core.selection import Selection

FISHER_KINDS = ("full", "topc", "binary", "diagonal")
METHODS = ("auto", "dense", "structured")

#: ``method='auto'`` uses the dense path while ``d = C * D`` is at most this.
DENSE_MAX_DIM = 8192

#: The largest ``eps(dtype) * |U|^2`` (``|U|``: the Frobenius norm of a
#: pick's ``X^T M^-1 X``, or of the quantities the structured set-up cancels)
#: at which `bait` still trusts its picks; see `_bait`.
_RESOLUTION = 0.01

#: `bait` warns when ``eps(dtype) * max_n |h_n| / rms_n |h_n - mean|`` is
#: above this: the embeddings' common offset leaves fewer than ~3 digits for
#: their spread (float32: offsets beyond ~1e4 times the spread).
_OFFSET_WARNING = 1e-3

#: Default working-set budget (floats) for chunked pool-wide intermediates.
_CHUNK_FLOATS = 1 << 24

# r x r systems up to this size are solved by an unrolled Cholesky that is
# vectorised over the pool; larger ones use the batched LAPACK kernels.
_UNROLL_MAX_RANK = 12


# --------------------------------------------------------------------------
# Fisher factors.


class FisherFactors(NamedTuple):
  """Per-example Fisher information in factored (Kronecker) form.

  ``I(x_n) = V_n V_n^T`` with ``V_n = class_factors[n] (x) embeddings[n]``:
  column ``k`` of ``V_n`` is ``class_factors[n, :, k] (x) embeddings[n]``, a
  vector over the ``d = C_f * D`` last-layer parameters (class-major). For
  ``fisher='diagonal'`` the Fisher is the diagonal ``diag(V_n V_n^T)``.

  Attributes:
    class_factors: ``float[N, C_f, r]``, ``A_n``.
    embeddings: ``float[N, D]``, ``h_n``.
  """

  class_factors: jax.Array
  embeddings: jax.Array


def fisher_factors(embeddings, probs, *, fisher="full", top_c=2):
  """The per-example last-layer Fisher information of a softmax classifier.

  For a last layer ``logits = W h`` with softmax outputs ``p``, the Fisher of
  one example is ``(diag(p) - p p^T) (x) h h^T``. It is returned factored,
  ``I(x_n) = V_n V_n^T`` with ``V_n = A_n (x) h_n`` (never a dense ``d x r``
  matrix per point):

  * ``'full'``: ``A_n[:, k] = sqrt(p_k) (e_k - p)``, ``[C, C]``.
  * ``'topc'`` (BAIT Exp): the ``top_c`` columns of the most probable
    classes (ties to the lower class), ``sqrt(p_k / sum_top p) (e_k - p)``,
    ``[C, top_c]``.
  * ``'binary'`` (BAIT Binary, Bernoulli likelihood on ``p_max``):
    ``sqrt(p_max (1 - p_max))``, ``[1, 1]``.
  * ``'diagonal'``: ``sqrt(p (1 - p))`` as ``[C, 1]``; the Fisher is the
    diagonal of ``V V^T``, equal to the diagonal of the full Fisher.

  Args:
    embeddings: ``float[N, D]`` last-layer inputs ``h``.
    probs: ``float[N, C]`` softmax probabilities.
    fisher: ``'full'``, ``'topc'``, ``'binary'`` or ``'diagonal'``.
    top_c: static ``int`` in ``[1, C]``, the classes kept by ``'topc'``.

  Returns:
    `FisherFactors` ``(class_factors[N, C_f, r], embeddings[N, D])``.

  Example:
    >>> import jax.numpy as jnp, alfx
    >>> f = alfx.fisher_factors(jnp.ones((4, 3)), jnp.full((4, 5), 0.2))
    >>> f.class_factors.shape
    (4, 5, 5)
  """
  embeddings, probs = _check_inputs(embeddings, probs)
  _validation.check_choice(fisher, "fisher", FISHER_KINDS)
  top_c = _check_top_c(top_c, fisher, probs.shape[1])
  return _fisher_factors(embeddings, probs, fisher, top_c)


@functools.partial(jax.jit, static_argnames=("kind", "top_c"))
def _fisher_factors(embeddings, probs, kind, top_c):
  dtype = _float_dtype(embeddings, probs)
  return FisherFactors(_class_factors(probs.astype(dtype), kind, top_c),
                       embeddings.astype(dtype))


def _class_factors(probs, kind, top_c):
  """``A_n``: ``[N, C_f, r]`` (see `fisher_factors`)."""
  c = probs.shape[1]
  if kind == "full":
    eye = jnp.eye(c, dtype=probs.dtype)
    return jnp.sqrt(probs)[:, None, :] * (eye[None] - probs[:, :, None])
  if kind == "topc":
    values, classes = lax.top_k(probs, top_c)  # ties: lower class first
    total = jnp.sum(values, axis=-1, keepdims=True)
    weight = jnp.sqrt(values / jnp.where(total > 0, total, 1))
    onehot = (jnp.arange(c)[None, :, None] == classes[:, None, :])
    return weight[:, None, :] * (onehot.astype(probs.dtype)
                                 - probs[:, :, None])
  if kind == "binary":
    p_max = jnp.max(probs, axis=-1)
    return jnp.sqrt(jnp.maximum(p_max * (1 - p_max), 0))[:, None, None]
  if kind == "diagonal":
    return jnp.sqrt(jnp.maximum(probs * (1 - probs), 0))[:, :, None]
  raise ValueError(kind)


def _class_outer(factors):
  """``A_n A_n^T``, ``[N, C_f, C_f]``."""
  return jnp.einsum("nar,nbr->nab", factors, factors)


# --------------------------------------------------------------------------
# A well-conditioned basis of the last layer's parameters.
#
# tr(M^-1 F) is invariant under any orthogonal change of basis of the
# parameters (M, F and every I(x) are conjugated alike, and lam I stays lam
# I). Two such changes make float32 accurate where the standard basis is not:
#
# * Embeddings with a large common offset mu (ReLU features, or the issue's
#   shared offset of 1e3) make every D x D block of M and F ~ |mu|^2 along mu
#   and O(spread^2) across it; in the standard basis the small part is lost
#   to the rounding of the large entries (eps |mu|^2 ~ 0.6 at |mu| = 2e3,
#   against lam = 1). A Householder reflection Q that maps mu to e_1 keeps
#   the two scales in separate coordinates: h' = Q (h - mu) - s |mu| e_1.
# * For full and topc, every column of A_n sums to zero over the classes, so
#   1_C (x) R^D is a null space of every Fisher: there M = lam I and F = 0,
#   while the quadratic forms h^T (M^-1)_ab h carry a common |h|^2 / (C lam)
#   that cancels in A_n^T (.) A_n (error eps |h|^2 / lam). The dense path
#   drops that null space: the class factors become P^T A_n, ``[C - 1, r]``,
#   P an orthonormal basis of 1_C^perp. The trace is unchanged (M is block
#   diagonal across 1_C^perp and 1_C, and F vanishes on the latter), and d
#   shrinks from C D to (C - 1) D.
#
# Measured at N=12, D=5, C=3, two labelled, offsets 1e3 (float32 against
# float64 picks): see tests/test_bait.py::test_float32_offset_*.


def _pool_center(h, row_weight, n_total, axis_name):
  """The mean embedding over the pool's rows (``row_weight``: 0/1 or None)."""
  if row_weight is not None:
    h = h * row_weight[:, None]
  return _pool.psum(jnp.sum(h, axis=0), axis_name) / n_total


def _rotate(h, center):
  """``Q h`` for the Householder reflection ``Q`` that maps ``center`` to
  ``-s |center| e_1`` (``s`` the sign of ``center[0]``), computed as ``Q (h -
  center) - s |center| e_1`` so that the coordinates across ``center`` keep
  the precision of ``h - center``."""
  norm = jnp.sqrt(jnp.sum(center * center))
  sign = jnp.where(center[0] >= 0, 1, -1).astype(h.dtype)
  v = center.at[0].add(sign * norm)
  vv = jnp.sum(v * v)
  coef = jnp.where(vv > 0, 2 / jnp.where(vv > 0, vv, 1), 0) * v
  x = h - center
  x = x - (x @ v)[:, None] * coef
  return x.at[:, 0].add(-sign * norm)


def _null_free(kind, c):
  """Whether the dense path drops the class null space ``1_C`` (see above)."""
  return kind in ("full", "topc") and c > 1


def _project_classes(x):
  """``P^T x`` over axis -2 (``[..., C, q] -> [..., C - 1, q]``).

  ``P``: the first ``C - 1`` columns of the Householder reflection ``H = I -
  2 w w^T / w^T w``, ``w = 1_C / sqrt(C) - e_C``, which maps ``1_C /
  sqrt(C)`` to ``e_C``: an orthonormal basis of ``1_C^perp``, applied in
  ``O(C q)``.
  """
  c = x.shape[-2]
  w = np.full((c,), 1 / math.sqrt(c))
  w[-1] -= 1
  w = jnp.asarray(w / np.linalg.norm(w) * math.sqrt(2), x.dtype)
  y = x - w[:, None] * jnp.einsum("a,...aq->...q", w, x)[..., None, :]
  return y[..., :-1, :]


def _dense_factors(probs, kind, top_c):
  """Class factors of the dense path, ``[N, C_f, r]``, null space dropped."""
  factors = _class_factors(probs, kind, top_c)
  if _null_free(kind, probs.shape[1]):
    factors = _project_classes(factors)
  return factors


# --------------------------------------------------------------------------
# The labelled-set-independent precomputation.


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("blocks", "quad", "center"),
                   meta_fields=("fisher", "top_c", "method"))
@dataclasses.dataclass(frozen=True)
class PoolFisher:
  """The pool's Fisher information ``F``, in the form `bait` consumes.

  ``F = mean_n I(x_n)`` over the whole pool (labelled and not) does not depend
  on the labelled set or the picks: compute it once per model with
  `pool_fisher` and pass it to every `bait` call on that pool. A pytree
  (``fisher``, ``top_c`` and ``method`` are static), so it passes through
  ``jit``.

  Attributes:
    fisher: the Fisher kind it was computed for.
    top_c: the ``top_c`` of ``'topc'`` (1 otherwise).
    method: ``'dense'``, ``'structured'`` or ``'diagonal'``.
    blocks: ``dense``: ``float[C_f (C_f + 1) / 2, D, D]``, the blocks
      ``F_ab`` for ``a <= b`` in row-major upper-triangle order (each block is
      symmetric; ``F_ba = F_ab``). ``diagonal``: ``float[C, D]``, the
      diagonal of ``F``. ``structured`` ``full``: ``float[C, D, D]``, the
      block-diagonal part ``mean_n p_na h_n h_n^T``. ``structured`` ``topc``:
      None.
    quad: ``structured`` ``topc`` only: ``float[N, top_c, top_c]``,
      ``V_n^T F V_n`` for every point (the pool's one ``N^2`` term).
    center: ``float[D]``, the pool's mean embedding (None for
      ``diagonal``). ``blocks`` are expressed in the basis where the
      embeddings are reflected by the Householder reflection that maps
      ``center`` to a multiple of ``e_1``, and for ``dense`` ``full``/``topc``
      over the ``C_f = C - 1`` class directions orthogonal to ``1_C`` (the
      Fisher's null space): a well-conditioned basis in which ``tr(M^-1 F)``
      is unchanged.
  """

  fisher: str
  top_c: int
  method: str
  blocks: jax.Array | None
  quad: jax.Array | None
  center: jax.Array | None = None


def pool_fisher(embeddings, probs, *, fisher="full", top_c=2, method="auto",
                chunk_size=None, in_pool=None):
  """The pool's Fisher information ``F = mean_n I(x_n)``, for `bait`.

  Everything in BAIT that does not depend on the labelled set or the picks.
  ``dense`` (``d = C_f D`` up to `DENSE_MAX_DIM`, and always for
  ``binary``): the ``C_f (C_f + 1) / 2`` distinct ``D x D`` blocks of ``F``,
  ``2 N D^2 C_f (C_f + 1) / 2`` FLOPs (4e11 for N=50,000, D=384, C=10),
  memory ``C_f (C_f + 1) D^2 / 2`` floats. ``diagonal``: ``[C, D]``, ``2 N C
  D`` FLOPs. ``structured`` ``full``: the block-diagonal part (``C D^2``
  floats); ``structured`` ``topc``: ``V_n^T F V_n`` for every point,
  ``O(N^2 (D + C top_c^2))`` FLOPs, ``N top_c^2`` floats.

  Args:
    embeddings: ``float[N, D]``.
    probs: ``float[N, C]``.
    fisher: ``'full'``, ``'topc'``, ``'binary'`` or ``'diagonal'``.
    top_c: static ``int``, classes kept by ``'topc'``.
    method: ``'auto'``, ``'dense'`` or ``'structured'`` (as in `bait`).
    chunk_size: static rows per chunk of the pool-wide products (default:
      a working set of about 64 MB).
    in_pool: optional ``bool[N]``, the rows that belong to the pool (``F``
      averages over them only); default all. Pass ``ShardedPool.in_pool``
      for a pool padded by `alfx.shard_pool`.

  Returns:
    A `PoolFisher`. Sharded inputs (see `alfx.shard_pool`): each device sums
    its rows, one all-reduce of the result, replicated; structured topc's
    per-point ``quad`` stays split like the pool (its ``N^2`` sum passes the
    shards' blocks round a ring of the devices).
  """
  embeddings, probs = _check_inputs(embeddings, probs)
  _check_range(embeddings)
  _validation.check_choice(fisher, "fisher", FISHER_KINDS)
  top_c = _check_top_c(top_c, fisher, probs.shape[1])
  method = _resolve_method(method, fisher, probs.shape[1],
                           embeddings.shape[1])
  chunk_size = _check_chunk_size(chunk_size)
  in_pool = _check_in_pool(in_pool, probs.shape[0])
  return _pool_fisher(embeddings, probs, in_pool, kind=fisher, top_c=top_c,
                      method=method, chunk_size=chunk_size)


def _pool_fisher_specs(axis, static):
  """``out_specs`` of a sharded `_pool_fisher`: ``quad`` stays split."""
  stats = PoolFisher(static["kind"], static["top_c"], static["method"], P(),
                     P(axis), P())
  return (stats, P(axis)) if static.get("with_rotated") else stats


@_sharding.pool_core(pool=("embeddings", "probs", "in_pool"),
                     static=("kind", "top_c", "method", "chunk_size",
                             "with_rotated"),
                     out_specs=_pool_fisher_specs, selection=False)
def _pool_fisher(embeddings, probs, in_pool, kind, top_c, method, chunk_size,
                 axis_name=None, with_rotated=False):
  """`pool_fisher` without checks; ``in_pool`` None means every row.

  ``with_rotated``: also return the embeddings in F's basis (`_rotate`), for
  `bait` to reuse (one pass over the pool fewer; not for ``diagonal``).
  """
  stats, h = _pool_fisher_rotated(embeddings, probs, in_pool, kind, top_c,
                                  method, chunk_size, axis_name)
  return (stats, h) if with_rotated else stats


def _pool_fisher_rotated(embeddings, probs, in_pool, kind, top_c, method,
                         chunk_size, axis_name):
  """``(PoolFisher, embeddings in its basis)``."""
  dtype = _float_dtype(embeddings, probs)
  h = embeddings.astype(dtype)
  probs = probs.astype(dtype)
  row_weight, n_total = _pool_rows(in_pool, h.shape[0], dtype, axis_name)
  if method == "diagonal":
    q = _class_factors(probs, kind, top_c)[..., 0]**2
    if row_weight is not None:
      q = q * row_weight[:, None]
    blocks = _pool.psum(jnp.einsum("nc,ni->ci", q, h * h),
                        axis_name) / n_total
    return PoolFisher(kind, top_c, method, blocks, None), h
  center = _pool_center(h, row_weight, n_total, axis_name)
  h = _rotate(h, center)
  if method == "dense":
    weights = _pack_pairs(_class_outer(_dense_factors(probs, kind, top_c)))
    if row_weight is not None:
      weights = weights * row_weight[:, None]
    blocks = _pool.psum(_pool_gram(h, weights, chunk_size), axis_name)
    return PoolFisher(kind, top_c, method, blocks / n_total, None, center), h
  if kind == "full":
    weights = probs if row_weight is None else probs * row_weight[:, None]
    blocks = _pool.psum(_pool_gram(h, weights, chunk_size), axis_name)
    return PoolFisher(kind, top_c, method, blocks / n_total, None, center), h
  factors = _class_factors(probs, kind, top_c)
  factors_f = (factors if row_weight is None
               else factors * row_weight[:, None, None])
  quad = _topc_pool_quad(h, factors, factors_f, n_total, chunk_size,
                         axis_name)
  return PoolFisher(kind, top_c, method, None, quad, center), h


def _pool_rows(in_pool, n_local, dtype, axis_name):
  """``(row_weight, N)``: 0/1 weights (None: every row) and the pool size.

  Rows outside the pool (shard padding) get weight 0 and no count.
  """
  if in_pool is None:
    return None, _pool.size(n_local, axis_name)
  row_weight = in_pool.astype(dtype)
  return row_weight, _pool.psum(jnp.sum(row_weight), axis_name)


# --------------------------------------------------------------------------
# BAIT.


def bait(embeddings, probs, batch_size, *, labeled=None, mask=None,
         fisher="full", top_c=2, lam=1.0, oversample=2, pool_fisher=None,
         method="auto", chunk_size=None, labeled_capacity=None, in_pool=None):
  """BAIT batch selection: greedy forward-backward Fisher trace minimisation.

  Picks ``oversample * B`` points greedily, each minimising
  ``tr((M + X X^T)^-1 F)`` (equivalently maximising the reduction
  ``tr((I + X^T M^-1 X)^-1 X^T M^-1 F M^-1 X)``), ``M += X X^T`` after each;
  then, while more than ``B`` are picked, drops the pick whose removal leaves
  the smallest ``tr((M - X X^T)^-1 F)``. Here ``F`` is the mean Fisher over the
  pool, ``M = lam I + sum_{labelled} I(x) / (L + B)`` and ``X = V sqrt(B / (L
  + B))`` for the factors ``V`` of `fisher_factors`. Ties go to the lower
  index.

  Cost (``r`` and ``C_f`` as in `fisher_factors`, ``d = C_f D``, ``T_C =
  C_f (C_f + 1) / 2``, ``P = oversample * B``), dense path:

  * set-up: ``F`` (`pool_fisher`, ``2 N D^2 T_C``; pass ``pool_fisher`` to
    skip), the labelled sum ``2 L D^2 T_C``, ``M^-1`` and ``G = M^-1 F M^-1``
    (``~ 5 d^3``), the block quadratic forms of ``M^-1`` and ``G`` for every
    point (``4 N D^2 T_C``) and ``U_n, W_n`` (``4 N C_f r (C_f + r)``). At the
    CIFAR-10 shape (N=50,000, D=384, C=10, full): 4.1e11 + 3e11 + 1.6e12.
  * each forward step: ``4 N D C_f r`` (``X_n^T Z``, ``X_n^T G X_j``) ``+
    ~10 N r^3`` (updates and the ``r x r`` solves) ``+ 4 d^2`` (``M_0^-1
    X_j``, ``G_0 X_j``) ``+ 8 t d r^2`` (history): 8e9 at the CIFAR-10 shape,
    1.6e11 for all 20 forward steps. Backward steps touch only the ``P``
    picks.
  * memory: ``2 N r^2`` (``U, W``) plus ``~3 d^2`` plus ``P d r`` (history)
    plus the chunked working sets.

  Structured path (``full``/``topc`` for ``d > DENSE_MAX_DIM``): no ``d x d``
  matrix; the set-up has one ``O(N^2)`` term (``2 N^2 (C D + C^2)`` for full,
  ``2 N^2 (D + C top_c^2)`` for topc, the latter in `pool_fisher`) and each
  step costs ``~8 N D C r``.

  Args:
    embeddings: ``float[N, D]`` last-layer inputs of every pool point.
    probs: ``float[N, C]`` softmax probabilities.
    batch_size: static ``int`` ``B``.
    labeled: optional ``bool[N]``, True for the labelled points: they enter
      ``M`` and are never picked. Default None: nothing is labelled.
    mask: optional ``bool[N]``, the selectable points; default all rows
      (``in_pool`` when given). BAIT picks from ``mask & ~labeled``.
    fisher: ``'full'``, ``'topc'``, ``'binary'`` or ``'diagonal'``.
    top_c: static ``int``, classes kept by ``'topc'``.
    lam: ``lam > 0``, the ridge of ``M``.
    oversample: static ``int >= 1``; the forward pass picks ``oversample *
      B`` points (fewer if fewer are selectable; the missing picks count as
      never made).
    pool_fisher: optional `PoolFisher` of this pool (same ``fisher``,
      ``top_c`` and method) to skip its computation.
    method: ``'auto'`` (dense while ``d <= DENSE_MAX_DIM``), ``'dense'`` or
      ``'structured'`` (``full``/``topc`` only). Same picks either way.
    chunk_size: static rows per chunk of the pool-wide set-up products
      (default: a working set of about 64 MB).
    labeled_capacity: structured path only: static bound on the number of
      labelled points. Default: the labelled count rounded up to a power of
      two when ``labeled`` is concrete (so it recompiles only when the count
      crosses a power of two), ``N`` under ``jit``. Smaller than the labelled
      count: a ``ValueError`` on concrete input; under ``jit`` every pick
      comes back ``valid=False``.
    in_pool: optional ``bool[N]``, the rows that belong to the pool: ``F``
      averages over them only and the default ``mask`` is ``in_pool``.
      Default all rows. Pass ``ShardedPool.in_pool`` for a pool padded by
      `alfx.shard_pool`.

  Sharded inputs (`alfx.shard_pool`): every method runs as one SPMD program
  with the per-point ``U_n, W_n`` split over the devices and, per step,
  all-reduces of ``O(D C_f r)`` numbers (the picked point's row; structured:
  also ``F K^-1 X_j``). The structured set-up assembles the labelled rows on
  every device (``labeled_capacity`` rows) and computes its ``N^2`` term by
  passing the shards' blocks round a ring of the devices.

  Numerics: ``tr(M^-1 F)`` is evaluated in a basis where float32 keeps the
  small directions of ``M`` (embeddings reflected so that their mean lies
  along ``e_1``; for dense full/topc, the class null space ``1_C`` dropped),
  which leaves the objective unchanged. What float32 still cannot resolve is
  detected: a pick whose ``X^T M^-1 X`` is so large against ``lam I`` that
  the rank-``r`` updates lose the dtype's precision (few labelled points,
  large squared norms against ``lam``). On concrete input that raises a
  ``ValueError`` (use float64 or a larger ``lam``); under ``jit`` those picks
  come back ``valid=False``, as do non-finite scores.

  Returns:
    `Selection` ``(indices[B], scores[B], valid[B])``: the kept picks in
    forward order and, as ``scores``, the reduction of ``tr(M^-1 F)`` that
    each achieved at its forward step.

  Raises:
    ValueError: bad shapes, dtypes or options; on concrete input also
      non-finite values, squared embedding norms that overflow the dtype,
      and problems the dtype cannot resolve (see Numerics). A warning says
      when the embeddings' common offset leaves the dtype fewer than ~3
      digits of their spread.
  """
  embeddings, probs = _check_inputs(embeddings, probs)
  _check_range(embeddings)
  n, c = probs.shape
  labeled = _validation.check_mask(labeled, n, name="labeled", default=False)
  method = _resolve_method(method, fisher, c, embeddings.shape[1])
  in_pool = _check_in_pool(in_pool, n)
  if mask is not None:
    mask = _validation.check_mask(mask, n)
  elif in_pool is not None:
    mask = in_pool
  else:
    mask = jnp.ones((n,), bool)
  batch_size = _validation.check_batch_size(batch_size, mask, labeled=labeled)
  # Labelled points are never picked, whatever the mask says.
  mask = mask & ~labeled
  _validation.check_choice(fisher, "fisher", FISHER_KINDS)
  top_c = _check_top_c(top_c, fisher, c)
  oversample = _validation.check_positive_int(oversample, "oversample")
  chunk_size = _check_chunk_size(chunk_size)
  lam = _check_lam(lam)
  h = embeddings
  rotated = False
  if pool_fisher is not None:
    _check_pool_fisher(pool_fisher, fisher, top_c, method, n, c,
                       embeddings.shape[1])
  else:  # its own jit: one compile of _bait serves both cases
    rotated = method != "diagonal"
    pool_fisher = _pool_fisher(embeddings, probs, in_pool, kind=fisher,
                               top_c=top_c, method=method,
                               chunk_size=chunk_size, with_rotated=rotated)
    if rotated:  # the embeddings in F's basis: _bait need not rotate them
      pool_fisher, h = pool_fisher
    # Inside a caller's jit, XLA would otherwise fuse F's computation into
    # its consumers (measured 1.3-1.5x slower at the CIFAR-10 shape).
    pool_fisher, h = jax.lax.optimization_barrier((pool_fisher, h))
  capacity = None
  if method == "structured":
    count = None
    if _validation.is_concrete(labeled):
      count = int(_validation.to_host(_validation.count_selectable, labeled))
    if labeled_capacity is not None:
      capacity = _validation.check_positive_int(labeled_capacity,
                                                "labeled_capacity")
      if count is not None and count > capacity:
        raise ValueError(
            f"labeled_capacity={capacity} is smaller than the number of"
            f" labelled points ({count}): the structured path would drop"
            f" some. Pass labeled_capacity >= {count}, or None (the count"
            " rounded up to a power of two).")
    elif count is not None:
      capacity = 1 << max(3, (max(count, 1) - 1).bit_length())
    else:
      capacity = n
    capacity = min(capacity, n)
  quad = pool_fisher.quad  # per point: split with the pool
  pool_fisher = dataclasses.replace(pool_fisher, quad=None)
  sel = _bait(h, probs, labeled, mask, lam, pool_fisher, in_pool,
              quad, batch_size=batch_size, kind=fisher, top_c=top_c,
              oversample=oversample, method=method, chunk_size=chunk_size,
              capacity=capacity, rotated=rotated)
  if _validation.is_concrete(embeddings, probs, labeled, mask, lam,
                             pool_fisher, in_pool, quad):
    _check_resolved(sel, _float_dtype(embeddings, probs), lam, method)
  return sel


@_sharding.pool_core(
    pool=("embeddings", "probs", "labeled", "mask", "in_pool", "quad"),
    static=("batch_size", "kind", "top_c", "oversample", "method",
            "chunk_size", "capacity", "with_state", "rotated"))
def _bait(embeddings, probs, labeled, mask, lam, fisher_stats, in_pool, quad,
          batch_size, kind, top_c, oversample, method, chunk_size, capacity,
          axis_name=None, with_state=False, rotated=False):
  """`bait` without input checks; jit/vmap friendly.

  ``fisher_stats`` is replicated; its per-point ``quad`` (structured topc) is
  passed as the pool-axis ``quad`` instead. ``in_pool`` may be None.
  ``rotated``: ``embeddings`` are already in ``fisher_stats``' basis.
  """
  dtype = _float_dtype(embeddings, probs)
  h = embeddings.astype(dtype)
  probs = probs.astype(dtype)
  lam = jnp.asarray(lam, dtype)
  n_labeled = _pool.psum(jnp.sum(labeled.astype(jnp.int32)), axis_name)
  denom = (n_labeled + batch_size).astype(dtype)
  if method == "diagonal":
    factors = _class_factors(probs, kind, top_c)
    return _bait_diagonal(h, factors[..., 0]**2, labeled, mask, lam, denom,
                          fisher_stats.blocks, batch_size, oversample,
                          chunk_size, axis_name)
  if not rotated:
    h = _rotate(h, fisher_stats.center)
  scale = jnp.sqrt(batch_size / denom)
  if method == "dense":
    factors = _dense_factors(probs, kind, top_c)
    scaled = factors * scale  # A_n of X_n = s V_n
    u, w, apply0 = _dense_setup(h, factors, scaled, labeled, lam, denom,
                                fisher_stats.blocks, chunk_size, axis_name)
    overflow = jnp.zeros((), bool)
    size = None
  else:
    factors = _class_factors(probs, kind, top_c)
    scaled = factors * scale
    u, w, apply0, overflow, size = _structured_setup(
        h, probs, factors, scaled, labeled, lam, denom, batch_size / denom,
        fisher_stats.blocks, quad, in_pool, kind, chunk_size, capacity,
        axis_name)
  u0, w0 = u, w
  sel, state = _greedy(h, scaled, u, w, mask, apply0, batch_size,
                       oversample, chunk_size, axis_name, noise=size)
  size = jnp.max(state["sizes"])
  # Rank-r Woodbury updates by a pick j cancel terms of size ~|U_j| (U) and
  # ~|U_j|^2 (W) down to O(1): the relative error is ~eps |U_j|^2. Measured
  # (float32 against float64 picks, tests/test_bait.py): picks agree while
  # eps size^2 <= 0.01 and mostly differ beyond 0.1. Past _RESOLUTION the
  # picks are not a float32 answer to the problem: never valid.
  resolved = jnp.finfo(dtype).eps * size * size <= _RESOLUTION
  sel = sel._replace(valid=sel.valid & ~overflow & resolved
                     & jnp.isfinite(sel.scores))
  if with_state:
    return sel, dict(state, u0=u0, w0=w0, size=size)
  return sel


# --------------------------------------------------------------------------
# Input checks.


def _check_inputs(embeddings, probs):
  embeddings = _validation.check_matrix(embeddings, "embeddings")
  n = embeddings.shape[0]
  probs = _validation.check_probs(probs, n)
  return embeddings, probs


@jax.jit
def _range_stats(h):
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  sq = jnp.sum(h * h, axis=1)
  spread = jnp.sqrt(jnp.mean(jnp.sum((h - jnp.mean(h, 0))**2, axis=1)))
  return jnp.max(sq), jnp.max(jnp.abs(h)), jnp.sqrt(jnp.max(sq)), spread


def _check_range(embeddings):
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
      float(v) for v in _validation.to_host(_range_stats, embeddings))
  info = jnp.finfo(dtype)
  if not max_sq <= float(info.max):
    raise ValueError(
        f"embeddings (shape [N, D], {dtype}) have entries up to"
        f" {max_abs:.3g}, whose squares overflow {dtype} (largest"
        f" {float(info.max):.3g}): BAIT builds its Fisher information from"
        " h h^T. Divide embeddings by s and lam by s**2 (the picks are"
        " unchanged), or use float64: jax.config.update('jax_enable_x64',"
        " True) and float64 embeddings and probs.")
  ratio = float(info.eps) * max_norm / spread if spread > 0 else 0.0
  if ratio > _OFFSET_WARNING:
    warnings.warn(
        f"embeddings ({dtype}) share a large offset: norms up to"
        f" {max_norm:.3g} against a spread (rms distance to their mean) of"
        f" {spread:.3g}, so {dtype} keeps only about"
        f" {max(0, round(-math.log10(ratio)))} significant digits of the"
        " spread and BAIT's picks answer that rounded problem. Use float64:"
        " jax.config.update('jax_enable_x64', True) and float64 embeddings"
        " and probs.", stacklevel=3)


def _check_resolved(sel, dtype, lam, method):
  """Raises when the core marked picks invalid on concrete, checked input.

  After the value checks the only cause left is `_RESOLUTION` (or a
  non-finite intermediate): the problem is beyond the dtype.
  """
  if bool(np.all(np.asarray(sel.valid))):
    return
  lam = float(np.asarray(lam))
  fixes = []
  if jnp.finfo(dtype).bits < 64:
    fixes.append("use float64: jax.config.update('jax_enable_x64', True) and"
                 " float64 embeddings and probs")
  if method == "structured":
    fixes.append("use method='dense' (a d x d Cholesky, accurate further;"
                 " d = C * D)")
  fixes.append("use a larger lam")
  raise ValueError(
      f"lam={lam:.3g} is too small for these embeddings in {dtype}"
      f" (method={method!r}): the Fisher information of the points BAIT"
      f" picks exceeds lam I so far that its rank-r updates cancel more than"
      f" {dtype}'s precision (eps={float(jnp.finfo(dtype).eps):.2g}) and the"
      " picks would not be BAIT's. This happens with few labelled points and"
      " embeddings whose squared norm is large against lam (e.g. a large"
      " common offset). To fix: " + "; or ".join(fixes) + ".")


def _check_in_pool(in_pool, n):
  if in_pool is None:
    return None
  in_pool = _validation.check_mask(in_pool, n, name="in_pool")
  if _validation.is_concrete(in_pool) and not bool(
      _validation.to_host(jnp.any, in_pool)):
    raise ValueError(
        f"in_pool (shape [N={n}]) marks no row as part of the pool: F, the"
        " pool's mean Fisher information, would average over nothing. Pass"
        " in_pool=None for every row, or ShardedPool.in_pool of a pool"
        " padded by alfx.shard_pool.")
  return in_pool


def _check_top_c(top_c, kind, c):
  if kind != "topc":
    return 1
  top_c = _validation.check_positive_int(top_c, "top_c")
  if top_c > c:
    raise ValueError(f"top_c={top_c} is larger than the number of classes"
                     f" (probs has shape [N, C={c}]).")
  return top_c


def _check_chunk_size(chunk_size):
  if chunk_size is None:
    return None
  return _validation.check_positive_int(chunk_size, "chunk_size")


def _check_lam(lam):
  if lam is None or isinstance(lam, bool):
    raise ValueError(f"lam is required: a finite float > 0 (the ridge of M,"
                     f" default 1.0), got {lam!r}.")
  if isinstance(lam, (int, float, np.floating, np.integer)):
    if not (math.isfinite(float(lam)) and float(lam) > 0):
      raise ValueError(f"lam must be a finite float > 0, got {lam!r}.")
    return float(lam)
  lam = jnp.asarray(lam)
  if lam.shape != ():
    raise ValueError(f"lam must be a scalar, got shape {list(lam.shape)}.")
  if _validation.is_concrete(lam) and not float(lam) > 0:
    raise ValueError(f"lam must be a finite float > 0, got {float(lam)}.")
  return lam


def _resolve_method(method, kind, c, d):
  _validation.check_choice(method, "method", METHODS)
  if kind == "diagonal":
    return "diagonal"
  if kind == "binary":
    if method == "structured":
      raise ValueError("method='structured' is for fisher='full' or 'topc';"
                       " 'binary' has d = D and always runs dense.")
    return "dense"
  if method == "auto":
    return "dense" if c * d <= DENSE_MAX_DIM else "structured"
  return method


def _check_pool_fisher(stats, kind, top_c, method, n, c, dim):
  if not isinstance(stats, PoolFisher):
    raise ValueError("pool_fisher must be the PoolFisher returned by"
                     f" alfx.pool_fisher, got {type(stats).__name__}.")
  if (stats.fisher, stats.top_c, stats.method) != (kind, top_c, method):
    raise ValueError(
        f"pool_fisher was computed for fisher={stats.fisher!r},"
        f" top_c={stats.top_c}, method={stats.method!r}, but bait was called"
        f" with fisher={kind!r}, top_c={top_c}, method={method!r}.")
  c_f = 1 if kind == "binary" else c - _null_free(kind, c)
  expected = {
      "dense": ("blocks", (c_f * (c_f + 1) // 2, dim, dim)),
      "diagonal": ("blocks", (c, dim)),
      "structured": (("blocks", (c, dim, dim)) if kind == "full"
                     else ("quad", (n, top_c, top_c))),
  }[method]
  value = getattr(stats, expected[0])
  if value is None or tuple(value.shape) != expected[1]:
    raise ValueError(
        f"pool_fisher.{expected[0]} must have shape {list(expected[1])} for"
        f" this pool, got"
        f" {None if value is None else list(value.shape)}.")
  if method != "diagonal" and (stats.center is None
                               or tuple(stats.center.shape) != (dim,)):
    raise ValueError(
        f"pool_fisher.center must have shape [{dim}] for this pool, got"
        f" {None if stats.center is None else list(stats.center.shape)};"
        " pass the PoolFisher that alfx.pool_fisher returned for it.")


def _float_dtype(*arrays):
  dtype = jnp.result_type(*arrays)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _chunk_rows(chunk_size, n, per_row):
  """Rows per chunk: the given size, or a ~64 MB working set."""
  if chunk_size is not None:
    return max(1, min(chunk_size, n))
  return max(1, min(n, _CHUNK_FLOATS // max(per_row, 1)))


def _map_rows(fn, arrays, rows):
  """``fn`` over ``rows``-row chunks of the pool arrays (`_pool.chunked_map`)."""
  return _pool.chunked_map(fn, *arrays, chunk_size=rows)


def _sum_rows(fn, arrays, rows, init, masked):
  """``init + sum over row chunks of fn(*chunk)`` (`_pool.chunked_sum`).

  Rows an earlier chunk already covered are zeroed in ``arrays[masked]``,
  whose zero rows must contribute nothing.
  """

  def part(*chunk):
    *chunk, fresh = chunk
    x = chunk[masked]
    chunk[masked] = x * fresh.reshape((-1,) + (1,) * (x.ndim - 1)).astype(
        x.dtype)
    return fn(*chunk)

  return init + _pool.chunked_sum(part, *arrays, chunk_size=rows)


# --------------------------------------------------------------------------
# Packed pairs of classes and block products.


def _pairs(c):
  """Row-major upper-triangle pairs (a <= b): ``(ia, ib, index[c, c])``."""
  ia, ib = np.triu_indices(c)
  index = np.zeros((c, c), np.int32)
  index[ia, ib] = np.arange(len(ia))
  index[ib, ia] = np.arange(len(ia))
  return ia, ib, index


def _pack_pairs(x):
  """``[..., C, C]`` symmetric -> ``[..., C (C + 1) / 2]``."""
  ia, ib, _ = _pairs(x.shape[-1])
  return x[..., ia, ib]


def _unpack_pairs(x, c):
  """``[..., C (C + 1) / 2]`` -> symmetric ``[..., C, C]``."""
  return x[..., _pairs(c)[2]]


def _blocks_to_dense(blocks, c):
  """Blocks ``[T_C, D, D]`` of a symmetric matrix (a <= b) -> ``[C, D, C, D]``.

  ``X_ba = X_ab^T``; for F and M the blocks are themselves symmetric.
  """
  _, _, index = _pairs(c)
  full = blocks[index]  # [C, C, D, D]
  ia, ib = np.tril_indices(c, -1)
  full = full.at[ia, ib].set(jnp.swapaxes(full[ia, ib], -1, -2))
  return jnp.transpose(full, (0, 2, 1, 3))


def _dense_to_blocks(x4):
  """``[C, D, C, D]`` -> the blocks ``X_ab``, a <= b, ``[T_C, D, D]``."""
  ia, ib, _ = _pairs(x4.shape[0])
  return jnp.transpose(x4, (0, 2, 1, 3))[ia, ib]


#: Width of the block rows used to exploit the symmetry of ``D x D`` blocks.
_SYM_BLOCK = 64


def _block_edges(dim):
  """Static block-row boundaries ``[0, ..., dim]`` of width ~`_SYM_BLOCK`."""
  n_blocks = max(1, round(dim / _SYM_BLOCK))
  return [int(e) for e in np.linspace(0, dim, n_blocks + 1).round()]


def _weighted_gram(h, weights):
  """``sum_n weights[n, t] h_n h_n^T`` for each t: ``[T, D, D]``, symmetric.

  Only the upper block triangle is multiplied (block rows of ~64): ``(nb + 1)
  / (2 nb)`` of the FLOPs of the full product, still plain GEMMs.
  """
  k, dim = h.shape
  t = weights.shape[1]
  edges = _block_edges(dim)
  rows = []
  for e0, e1 in zip(edges[:-1], edges[1:]):
    left = (weights[:, :, None] * h[:, None, e0:e1]).reshape(k, t * (e1 - e0))
    block = (left.T @ h[:, e0:]).reshape(t, e1 - e0, dim - e0)
    # Halve the diagonal block: it is added to its own transpose below.
    block = jnp.concatenate([0.5 * block[:, :, :e1 - e0], block[:, :, e1 - e0:]],
                            axis=-1)
    rows.append(jnp.pad(block, ((0, 0), (0, 0), (e0, 0))))
  upper = jnp.concatenate(rows, axis=1)
  return upper + jnp.swapaxes(upper, -1, -2)


def _pool_gram(h, weights, chunk_size):
  """`_weighted_gram` over the whole (local) pool, in chunks."""
  n, dim = h.shape
  t = weights.shape[1]
  rows = _chunk_rows(chunk_size, n, t * dim)
  zero = jnp.zeros((t, dim, dim), h.dtype)
  return _sum_rows(_weighted_gram, (h, weights), rows, zero, masked=1)


def _labeled_gram(h, weights, labeled, chunk_size):
  """`_weighted_gram` over the labelled rows only: cost proportional to L.

  The labelled indices are compacted (static size N) and visited in chunks by
  a loop whose trip count is ``ceil(L / chunk)``.
  """
  n, dim = h.shape
  t = weights.shape[1]
  rows = _chunk_rows(chunk_size, n, t * dim)
  rows = min(rows, 256)
  index = jnp.nonzero(labeled, size=n, fill_value=0)[0]
  index = jnp.concatenate([index, jnp.zeros((rows,), index.dtype)])
  count = jnp.sum(labeled.astype(jnp.int32))

  def body(i, acc):
    take = lax.dynamic_slice(index, (i * rows,), (rows,))
    ok = (i * rows + jnp.arange(rows)) < count
    return acc + _weighted_gram(h[take], weights[take] * ok[:, None])

  zero = jnp.zeros((t, dim, dim), h.dtype)
  return lax.fori_loop(0, (count + rows - 1) // rows, body, zero)


def _quad_forms(h, blocks, chunk_size):
  """``h_n^T X_t h_n`` for every point and block ``X_t``: ``[N, T]``.

  ``h^T X h = sum_I h_I^T (S_II h_I + 2 sum_{J > I} S_IJ h_J)`` with ``S`` the
  symmetric part, over block rows ``I`` of ~64: one ``[n, D - e_I] @ [D -
  e_I, T * 64]`` product per block row, ``(nb + 1) / (2 nb)`` of the FLOPs of
  ``[n, D] @ [D, T D]``.
  """
  n, dim = h.shape
  t = blocks.shape[0]
  doubled = blocks + jnp.swapaxes(blocks, -1, -2)
  edges = _block_edges(dim)
  weights = []
  for e0, e1 in zip(edges[:-1], edges[1:]):
    row = doubled[:, e0:e1, e0:]  # [T, b, D - e0]
    row = jnp.concatenate([0.5 * row[:, :, :e1 - e0], row[:, :, e1 - e0:]],
                          axis=-1)
    weights.append(jnp.transpose(row, (2, 0, 1)).reshape(dim - e0,
                                                         t * (e1 - e0)))

  def one(hc):
    total = 0
    for (e0, e1), wt in zip(zip(edges[:-1], edges[1:]), weights):
      y = (hc[:, e0:] @ wt).reshape(hc.shape[0], t, e1 - e0)
      total = total + jnp.einsum("ntb,nb->nt", y, hc[:, e0:e1])
    return total

  rows = _chunk_rows(chunk_size, n, t * dim)
  return _map_rows(one, (h,), rows)


# --------------------------------------------------------------------------
# Dense set-up.


def _dense_setup(h, factors, scaled, labeled, lam, denom, f_blocks,
                 chunk_size, axis_name):
  """Initial ``U_n, W_n`` and the operators ``X -> M_0^-1 X, G_0 X``."""
  dim = h.shape[1]
  c_f = factors.shape[1]
  d = c_f * dim
  weights = _pack_pairs(_class_outer(factors))
  m_blocks = _pool.psum(_labeled_gram(h, weights, labeled, chunk_size),
                        axis_name)
  m = (lam * jnp.eye(d, dtype=h.dtype)
       + _blocks_to_dense(m_blocks, c_f).reshape(d, d) / denom)
  chol = jnp.linalg.cholesky(m)
  m_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=h.dtype))
  m_inv = 0.5 * (m_inv + m_inv.T)
  f = _blocks_to_dense(f_blocks, c_f).reshape(d, d)
  g = m_inv @ (f @ m_inv)
  g = 0.5 * (g + g.T)
  m_inv4 = m_inv.reshape(c_f, dim, c_f, dim)
  g4 = g.reshape(c_f, dim, c_f, dim)
  t_c = c_f * (c_f + 1) // 2
  quads = _quad_forms(
      h, jnp.concatenate([_dense_to_blocks(m_inv4), _dense_to_blocks(g4)]),
      chunk_size)
  p = _unpack_pairs(quads[:, :t_c], c_f)  # [N, C_f, C_f]
  q = _unpack_pairs(quads[:, t_c:], c_f)
  u = jnp.einsum("nar,nab,nbs->nrs", scaled, p, scaled)
  w = jnp.einsum("nar,nab,nbs->nrs", scaled, q, scaled)

  def apply0(hj, aj):
    z = jnp.einsum("aibj,j,br->air", m_inv4, hj, aj)
    y = jnp.einsum("aibj,j,br->air", g4, hj, aj)
    return z, y

  return _sym(u), _sym(w), apply0


def _sym(x):
  return 0.5 * (x + jnp.swapaxes(x, -1, -2))


def _norm(x):
  """Frobenius norm of each ``[..., r, r]`` matrix (bounds its eigenvalues)."""
  return jnp.sqrt(jnp.sum(x * x, axis=(-2, -1)))


# --------------------------------------------------------------------------
# Structured set-up (large d): block-diagonal + Kronecker low rank.


def _atoms(probs, factors, kind):
  """``I(x_n) = diag(db_n) (x) h h^T + sign sum_k (u_nk (x) h)(u_nk (x) h)^T``.

  Returns ``(db [N, C] or None, u [N, C, k], sign)``: full is ``diag(p) - p
  p^T`` (one atom, sign -1); topc is ``A A^T`` (``top_c`` atoms, sign +1).
  """
  if kind == "full":
    return probs, probs[:, :, None], -1.0
  return None, factors, 1.0


def _structured_setup(h, probs, factors, scaled, labeled, lam, denom, s2,
                      f_blocks, quad, in_pool, kind, chunk_size, capacity,
                      axis_name):
  """Initial ``U_n, W_n`` and ``X -> (M_0^-1 X, G_0 X)`` without d x d matrices.

  ``M = K + sign E E^T`` with ``K`` block-diagonal (``C`` blocks ``D x D``;
  ``lam I`` for topc) and ``E`` the labelled atoms ``(u_lk (x) h_l) /
  sqrt(L + B)`` (``R = capacity * k`` columns), so by Woodbury ``M^-1 = K^-1 -
  Ek T Ek^T`` with ``Ek = K^-1 E`` and ``T = (sign I + E^T K^-1 E)^-1``. ``F =
  Fb + (sign / N) sum_m (u_m (x) h_m)(u_m (x) h_m)^T`` over the pool.

  Sharded: the labelled rows are gathered (``capacity`` of them, replicated
  like ``K``, ``Ek`` and ``T``), the pool sums of ``F X`` are all-reduced and
  the ``N^2`` term passes the pool's blocks round a ring of the devices.
  ``in_pool`` (None: every row) removes padding rows from ``F``.
  """
  n, dim = h.shape
  c = probs.shape[1]
  dtype = h.dtype
  db, u, sign = _atoms(probs, factors, kind)
  k_atoms = u.shape[2]
  scalar_k = db is None  # K = lam I: everything Kronecker-cheap.
  row_weight, n_total = _pool_rows(in_pool, n, dtype, axis_name)
  # The atoms of F.
  u_f = u if row_weight is None else u * row_weight[:, None, None]

  # The labelled set, compacted to a static capacity.
  (hl, ul, dbl), ok, count = _pool.compact(
      labeled, (h, u, probs), capacity, axis_name)
  overflow = count > capacity
  ok = ok.astype(dtype)
  ul = ul * (ok / jnp.sqrt(denom))[:, None, None]  # [cap, C, k]
  r_cols = capacity * k_atoms

  if scalar_k:
    def kinv_h(x):  # K_a^-1 x for every class: [..., C, D]
      return jnp.broadcast_to((x / lam)[..., None, :],
                              x.shape[:-1] + (c, dim))

    def kinv_dense(v):
      return v / lam
  else:
    k_blocks = _weighted_gram(hl, dbl * (ok / denom)[:, None])
    k_blocks = k_blocks + lam * jnp.eye(dim, dtype=dtype)
    k_chol = jnp.linalg.cholesky(k_blocks)
    k_inv = jax.vmap(lambda l: jax.scipy.linalg.cho_solve(
        (l, True), jnp.eye(dim, dtype=dtype)))(k_chol)
    k_inv = _sym(k_inv)  # [C, D, D]

    def kinv_h(x):
      return jnp.einsum("aij,...j->...ai", k_inv, x)

    def kinv_dense(v):
      return jnp.einsum("aij,ajq->aiq", k_inv, v)

  # Ek = K^-1 E: [C, D, R], column (l, k) = K^-1 (u_lk (x) h_l).
  ek = jnp.einsum("lak,lai->ailk", ul, kinv_h(hl)).reshape(c, dim, r_cols)
  ete = jnp.einsum("lak,li,aiR->lkR", ul, hl, ek).reshape(r_cols, r_cols)
  inner = _sym(sign * jnp.eye(r_cols, dtype=dtype) + ete)
  t_inv = _sym(jnp.linalg.inv(inner))

  def minv_dense(v):  # M_0^-1 V for V [C, D, q]
    coef = t_inv @ jnp.einsum("aiR,aiq->Rq", ek, v)
    return kinv_dense(v) - jnp.einsum("aiR,Rq->aiq", ek, coef)

  if scalar_k:
    f_blocks = None
  rows = _chunk_rows(chunk_size, n, 2 * c * max(r_cols, c))

  def f_lowrank_back(coef_fn, q):
    """``(sign / N) sum_m (u_m (x) h_m) coef_m`` with ``coef_m [k, q]``."""
    def one(hc, uc, *rest):
      coef = coef_fn(hc, uc, *rest)  # [rows, k, q]
      back = jnp.einsum("mak,mkq->maq", uc, coef)
      return jnp.einsum("mi,maq->aiq", hc, back)
    return one

  def f_dense(v):  # F V for V [C, D, q]
    q = v.shape[-1]

    def coef_fn(hc, uc):
      hv = jnp.einsum("mi,aiq->maq", hc, v)
      return jnp.einsum("mak,maq->mkq", uc, hv)

    out = _pool.psum(_sum_rows(f_lowrank_back(coef_fn, q), (h, u_f), rows,
                               jnp.zeros((c, dim, q), dtype), masked=1),
                     axis_name) * (sign / n_total)
    if f_blocks is not None:
      out = out + jnp.einsum("aij,ajq->aiq", f_blocks, v)
    return out

  def f_kron(g, aj):  # F (K^-1 X_j) where block a of K^-1 X_j is aj[a] (x) g_a
    r = aj.shape[1]

    def coef_fn(hc, uc):
      kern = jnp.einsum("mi,ai->ma", hc, g)  # h_m . K_a^-1 h_j
      return jnp.einsum("mak,ar,ma->mkr", uc, aj, kern)

    out = _pool.psum(_sum_rows(f_lowrank_back(coef_fn, r), (h, u_f), rows,
                               jnp.zeros((c, dim, r), dtype), masked=1),
                     axis_name) * (sign / n_total)
    if f_blocks is not None:
      out = out + jnp.einsum("aij,aj,ar->air", f_blocks, g, aj)
    return out

  f_ek = f_dense(ek)  # F Ek [C, D, R]
  efe = jnp.einsum("aiR,aiS->RS", ek, f_ek)
  kf_ek = kinv_dense(f_ek)

  # Per point: ex_n = Ek^T X_n [R, r], c_n = T ex_n, U_n, W_n.
  def per_point(hc, ac, sc):
    if scalar_k:
      kern = hc @ hl.T / lam  # [rows, cap]
      ex = jnp.einsum("nl,lak,nar->nlkr", kern, ul, sc)
      ex = ex.reshape(hc.shape[0], r_cols, -1)
      kq = jnp.broadcast_to(jnp.sum(hc * hc, -1, keepdims=True) / lam,
                            (hc.shape[0], c))
    else:
      ex = jnp.einsum("ni,aiR,nar->nRr", hc, ek, sc)
      kq = jnp.einsum("nai,ni->na", kinv_h(hc), hc)
    cn = jnp.einsum("RS,nSr->nRr", t_inv, ex)
    kx = jnp.einsum("nar,na,nas->nrs", sc, kq, sc)  # X_n^T K^-1 X_n
    u_n = kx - jnp.einsum("nRr,nRs->nrs", ex, cn)
    cross = jnp.einsum("ni,aiR,nar,nRs->nrs", hc, kf_ek, sc, cn)
    w_n = (jnp.einsum("nRr,RS,nSs->nrs", cn, efe, cn)
           - cross - jnp.swapaxes(cross, -1, -2))
    return u_n, w_n, _norm(kx)

  r = scaled.shape[2]
  rows_pp = _chunk_rows(chunk_size, n, 2 * c * r_cols + 2 * r_cols * r)
  u_n, w_n, kx = _map_rows(per_point, (h, factors, scaled), rows_pp)
  # The sizes that the Woodbury identities cancel (see `_bait`): U_n is
  # X_n^T K^-1 X_n less a term of the same size, and T carries the
  # cancellation of sign I + E^T K^-1 E; that error enters once, not
  # squared (measured: picks agree up to |T| ~ 1e4 in float32).
  size = jnp.maximum(kx, jnp.sqrt(jnp.linalg.norm(t_inv, 2)))
  # X_n^T K^-1 F K^-1 X_n: the one N^2 term.
  if scalar_k:  # s^2 / lam^2 V_n^T F V_n, precomputed by pool_fisher
    big = quad * (s2 / (lam * lam))
    w_n = w_n + big
    # W_n is the difference of terms of this size: its relative error is
    # eps times their ratio, which counts like U^2 in the greedy's updates.
    big = jnp.trace(big, axis1=-2, axis2=-1)
    small = jnp.abs(jnp.trace(w_n, axis1=-2, axis2=-1))
    tiny = jnp.finfo(dtype).tiny
    size = jnp.maximum(size, jnp.sqrt(
        jnp.where(big > 0, big / jnp.maximum(small, tiny), 0)))
  else:
    w_n = w_n + _full_kfk(h, u_f[:, :, 0], scaled, kinv_h, f_blocks,
                          sign / n_total, chunk_size, axis_name)

  def apply0(hj, aj):
    g = kinv_h(hj)  # [C, D]
    ej = jnp.einsum("aiR,i,ar->Rr", ek, hj, aj)
    cj = t_inv @ ej
    z0 = g[:, :, None] * aj[:, None, :] - jnp.einsum("aiR,Rr->air", ek, cj)
    fz0 = f_kron(g, aj) - jnp.einsum("aiR,Rr->air", f_ek, cj)
    return z0, minv_dense(fz0)

  return _sym(u_n), _sym(w_n), apply0, overflow, size


def _full_kfk(h, probs, scaled, kinv_h, f_blocks, coef, chunk_size,
              axis_name):
  """``X_n^T K^-1 F K^-1 X_n`` for full: block-diagonal part + the N^2 term.

  With ``v_nm = X_n^T K^-1 (p_m (x) h_m)``, ``v_nm[r] = sum_a As_n[a, r] p_ma
  (K_a^-1 h_n . h_m)``, the low-rank part is ``coef sum_m v_nm v_nm^T``
  (``coef = sign / N``; ``probs`` are zero on rows outside the pool).
  """
  n, dim = h.shape
  c = probs.shape[1]
  r = scaled.shape[2]
  rows = _chunk_rows(chunk_size, n, n * (c + r) + c * dim)

  def pairs(hm, pm, with_diag):  # the pool's rows m in one shard's block
    def one(hc, sc):
      kh = kinv_h(hc)  # [rows, C, D]
      kern = jnp.einsum("nai,mi->nam", kh, hm)
      v = jnp.einsum("nar,ma,nam->nmr", sc, pm, kern)
      out = coef * jnp.einsum("nmr,nms->nrs", v, v)
      if not with_diag:
        return out
      # The block-diagonal part, once, reusing K^-1 h_n.
      diag = jnp.einsum("nai,aij,naj->na", kh, f_blocks, kh)
      return out, jnp.einsum("nar,na,nas->nrs", sc, diag, sc)
    return _map_rows(one, (h, scaled), rows)

  low_rank, diag = _ring_sum(lambda hm, pm: pairs(hm, pm, False), h, probs,
                             axis_name=axis_name,
                             own=lambda hm, pm: pairs(hm, pm, True))
  return low_rank + diag


def _ring_sum(fn, *blocks, axis_name, own=None):
  """`_pool.ring_sum` with the shards' terms added in shard order.

  ``_pool.ring_sum`` adds them in ring order, which starts at each device's
  own shard: equal rows on different devices then round differently, and
  exact ties (duplicated points) between shards break either way. Here every
  device keeps the ``P`` partial sums by their source shard (``P`` times the
  output's memory) and adds them in one order. ``own`` (default ``fn``) may
  return ``(part, extra)``: ``extra`` is returned as is, outside the sum.
  """
  first = (fn if own is None else own)(*blocks)
  extra = None
  if own is not None and isinstance(first, tuple):
    first, extra = first
  if axis_name is None:
    return first if extra is None else (first, extra)
  devices = lax.axis_size(axis_name)
  me = lax.axis_index(axis_name)
  ring = [(i, (i + 1) % devices) for i in range(devices)]
  parts = jnp.zeros((devices,) + first.shape, first.dtype).at[me].set(first)

  def body(k, carry):
    parts, visiting = carry
    visiting = tuple(lax.ppermute(b, axis_name, ring) for b in visiting)
    source = (me - k - 1) % devices  # after k + 1 hops
    return parts.at[source].set(fn(*visiting)), visiting

  parts, _ = lax.fori_loop(0, devices - 1, body, (parts, blocks))
  total = parts[0]
  for i in range(1, devices):
    total = total + parts[i]
  return total if extra is None else (total, extra)


def _topc_pool_quad(h, factors, factors_f, n_total, chunk_size, axis_name):
  """``V_n^T F V_n = (1/N) sum_m (h_n . h_m)^2 (A_n^T A_m)(A_n^T A_m)^T``.

  ``factors_f``: the ``A_m`` of ``F`` (zero on rows outside the pool).
  """
  n, dim = h.shape
  _, c, r = factors.shape
  rows = _chunk_rows(chunk_size, n, n * (r * r + 1))

  def block(hm, am):  # the pool's rows m in one shard's block
    def one(hc, ac):
      kern = (hc @ hm.T)**2  # [rows, n_block]
      aa = jnp.einsum("nar,mak->nrmk", ac, am)
      return jnp.einsum("nm,nrmk,nsmk->nrs", kern, aa, aa)
    return _map_rows(one, (h, factors), rows)

  return _ring_sum(block, h, factors_f, axis_name=axis_name) / n_total


# --------------------------------------------------------------------------
# The greedy forward-backward scan (shared by the dense and structured paths).


def _outer_sum(x, y):
  """``sum_q x[..., i, q] y[..., j, q]`` for a batch of small matrices.

  XLA's batched dot runs one tiny GEMM per point; for small ``r`` a sum of
  ``r`` broadcast products (one fused elementwise loop) is 2-3x faster.
  """
  if x.shape[-1] > _UNROLL_MAX_RANK:
    return jnp.einsum("...iq,...jq->...ij", x, y)
  return sum(x[..., :, q, None] * y[..., None, :, q]
             for q in range(x.shape[-1]))


def _contract_factors(a, proj):
  """``A_n^T proj_n``: ``a [N, C_f, r]``, ``proj [N, C_f, q]`` -> ``[N, r, q]``."""
  if a.shape[-1] > _UNROLL_MAX_RANK:
    return jnp.einsum("nar,naq->nrq", a, proj)
  return sum(a[:, k, :, None] * proj[:, k, None, :] for k in range(a.shape[1]))


def _trace_solve(u, w, sign):
  """``tr((sign I + U)^-1 W)`` for a batch of ``r x r`` matrices ``[..., r, r]``."""
  r = u.shape[-1]
  if r == 1:
    return w[..., 0, 0] / (sign + u[..., 0, 0])
  s = u + sign * jnp.eye(r, dtype=u.dtype)
  if sign > 0 and r <= _UNROLL_MAX_RANK:
    return _trace_solve_unrolled(s, w)
  if sign > 0:
    chol = jnp.linalg.cholesky(s)
    y = lax.linalg.triangular_solve(chol, w, left_side=True, lower=True)
    z = lax.linalg.triangular_solve(chol, jnp.swapaxes(y, -1, -2),
                                    left_side=True, lower=True)
    return jnp.trace(z, axis1=-2, axis2=-1)
  return jnp.trace(jnp.linalg.solve(s, w), axis1=-2, axis2=-1)


def _trace_solve_unrolled(s, w):
  """``tr(S^-1 W)``, ``S`` SPD, by a Cholesky unrolled over the small rank.

  Each entry is a vector over the batch, so XLA fuses the whole solve into a
  few elementwise loops instead of one LAPACK call per point.
  """
  r = s.shape[-1]
  # L L^T = S.
  low = [[None] * r for _ in range(r)]
  inv_diag = [None] * r
  for j in range(r):
    acc = s[..., j, j]
    for k in range(j):
      acc = acc - low[j][k] * low[j][k]
    diag = jnp.sqrt(acc)
    inv_diag[j] = 1 / diag
    low[j][j] = diag
    for i in range(j + 1, r):
      acc = s[..., i, j]
      for k in range(j):
        acc = acc - low[i][k] * low[j][k]
      low[i][j] = acc * inv_diag[j]
  # tr(S^-1 W) = tr(L^-1 W L^-T) = sum_ij (L^-1 W L^-T)_ii; Y = L^-1 W.
  y = [[None] * r for _ in range(r)]
  for col in range(r):
    for i in range(r):
      acc = w[..., i, col]
      for k in range(i):
        acc = acc - low[i][k] * y[k][col]
      y[i][col] = acc * inv_diag[i]
  # (L^-1 Y^T)_ii summed: solve L Q = Y^T row by row, keep the diagonal.
  total = 0
  q = [[None] * r for _ in range(r)]
  for col in range(r):
    for i in range(r):
      acc = y[col][i]
      for k in range(i):
        acc = acc - low[i][k] * q[k][col]
      q[i][col] = acc * inv_diag[i]
    total = total + q[col][col]
  return total


def _drop_index(values, picks):
  """The pick to drop: the largest value; among equal values the highest
  pool index (ties go to the lower index: it is the one kept)."""
  return jnp.argmax(jnp.where(values == jnp.max(values), picks, -1))


def _greedy(h, scaled, u, w, mask, apply0, batch_size, oversample,
            chunk_size, axis_name, noise=None):
  """Forward picks and backward drops, as two ``lax.scan``s.

  Args:
    h: ``[N, D]`` local pool embeddings.
    scaled: ``[N, C_f, r]`` class factors of ``X_n``.
    u, w: ``[N, r, r]`` initial ``U_n``, ``W_n``.
    mask: ``bool[N]`` selectable.
    apply0: ``(h_j [D], a_j [C_f, r]) -> (M_0^-1 X_j, G_0 X_j)``, each
      ``[C_f, D, r]``.
  """
  n, dim = h.shape
  c_f, r = scaled.shape[1:]
  dtype = h.dtype
  n_forward = oversample * batch_size
  n_steps = n_forward + (oversample - 1) * batch_size
  eye = jnp.eye(r, dtype=dtype)
  rows = _chunk_rows(chunk_size, n, 4 * c_f * r + 4 * r * r)

  # Step k of the history: Z_k, Y_k, S_k^-1 and W_k, where M_{k+1}^-1 =
  # M_k^-1 - Z S^-1 Z^T and G_{k+1} = G_k - Z S^-1 Y^T - Y S^-1 Z^T + Z S^-1
  # W S^-1 Z^T. Directions are kept transposed, ``[r, C_f, D]``, so that the
  # history ``[T, r, C_f, D]`` is written at a leading index, read by a
  # matvec over contiguous rows, and applied by one plain GEMM (at C=100 these
  # history ops took ~1.1 s per step against ~2 s with ``[T, C_f, D, r]``,
  # which XLA transposed each step).
  history = dict(
      z=jnp.zeros((n_steps, r, c_f, dim), dtype),
      y=jnp.zeros((n_steps, r, c_f, dim), dtype),
      s_inv=jnp.zeros((n_steps, r, r), dtype),
      wj=jnp.zeros((n_steps, r, r), dtype))

  def directions(hist, hj, aj, valid):
    """``[M_t^-1 X_j | G_t X_j]``, transposed: ``[2r, C_f, D]``."""
    z0, y0 = apply0(hj, aj)
    zy0 = jnp.moveaxis(jnp.concatenate([z0, y0], axis=-1), -1, 0)
    ztx = jnp.einsum("kqai,i,ar->kqr", hist["z"], hj, aj)  # Z_k^T X_j
    ytx = jnp.einsum("kqai,i,ar->kqr", hist["y"], hj, aj)
    s_ztx = jnp.einsum("kqs,ksr->kqr", hist["s_inv"], ztx)
    y_coef = jnp.einsum("kqs,ksr->kqr", hist["s_inv"],
                        ytx - jnp.einsum("kst,ktr->ksr", hist["wj"], s_ztx))
    # Z = Z_0 - sum_k Z_k s_ztx_k; Y = Y_0 - sum_k (Z_k y_coef_k + Y_k s_ztx_k).
    flat = lambda x: x.reshape(n_steps * r, c_f * dim)
    from_z = jnp.concatenate([s_ztx, y_coef], axis=-1).reshape(
        n_steps * r, 2 * r).T @ flat(hist["z"])
    from_y = s_ztx.reshape(n_steps * r, r).T @ flat(hist["y"])
    correction = from_z + jnp.pad(from_y, ((r, 0), (0, 0)))
    return (zy0 - correction.reshape(2 * r, c_f, dim)) * valid

  def commit(hist, t, hj, aj, zy, sign):
    proj = jnp.einsum("qai,i,ar->qr", zy, hj, aj)  # Z^T X_j; Y^T X_j
    s_inv = _sym(jnp.linalg.inv(_sym(sign * eye + proj[:r])))
    wj = _sym(proj[r:])
    hist = dict(z=hist["z"].at[t].set(zy[:r]), y=hist["y"].at[t].set(zy[r:]),
                s_inv=hist["s_inv"].at[t].set(s_inv),
                wj=hist["wj"].at[t].set(wj))
    return hist, s_inv, wj

  def update(u, w, a, b, s_inv, wj):
    """Woodbury change of ``U``, ``W`` given ``a = X^T Z``, ``b = X^T Y``.

    ``U -= a_s a^T`` and ``W -= x + x^T`` with ``a_s = a S^-1``, ``x = a_s
    (b - a_s W_j / 2)^T``, which is ``a S^-1 b^T + b S^-1 a^T - a S^-1 W_j
    S^-1 a^T``.
    """
    a_s = jnp.einsum("...rq,qs->...rs", a, s_inv)
    e = b - 0.5 * jnp.einsum("...rq,qs->...rs", a_s, wj)
    x = _outer_sum(a_s, e)
    return u - _outer_sum(a_s, a), w - x - jnp.swapaxes(x, -1, -2)

  def pool_update(u, w, zy, s_inv, wj):
    zy = jnp.transpose(zy, (2, 1, 0)).reshape(dim, c_f * 2 * r)

    def one(hc, ac, uc, wc):
      proj = (hc @ zy).reshape(hc.shape[0], c_f, 2 * r)
      ab = _contract_factors(ac, proj)
      return update(uc, wc, ab[..., :r], ab[..., r:], s_inv, wj)

    return _map_rows(one, (h, scaled, u, w), rows)

  def forward_step(carry, t):
    u, w, selectable, hist = carry
    gains = _trace_solve(u, w, 1.0)
    ranked = jnp.where(selectable, gains, -jnp.inf)
    j, _ = _pool.argmax(ranked, axis_name)
    valid = _pool.take(selectable, j, axis_name)
    hj = _pool.take(h, j, axis_name)
    aj = _pool.take(scaled, j, axis_name)
    gain = _pool.take(gains, j, axis_name)
    size = _norm(_pool.take(u, j, axis_name))
    if noise is not None:
      size = jnp.maximum(size, _pool.take(noise, j, axis_name))
    size = size * valid
    zy = directions(hist, hj, aj, valid)
    hist, s_inv, wj = commit(hist, t, hj, aj, zy, 1.0)
    u, w = pool_update(u, w, zy, s_inv, wj)
    selectable = _pool.set_at(selectable, j, False, axis_name)
    return (u, w, selectable, hist), (j, gain, valid, hj, aj, size)

  (u, w, _, history), (picks, gains, valid, hp, ap, sizes) = lax.scan(
      forward_step, (u, w, mask, history), jnp.arange(n_forward))
  # The picks' own U, W after the forward pass (small, replicated).
  up = jax.vmap(lambda i: _pool.take(u, i, axis_name))(picks)
  wp = jax.vmap(lambda i: _pool.take(w, i, axis_name))(picks)

  def backward_step(carry, t):
    up, wp, alive, hist = carry
    active = jnp.sum(alive) > batch_size
    # tr((U - I)^-1 W) = -tr((I - U)^-1 W): the largest is the pick whose
    # removal leaves the smallest tr((M - X X^T)^-1 F).
    values = jnp.where(alive, _trace_solve(up, wp, -1.0), -jnp.inf)
    k = _drop_index(values, picks)
    zy = directions(hist, hp[k], ap[k], active)
    hist, s_inv, wj = commit(hist, n_forward + t, hp[k], ap[k], zy, -1.0)
    ab = jnp.einsum("kar,qai,ki->krq", ap, zy, hp)
    up, wp = update(up, wp, ab[..., :r], ab[..., r:], s_inv, wj)
    alive = alive.at[k].set(alive[k] & ~active)
    return (up, wp, alive, hist), jnp.where(active, k, -1)

  alive, final_history = valid, history
  dropped = jnp.zeros((0,), jnp.int32)
  if oversample > 1:
    (_, _, alive, final_history), dropped = lax.scan(
        backward_step, (up, wp, valid, history),
        jnp.arange((oversample - 1) * batch_size))
  # Kept picks in forward order; a shortfall (only under jit) is invalid.
  order = jnp.argsort(~alive, stable=True)[:batch_size]
  sel = Selection(indices=picks[order].astype(jnp.int32),
                  scores=gains[order], valid=alive[order])
  # For tests: the per-point state after the forward pass and the history.
  zy = jnp.transpose(jnp.concatenate(
      [final_history["z"], final_history["y"]], axis=1), (0, 2, 3, 1))
  state = dict(u=u, w=w, picks=picks, valid=valid, alive=alive, sizes=sizes,
               dropped=dropped, zy=zy, s_inv=final_history["s_inv"],
               wj=final_history["wj"])
  return sel, state


# --------------------------------------------------------------------------
# Diagonal Fisher: everything elementwise.


def _bait_diagonal(h, q, labeled, mask, lam, denom, f_diag, batch_size,
                   oversample, chunk_size, axis_name):
  """BAIT with diagonal ``M``, ``F`` and ``I(x) = diag(q (x) h^2)``.

  ``tr((M + s^2 I(x))^-1 F)`` is ``sum_k F_k / (M_k + x_k)``; the reduction is
  ``sum_k F_k x_k / (M_k (M_k + x_k))``: ``O(N C D)`` per step.
  """
  n, dim = h.shape
  c = q.shape[1]
  h2 = h * h
  m = lam + _pool.psum(
      jnp.einsum("nc,ni->ci", q * labeled[:, None].astype(q.dtype), h2),
      axis_name) / denom
  s2 = batch_size / denom
  rows = _chunk_rows(chunk_size, n, c * dim)

  def values(m, qc, h2c, sign):
    # sign=+1: the forward reduction; sign=-1: minus the increase on removal.
    x = s2 * qc[:, :, None] * h2c[:, None, :]
    return jnp.sum((f_diag / m) * x / (sign * m + x), axis=(1, 2))

  def forward_step(carry, _):
    m, selectable = carry
    gains = _map_rows(lambda a, b: values(m, a, b, 1.0), (q, h2), rows)
    j, _ = _pool.argmax(jnp.where(selectable, gains, -jnp.inf), axis_name)
    valid = _pool.take(selectable, j, axis_name)
    qj = _pool.take(q, j, axis_name)
    h2j = _pool.take(h2, j, axis_name)
    m = m + valid * s2 * qj[:, None] * h2j[None, :]
    gain = _pool.take(gains, j, axis_name)
    selectable = _pool.set_at(selectable, j, False, axis_name)
    return (m, selectable), (j, gain, valid, qj, h2j)

  n_forward = oversample * batch_size
  (m, _), (picks, gains, valid, qp, h2p) = lax.scan(
      forward_step, (m, mask), None, length=n_forward)

  def backward_step(carry, _):
    m, alive = carry
    active = jnp.sum(alive) > batch_size
    k = _drop_index(jnp.where(alive, values(m, qp, h2p, -1.0), -jnp.inf),
                    picks)
    m = m - active * s2 * qp[k][:, None] * h2p[k][None, :]
    return (m, alive.at[k].set(alive[k] & ~active)), None

  alive = valid
  if oversample > 1:
    (_, alive), _ = lax.scan(backward_step, (m, valid), None,
                             length=(oversample - 1) * batch_size)
  order = jnp.argsort(~alive, stable=True)[:batch_size]
  return Selection(indices=picks[order].astype(jnp.int32),
                   scores=gains[order],
                   valid=alive[order] & jnp.isfinite(gains[order]))

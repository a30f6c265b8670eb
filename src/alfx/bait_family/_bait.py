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

Where it is done: `_factors` (the class factors ``A_n``), `_basis` (a
well-conditioned basis of the parameters), `_pool_fisher` (``F``, once per
model), `_dense` and `_structured` (the initial ``M^-1``, ``G = M^-1 F M^-1``
and per-point ``U_n``, ``W_n`` for small and large ``d``), `_greedy` (the
Woodbury forward-backward scan), `_diagonal` (the elementwise path),
`_checks` (input checks); this module: the public `bait` and its core.

May import: `alfx._core`, every `alfx.bait_family` module.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.bait_family import _basis
from alfx.bait_family import _checks
from alfx.bait_family import _dense
from alfx.bait_family import _diagonal
from alfx.bait_family import _factors
from alfx.bait_family import _greedy
from alfx.bait_family import _pool_fisher
from alfx.bait_family import _structured


def bait(
  embeddings: ArrayLike,
  probs: ArrayLike,
  batch_size: int,
  *,
  labeled: ArrayLike | None = None,
  mask: ArrayLike | None = None,
  fisher: str = "full",
  top_c: int = 2,
  lam: ArrayLike = 1.0,
  oversample: int = 2,
  pool_fisher: _pool_fisher.PoolFisher | None = None,
  method: str = "auto",
  chunk_size: int | None = None,
  labeled_capacity: int | None = None,
  in_pool: ArrayLike | None = None,
) -> _selection.Selection:
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
    1.6e11 for all 20 forward steps.
  * backward: only the picks' ``P x P`` blocks ``X_p^T M^-1 X_q``, ``X_p^T
    G X_q`` (``r x r`` each), formed once from the history (``4 P^2 d r + 6
    P^3 r^3``) and updated per drop (``4 P^2 r^3``): no pool pass.
  * memory: ``2 N r^2`` (``U, W``) plus ``~3 d^2`` plus ``2 P d r``
    (history) plus ``~8 P^2 r^2`` (the picks' blocks, while the backward
    pass runs) plus the chunked working sets.

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

  Example:
    >>> h = jax.random.normal(jax.random.key(0), (8, 3))
    >>> p = jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 4)))
    >>> sel = alfx.bait(h, p, 2)
    >>> sel.indices.tolist(), bool(sel.valid.all())
    ([3, 0], True)
    >>> labeled = jnp.arange(8) < 2  # rows 0 and 1 are labelled
    >>> alfx.bait(h, p, 2, labeled=labeled, fisher="diagonal").indices.tolist()
    [3, 6]
  """
  embeddings, probs = _checks.check_inputs(embeddings, probs)
  _checks.check_range(embeddings)
  n, c = probs.shape
  labeled = _validation.check_mask(labeled, n, name="labeled", default=False)
  method = _checks.resolve_method(method, fisher, c, embeddings.shape[1])
  in_pool = _checks.check_in_pool(in_pool, n)
  if mask is not None:
    mask = _validation.check_mask(mask, n)
  elif in_pool is not None:
    mask = in_pool
  else:
    mask = jnp.ones((n,), bool)
  batch_size = _validation.check_batch_size(batch_size, mask, labeled=labeled)
  # Labelled points are never picked, whatever the mask says.
  mask = mask & ~labeled
  top_c = _checks.check_fisher(fisher, top_c, c)
  oversample = _validation.check_positive_int(oversample, "oversample")
  # None: the chunk default, resolved where the pool's row size is known.
  chunk_size = _validation.check_chunk_size(chunk_size, None)  # pyright: ignore[reportArgumentType]
  lam = _checks.check_lam(lam)  # pyright: ignore[reportAssignmentType]
  h = embeddings
  rotated = False
  # ``stats``: the PoolFisher in use, given or computed here.
  if pool_fisher is not None:
    _pool_fisher.check_pool_fisher(
      pool_fisher, fisher, top_c, method, n, c, embeddings.shape[1]
    )
    stats = pool_fisher
  else:  # its own jit: one compile of _bait serves both cases
    rotated = method != "diagonal"
    stats = _pool_fisher.pool_fisher_core(
      embeddings,
      probs,
      in_pool,
      kind=fisher,
      top_c=top_c,
      method=method,
      chunk_size=chunk_size,
      with_rotated=rotated,
    )
    if rotated:  # the embeddings in F's basis: _bait need not rotate them
      stats, h = stats  # pyright: ignore[reportGeneralTypeIssues] (a pair)
    # Inside a caller's jit, XLA would otherwise fuse F's computation into
    # its consumers (measured 1.3-1.5x slower at the CIFAR-10 shape).
    stats, h = jax.lax.optimization_barrier((stats, h))
  capacity = None
  if method == "structured":
    capacity = _checks.check_capacity(labeled_capacity, labeled, n)
  quad = stats.quad  # per point: split with the pool
  stats = dataclasses.replace(stats, quad=None)
  sel = _bait(
    h,
    probs,
    labeled,
    mask,
    lam,
    stats,
    in_pool,
    quad,
    batch_size=batch_size,
    kind=fisher,
    top_c=top_c,
    oversample=oversample,
    method=method,
    chunk_size=chunk_size,
    capacity=capacity,
    rotated=rotated,
  )
  if _validation.is_concrete(
    embeddings, probs, labeled, mask, lam, stats, in_pool, quad
  ):
    _checks.check_resolved(
      sel, _factors.float_dtype(embeddings, probs), lam, method
    )
  return sel  # pyright: ignore[reportReturnType] (with_state=False)


@_sharding.pool_core(
  pool=("embeddings", "probs", "labeled", "mask", "in_pool", "quad"),
  static=(
    "batch_size",
    "kind",
    "top_c",
    "oversample",
    "method",
    "chunk_size",
    "capacity",
    "with_state",
    "rotated",
  ),
)
def _bait(
  embeddings,
  probs,
  labeled,
  mask,
  lam,
  fisher_stats,
  in_pool,
  quad,
  batch_size,
  kind,
  top_c,
  oversample,
  method,
  chunk_size,
  capacity,
  axis_name=None,
  with_state=False,
  rotated=False,
):
  """`bait` without input checks; jit/vmap friendly.

  ``fisher_stats`` is replicated; its per-point ``quad`` (structured topc) is
  passed as the pool-axis ``quad`` instead. ``in_pool`` may be None.
  ``rotated``: ``embeddings`` are already in ``fisher_stats``' basis.
  """
  dtype = _factors.float_dtype(embeddings, probs)
  h = embeddings.astype(dtype)
  probs = probs.astype(dtype)
  lam = jnp.asarray(lam, dtype)
  n_labeled = _pool.psum(jnp.sum(labeled.astype(jnp.int32)), axis_name)
  denom = (n_labeled + batch_size).astype(dtype)
  if method == "diagonal":
    factors = _factors.class_factors(probs, kind, top_c)
    return _diagonal.bait_diagonal(
      h,
      factors[..., 0] ** 2,
      labeled,
      mask,
      lam,
      denom,
      fisher_stats.blocks,
      batch_size,
      oversample,
      chunk_size,
      axis_name,
    )
  if not rotated:
    h = _basis.rotate(h, fisher_stats.center)
  scale = jnp.sqrt(batch_size / denom)
  if method == "dense":
    factors = _basis.dense_factors(probs, kind, top_c)
    scaled = factors * scale  # A_n of X_n = s V_n
    u, w, apply0 = _dense.dense_setup(
      h,
      factors,
      scaled,
      labeled,
      lam,
      denom,
      fisher_stats.blocks,
      chunk_size,
      axis_name,
    )
    overflow = jnp.zeros((), bool)
    size = None
  else:
    factors = _factors.class_factors(probs, kind, top_c)
    scaled = factors * scale
    u, w, apply0, overflow, size = _structured.structured_setup(
      h,
      probs,
      factors,
      scaled,
      labeled,
      lam,
      denom,
      batch_size / denom,
      fisher_stats.blocks,
      quad,
      in_pool,
      kind,
      chunk_size,
      capacity,
      axis_name,
    )
  u0, w0 = u, w
  sel, state = _greedy.greedy(
    h,
    scaled,
    u,
    w,
    mask,
    apply0,
    batch_size,
    oversample,
    chunk_size,
    axis_name,
    noise=size,
    # Structured full: the factors' structure shortens A_n^T x.
    full=(probs, scale) if method == "structured" and kind == "full" else None,
  )
  size = jnp.max(state["sizes"])
  # Rank-r Woodbury updates by a pick j cancel terms of size ~|U_j| (U) and
  # ~|U_j|^2 (W) down to O(1): the relative error is ~eps |U_j|^2. Measured
  # (float32 against float64 picks, tests/test_bait_float32.py): picks agree
  # while eps size^2 <= 0.01 and mostly differ beyond 0.1. Past
  # _checks.RESOLUTION the picks are not a float32 answer to the problem:
  # never valid.
  resolved = jnp.finfo(dtype).eps * size * size <= _checks.RESOLUTION
  sel = sel._replace(
    valid=sel.valid & ~overflow & resolved & jnp.isfinite(sel.scores)
  )
  if with_state:
    return sel, dict(state, u0=u0, w0=w0, size=size)
  return sel

"""EPIG, target inputs drawn from the pool, and the EPIG registry strategies.

F. Bickford Smith, A. Kirsch, S. Farquhar, Y. Gal, A. Foster and
T. Rainforth, "Prediction-Oriented Bayesian Active Learning", AISTATS 2023,
arXiv:2304.08151.

BALD values information about the parameters, much of which never matters
for the predictions a user cares about. The expected predictive information
gain (EPIG) values information about the labels ``Y*`` of inputs ``x*``
drawn from the target input distribution:

  ``EPIG(n) = mean_m I[Y_n; Y*_m] = H[Y_n] - mean_m H[Y_n | Y*_m]``,

one call of the table kernel of BatchBALD (`alfx.bald_family._epig_tables`).
Greedy BatchEPIG (`alfx.bald_family._batch_epig`) adds the gain
``I[Y_n; Y* | Y_S]`` of the picked set ``S``; k-EPIG
(`alfx.bald_family._kepig`) truncates the inclusion-exclusion of
``I[Y_S; Y*]`` at co-informations of ``order`` pool labels. PowerEPIG, the
paper's batch recipe, is
``alfx.stochastic_batch(alfx.epig(log_probs, targets), B, key=key)``.

Target inputs are not pool arrays: ``target_log_probs`` is replicated on
every device when the pool is sharded. `pool_targets` draws them from the
pool's unlabelled inputs, as the registry strategies here do
(``epig_strategy`` and friends, registered by `alfx.loop`).

May import: `alfx._core`, `alfx.bald_family._batchbald`,
`alfx.bald_family._epig_tables`, `alfx.bald_family._batch_epig`,
`alfx.bald_family._kepig`.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import sampling as _sampling
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.bald_family import _batch_epig
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family import _epig_tables as _tables
from alfx.bald_family import _kepig

#: Default number of target inputs the registry strategies draw from the pool.
DEFAULT_NUM_TARGETS = 100


# --------------------------------------------------------------------------
# EPIG.


@_validation.fused_checks
def epig(
  log_probs: ArrayLike,
  target_log_probs: ArrayLike,
  *,
  chunk_size: int | None = None,
) -> jax.Array:
  r"""Expected predictive information gain of each pool point.

  Bickford Smith, Kirsch, Farquhar, Gal, Foster and Rainforth, "Prediction-
  Oriented Bayesian Active Learning", AISTATS 2023, arXiv:2304.08151, eq. 4:

    ``EPIG(n) = mean_m I[Y_n; Y*_m]``,
    ``p(y, y*) = mean_k p(y | x_n, omega_k) p(y* | x*_m, omega_k)``,

  the information the label of ``x_n`` carries about the labels of the
  target inputs ``x*_m`` (a sample of the input distribution whose
  predictions matter, e.g. unlabelled pool or test inputs). Computed as
  ``H[Y_n] - mean_m H[Y_n | Y*_m]`` by the table kernel of
  `alfx.batchbald` with the ``M C`` rows ``(m, y*)``. ``0 <= EPIG(n) <=
  BALD(n)`` (data processing: ``Y*`` depends on ``Y_n`` only through the
  parameters). Top-B EPIG is ``alfx.top_b(epig(...), B)``; PowerEPIG, the
  paper's batch recipe, is
  ``alfx.stochastic_batch(epig(...), B, key=key, mode="power")``.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities of the pool.
    target_log_probs: ``float[M, K, C]`` those of the target inputs, from the
      same ``K`` posterior samples. Replicated (never split) when the pool
      is sharded.
    chunk_size: static ``int``, the most pool points per chunk (a cap: the
      kernel lowers it to keep its ``[chunk * C, rows]`` temporary near
      ``2**19`` floats, in cache).

  Returns:
    ``float[N]`` in nats, in ``[0, BALD(n)]`` up to rounding. NaN in the
    inputs (possible only under ``jit``) gives NaN scores.

  Cost: ``2 N M K C**2`` FLOPs (the products of every candidate's
  ``[C, K]`` probabilities with the ``[K, M C]`` target posteriors) and
  ``N M C**2`` logarithms; at ``N=10,000, M=1,000, K=20, C=10``: 4e10 FLOPs
  and 1e9 logs. Memory beyond the inputs: one copy of the probabilities
  (``N K C``), the target table (``M C K``, the size of the targets) and
  about ``2**19`` floats of temporaries, never ``N M C**2``.

  Example:
    >>> import jax, alfx
    >>> lp = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (5, 4, 3)))
    >>> alfx.epig(lp, lp[:2]).shape
    (5,)
  """
  log_probs = _validation.check_log_probs(log_probs)
  log_probs, target_log_probs = _tables.check_targets(
    target_log_probs, log_probs
  )
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  return _epig(log_probs, target_log_probs, chunk_size=chunk_size)


@_sharding.pool_core(
  pool=("log_probs",),
  static=("chunk_size",),
  out_specs=_sharding.pool_spec,
  selection=False,
)
def _epig(log_probs, target_log_probs, chunk_size, axis_name=None):
  """`epig` without input checks, over the local slice of the pool."""
  del axis_name
  probs_t, marginal, _ = _bald.prepare(log_probs, chunk_size)
  scores = _tables.epig_scores(probs_t, marginal, target_log_probs, chunk_size)
  # A NaN target row gets weight 0 in posterior_table (silently dropped):
  # under jit, where the value checks do not run, make it visible.
  return jnp.where(jnp.any(jnp.isnan(target_log_probs)), jnp.nan, scores)


# --------------------------------------------------------------------------
# Target inputs from the pool, and the registry strategies.


@_validation.fused_checks
def pool_targets(
  log_probs: ArrayLike,
  num_targets: int,
  *,
  key: ArrayLike,
  mask: ArrayLike | None = None,
) -> jax.Array:
  """``target_log_probs[M, K, C]``: rows of the pool drawn as target inputs.

  EPIG needs a sample of the target input distribution; without one, the
  pool's own inputs are the usual stand-in (Bickford Smith et al. 2023,
  sec. 5). Draws ``num_targets`` rows uniformly, with replacement (an i.i.d.
  sample, as the estimator assumes), among the points ``mask`` selects (all
  of them when it selects none), with the key only: the same rows on every
  device layout.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities of the pool;
      may be sharded over the pool axis.
    num_targets: static ``int`` ``M``.
    key: PRNG key.
    mask: optional ``bool[N]``, the eligible points (the registry passes the
      selectable, unlabelled ones).

  Returns:
    ``float[M, K, C]``, replicated. Cost ``O(N + M K C)``.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> targets = alfx.pool_targets(lp, 3, key=jax.random.key(0))
    >>> targets.shape  # [M, K, C]
    (3, 2, 2)
  """
  log_probs = _validation.check_log_probs(log_probs)
  mask = _validation.check_mask(mask, log_probs.shape[0])
  num_targets = _validation.check_positive_int(num_targets, "num_targets")
  key = _validation.check_key(key)
  return _pool_targets(log_probs, mask, key, num_targets=num_targets)


@_sharding.pool_core(
  pool=("log_probs", "mask"), static=("num_targets",), selection=False
)
def _pool_targets(log_probs, mask, key, num_targets, axis_name=None):
  """`pool_targets` without input checks, over the local slice of the pool."""
  n_local = mask.shape[0]
  local = jnp.sum(mask, dtype=jnp.int32)
  mask = mask | (_pool.psum(local, axis_name) == 0)  # none: every point
  counts = mask.astype(jnp.int32)
  local = jnp.sum(counts)
  if axis_name is None:
    before, total = jnp.zeros((), jnp.int32), local
  else:
    per_device = _pool.all_gather(local[None], axis_name)
    before = jnp.sum(
      jnp.where(
        jnp.arange(per_device.shape[0]) < lax.axis_index(axis_name),
        per_device,
        0,
      )
    )
    total = jnp.sum(per_device)
  u = jax.random.uniform(key, (num_targets,), jnp.float32)
  rank = jnp.minimum((u * total).astype(jnp.int32), total - 1)
  local_rank = rank - before
  owned = (local_rank >= 0) & (local_rank < local)
  # The local row whose inclusive count of eligible rows first exceeds it.
  row = jnp.clip(
    jnp.searchsorted(jnp.cumsum(counts), local_rank, side="right"),
    0,
    n_local - 1,
  )
  rows = jnp.where(owned[:, None, None], log_probs[row], 0)
  return _pool.psum(rows, axis_name)


def _targets_and_key(context, key, mask, num_targets):
  key = _validation.check_key(key)
  target_key, key = jax.random.split(key)
  # Checked before it meets labeled, so a bad mask gets the contract's error.
  mask = _validation.check_mask(mask, context.log_probs.shape[0])
  given = getattr(context, "target_log_probs", None)
  if given is not None:
    return draw_targets(given, num_targets, key=target_key), key
  targets = pool_targets(
    context.log_probs, num_targets, key=target_key, mask=mask & ~context.labeled
  )
  return targets, key


def draw_targets(target_log_probs, num_targets, *, key):
  """``num_targets`` rows of given target predictions ``[M, K, C]``.

  Drawn uniformly with replacement, as `pool_targets` draws pool rows (an
  i.i.d. sample of the target distribution that ``target_log_probs``
  represents, ``M`` rows of it). Replicated; cost ``O(num_targets K C)``.
  """
  targets = _validation.check_log_probs(
    target_log_probs, "target_log_probs", expected="[M, K, C]", pool=False
  )
  num_targets = _validation.check_positive_int(num_targets, "num_targets")
  rows = jax.random.randint(key, (num_targets,), 0, targets.shape[0])
  return targets[rows]


def epig_strategy(num_targets=DEFAULT_NUM_TARGETS, chunk_size=None):
  """Registry factory of ``"epig"``: top-B EPIG against ``num_targets``
  unlabelled pool inputs drawn per round (`pool_targets`)."""

  def strategy(context, batch_size, *, key, mask):
    targets, _ = _targets_and_key(context, key, mask, num_targets)
    return _selection.top_b(
      epig(context.log_probs, targets, chunk_size=chunk_size),
      batch_size,
      mask=mask,
    )

  return strategy


def batch_epig_strategy(
  num_targets=DEFAULT_NUM_TARGETS,
  num_configurations=_batch_epig.DEFAULT_NUM_CONFIGURATIONS,
  chunk_size=None,
):
  """Registry factory of ``"batch-epig"`` (`batch_epig`, pool targets)."""

  def strategy(context, batch_size, *, key, mask):
    targets, key = _targets_and_key(context, key, mask, num_targets)
    return _batch_epig.batch_epig(
      context.log_probs,
      targets,
      batch_size,
      key=key,
      mask=mask,
      num_configurations=num_configurations,
      chunk_size=chunk_size,
    )

  return strategy


def kepig_strategy(order: int):
  """Registry factory of ``"kepig-<order>"`` (`kepig`, pool targets;
  option ``target_label_samples`` as `kepig`'s)."""

  def factory(
    num_targets=DEFAULT_NUM_TARGETS, target_label_samples=None, chunk_size=None
  ):

    def strategy(context, batch_size, *, key, mask):
      targets, key = _targets_and_key(context, key, mask, num_targets)
      return _kepig.kepig(
        context.log_probs,
        targets,
        batch_size,
        # The key left after drawing the targets; used only to sample
        # target labels.
        key=key,
        order=order,
        mask=mask,
        target_label_samples=target_label_samples,
        chunk_size=chunk_size,
      )

    return strategy

  return factory


def powerepig_strategy(
  num_targets=DEFAULT_NUM_TARGETS, beta=1.0, chunk_size=None
):
  """Registry factory of ``"powerepig"``: power sampling of EPIG scores
  (`alfx.stochastic_batch`, the paper's batch recipe), pool targets."""

  def strategy(context, batch_size, *, key, mask):
    targets, key = _targets_and_key(context, key, mask, num_targets)
    return _sampling.stochastic_batch(
      epig(context.log_probs, targets, chunk_size=chunk_size),
      batch_size,
      key=key,
      mode="power",
      beta=beta,
      mask=mask,
    )

  return strategy

"""BatchEPIG: greedy maximisation of ``mean_m I[Y_S; Y*_m]``.

The BatchBALD recipe (exact tables while they are small, then sampled
configurations) applied to EPIG (Bickford Smith et al. 2023,
arXiv:2304.08151): each step is one signed table of
`alfx.bald_family._epig_tables`.

May import: `alfx._core`, `alfx.information`, `alfx.bald_family._batchbald`,
`alfx.bald_family._epig_tables`.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family import _epig_tables as _tables
from alfx.information import _kernels as _information

#: Default number of sampled configurations of `batch_epig` (rows of the
#: conditional table ``(y_S, m, y*)``).
DEFAULT_NUM_CONFIGURATIONS = _bald.DEFAULT_NUM_CONFIGURATIONS


def exact_steps(
  c: int, m: int, num_configurations: int, batch_size: int
) -> int:
  """Number of leading greedy steps of `batch_epig` that enumerate exactly.

  Step 0 (EPIG) always does; step ``s >= 1`` conditions on ``C**s``
  configurations of the picks and has ``M C**(s+1)`` rows
  ``(y_S, m, y*)``: it is exact while that is at most ``num_configurations``.
  """
  s = 1
  while s < batch_size and m * c ** (s + 1) <= num_configurations:
    s += 1
  return s


def _draw_targets(key, target_log_probs, strata):
  """``log p(y*_r | x*_{m_r}, omega_k)`` ``[R, K]`` of sampled target rows.

  Row ``r`` belongs to the posterior sample ``k_r = strata[r]``; its target
  input ``m_r`` is stratified too (each sample's rows walk through their own
  random permutation of the targets, so each target is equally likely in
  every row and the targets are used evenly) and its label is drawn from
  ``p(. | x*_{m_r}, omega_{k_r})``.
  """
  m, k, _ = target_log_probs.shape
  perm_key, label_key = jax.random.split(key)
  perms = jax.vmap(lambda kk: jax.random.permutation(kk, m))(
    jax.random.split(perm_key, k)
  )  # [K, M]
  slot = (jnp.arange(strata.shape[0]) // k) % m
  targets = perms[strata, slot]  # [R]
  y = jax.random.categorical(
    label_key, target_log_probs[targets, strata], axis=-1
  )
  return target_log_probs[targets, :, y]  # [R, K]


@_validation.fused_checks
def batch_epig(
  log_probs: ArrayLike,
  target_log_probs: ArrayLike,
  batch_size: int,
  *,
  key: ArrayLike | None = None,
  mask: ArrayLike | None = None,
  num_configurations: int = DEFAULT_NUM_CONFIGURATIONS,
  chunk_size: int | None = None,
) -> _selection.Selection:
  r"""BatchEPIG: greedy maximisation of ``mean_m I[Y_S; Y*_m]``.

  The batch-aware EPIG (Bickford Smith et al. 2023, arXiv:2304.08151; the
  BatchBALD recipe of Kirsch et al. 2019 applied to EPIG). Step ``s`` adds
  the candidate of largest marginal gain

    ``mean_m (I[Y_S, Y_n; Y*_m] - I[Y_S; Y*_m])``
    ``= H[Y_n | Y_S] - mean_m H[Y_n | Y_S, Y*_m]``

  (the first step is plain EPIG). Both terms are the table kernel of
  `alfx.batchbald`, in one signed table
  (`alfx.bald_family._epig_tables`):

  * **exact** at step 0 and while ``M C**(s+1) <= num_configurations``:
    the ``C**s`` configurations ``y_S`` (``rho = p(y_S)``) and the
    ``C**s M C`` rows ``(y_S, m, y*)`` (``rho = -p(y_S, y*_m) / M``);
  * **sampled** afterwards: ``num_configurations`` rows, each drawn from the
    joint of one posterior sample ``k_r = r mod K`` (stratified): the labels
    of the picks from ``p(. | x_i, omega_{k_r})`` (a new label per row when
    a point is picked), a target input ``m_r`` (stratified over the targets)
    and its label from ``p(. | x*_{m_r}, omega_{k_r})``. Every row weighs
    ``rho_r = 1 / (K * #rows of sample k_r)``, counted once with its labels
    ``y_S`` and once, negatively, with ``(y_S, y*)``: an unbiased estimate of
    the gain whose error, shared by the two terms and by all candidates,
    shrinks as ``1 / sqrt(num_configurations)``.

  One ``lax.scan``; a ``lax.switch`` on the step counter gives every step
  its own static table size. The objective is submodular in ``S`` (for each
  target, ``I[Y_S; Y*]`` with labels conditionally independent given the
  parameters), so the exact greedy batch is ``1 - 1/e`` optimal.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities of the pool.
    target_log_probs: ``float[M, K, C]`` those of the target inputs (same
      posterior samples); replicated when the pool is sharded.
    batch_size: static ``int`` ``B``.
    key: PRNG key; required when the sampled regime is reached
      (`exact_steps` ``< B``), ignored otherwise.
    mask: optional ``bool[N]``, True where a point may be picked.
    num_configurations: static ``int``, the exact/sampled threshold and the
      number of sampled rows (default 10,000: at ``C = 10, M = 100`` steps
      0 and 1 are exact).
    chunk_size: static ``int``, the most pool points per chunk (see `epig`).

  Returns:
    `alfx.Selection`; ``scores`` are the marginal gains (sampled estimates in
    the sampled regime).

  Cost: step ``s`` runs the kernel on ``R_s`` rows, ``2 R_s K C N`` FLOPs and
  ``R_s C N`` logs, with ``R_0 = M C`` (EPIG), ``R_s = C**s (1 + M C)``
  exact and ``R_s = 2 num_configurations`` sampled: at ``N=10,000, K=20,
  C=10`` a sampled step is 8e10 FLOPs and 2e9 logs. Memory beyond the
  inputs: one copy of the probabilities (``N K C``), the table
  (``R_s K`` floats, a few times) and about ``2**19`` floats of temporaries.

  Raises:
    ValueError: on bad shapes or values (``target_log_probs`` with other
      ``K`` or ``C`` than ``log_probs``), ``num_configurations < K`` when
      sampling is reached, or a missing ``key`` when it is needed.

  Example:
    >>> p = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.8, 0.2]])
    >>> lp = jnp.log(jnp.stack([p, p[:, ::-1]], axis=1))  # [N=4, K=2, C=2]
    >>> alfx.batch_epig(lp, lp, 2).indices.tolist()
    [0, 3]
  """
  log_probs, target_log_probs, mask, batch_size = _tables.check_batch_inputs(
    log_probs, target_log_probs, mask, batch_size
  )
  _, k, c = log_probs.shape
  m = target_log_probs.shape[0]
  num_configurations = _validation.check_positive_int(
    num_configurations, "num_configurations"
  )
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  n_exact = exact_steps(c, m, num_configurations, batch_size)
  key = _bald.sampling_key(
    key,
    k,
    num_configurations,
    n_exact,
    batch_size,
    why=f"batch_size={batch_size} with C={c} classes and M={m} targets"
    f" switches to sampled configurations after {n_exact} picks (pick"
    f" {n_exact + 1} would enumerate M * C**{n_exact + 1} ="
    f" {m * c ** (n_exact + 1)} rows > num_configurations="
    f"{num_configurations})",
  )
  return _batch_epig(
    log_probs,
    target_log_probs,
    mask,
    key,
    batch_size=batch_size,
    num_configurations=num_configurations,
    chunk_size=chunk_size,
  )


@_sharding.pool_core(
  pool=("log_probs", "mask"),
  static=("batch_size", "num_configurations", "chunk_size"),
)
def _batch_epig(
  log_probs,
  target_log_probs,
  mask,
  key,
  batch_size,
  num_configurations,
  chunk_size,
  axis_name=None,
):
  """`batch_epig` without input checks, over the local slice of the pool."""
  _, k, c = log_probs.shape
  m = target_log_probs.shape[0]
  dtype = log_probs.dtype
  probs_t, marginal, _ = _bald.prepare(log_probs, chunk_size)
  target_rows = _tables.target_rows(target_log_probs)
  first = _tables.epig_scores(probs_t, marginal, target_log_probs, chunk_size)
  n_exact = exact_steps(c, m, num_configurations, batch_size)
  sampled = n_exact < batch_size

  def exact_branch(s):
    def branch(picked, table, targets):
      del table, targets
      if s == 0:
        return first
      log_cond = _information.log_joint_table(picked[:s])
      weights, rho = _tables.gain_table(log_cond, target_rows, m)
      return _bald.table_entropy(probs_t, weights, rho, chunk_size=chunk_size)

    return branch

  branches = [exact_branch(s) for s in range(n_exact)]
  if sampled:
    strata, row_weights = _bald.label_strata(num_configurations, k, dtype)
    label_key, target_key = jax.random.split(key)
    targets = _draw_targets(target_key, target_log_probs, strata)
    row_weights = jnp.concatenate([row_weights, -row_weights])

    def sampled_branch(picked, table, targets):
      del picked
      weights = jnp.concatenate(
        [
          _bald.posterior_table(table)[0],
          _bald.posterior_table(table + targets)[0],
        ]
      )
      return _bald.table_entropy(
        probs_t, weights, row_weights, chunk_size=chunk_size
      )

    branches.append(sampled_branch)
    table0 = jnp.zeros((num_configurations, k), dtype)
  else:
    label_key = targets = table0 = None

  def step(carry, t):
    available, picked, table = carry
    if len(branches) == 1:
      gains = branches[0](picked, table, targets)
    else:
      # The branch index depends on the step counter only: a real
      # conditional under vmap too.
      gains = lax.switch(
        jnp.minimum(t, len(branches) - 1), branches, picked, table, targets
      )
    index, score, valid, available = _selection.pick(
      gains, available, axis_name
    )
    lp = _pool.take(log_probs, index, axis_name)
    picked = picked.at[t].set(lp)
    if sampled:
      table = table + _bald.draw_labels(
        # label_key is a key whenever sampled is True.
        jax.random.fold_in(label_key, t),  # pyright: ignore[reportArgumentType]
        lp,
        strata,
      )
    return (available, picked, table), (index, score, valid)

  init = (mask, jnp.zeros((batch_size, k, c), dtype), table0)
  _, (indices, scores, valid) = lax.scan(
    step, init, jnp.arange(batch_size, dtype=jnp.int32)
  )
  return _selection.Selection(indices.astype(jnp.int32), scores, valid)

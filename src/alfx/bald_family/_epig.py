"""EPIG, BatchEPIG and k-EPIG: acquisition for the predictions that matter.

F. Bickford Smith, A. Kirsch, S. Farquhar, Y. Gal, A. Foster and
T. Rainforth, "Prediction-Oriented Bayesian Active Learning", AISTATS 2023,
arXiv:2304.08151.

BALD values information about the parameters, much of which never matters
for the predictions a user cares about. The expected predictive information
gain (EPIG) values information about the labels ``Y*`` of inputs ``x*``
drawn from the target input distribution. With the pool's
``log_probs[N, K, C]`` and the targets' ``target_log_probs[M, K, C]`` (the
same ``K`` posterior samples), labels are modelled jointly by the
``K``-sample mixture of `alfx._bald`, e.g.
``p(y_n, y*_m) = mean_k p(y_n | x_n, omega_k) p(y* | x*_m, omega_k)``, and

  ``EPIG(n) = mean_m I[Y_n; Y*_m] = H[Y_n] - mean_m H[Y_n | Y*_m]``.

Everything is the table kernel `alfx._bald.table_entropy`: a table of rows
``r`` (label configurations of points we condition on), each with a
posterior ``W[r, k] = p(omega_k | y_r)`` and a weight ``rho_r``, scores
every pool point by ``sum_r rho_r H[p(Y_n | y_r)]``. For EPIG the rows are
the ``M * C`` pairs ``(m, y*)``, ``W[(m, y*), k] propto p(y* | x*_m,
omega_k)`` and ``rho = p(y*_m) / M``; one candidate costs one
``[C, K] @ [K, M C]`` product and ``M C**2`` logarithms. Rows of negative
weight subtract: the conditional gain

  ``I[Y_n; Y* | Y_V] = H[Y_n | Y_V] - mean_m H[Y_n | Y_V, Y*_m]``

is ONE table: the ``C**|V|`` rows ``y_V`` with ``rho = p(y_V)`` followed by
the ``C**|V| M C`` rows ``(y_V, m, y*)`` with ``rho = -p(y_V, y*_m) / M``.

Greedy BatchEPIG adds the gain ``I[Y_n; Y* | Y_S]`` of the picked set ``S``;
k-EPIG truncates the inclusion-exclusion of ``I[Y_S; Y*]`` at co-informations
of ``order`` pool labels (derivation in `kepig`), updated incrementally like
`alfx.kbald`. PowerEPIG, the paper's batch recipe, is
``alfx.stochastic_batch(alfx.epig(log_probs, targets), B, key=key)``.

Target inputs are not pool arrays: ``target_log_probs`` is replicated on
every device when the pool is sharded. `pool_targets` draws them from the
pool's unlabelled inputs, as the registry strategies do.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from alfx.bald_family import _batchbald as _bald
from alfx.information import _kernels as _information
from alfx.bald_family import _kbald
from alfx._core import pool as _pool
from alfx._core import sampling as _sampling
from alfx._core import selection as _selection
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation

#: Default number of sampled configurations of `batch_epig` (rows of the
#: conditional table ``(y_S, m, y*)``).
DEFAULT_NUM_CONFIGURATIONS = _bald.DEFAULT_NUM_CONFIGURATIONS

#: Default number of target inputs the registry strategies draw from the pool.
DEFAULT_NUM_TARGETS = 100

# As in alfx._kbald: increment tables are split into blocks of whole subsets.
_MIN_BLOCK_ROWS = 64


# --------------------------------------------------------------------------
# Input checks and tables.


def _check_targets(target_log_probs, log_probs):
  """Checks ``target_log_probs[M, K, C]`` against the pool's ``[N, K, C]``.

  Returns both arrays in their common floating dtype.
  """
  targets = _validation.check_log_probs(
      target_log_probs, "target_log_probs", expected="[M, K, C]", pool=False)
  _, k, c = log_probs.shape
  if targets.shape[1:] != log_probs.shape[1:]:
    raise ValueError(
        f"target_log_probs must have shape [M, K={k}, C={c}], the K posterior"
        f" samples and C classes of log_probs {list(log_probs.shape)}"
        f" ([N, K, C]), got {list(targets.shape)}. Predict the target inputs"
        " with the same posterior samples (ensemble members, dropout masks)"
        " as the pool, in the same order.")
  dtype = jnp.result_type(log_probs.dtype, targets.dtype)
  return log_probs.astype(dtype), targets.astype(dtype)


def _target_rows(target_log_probs):
  """``log p(y* = c | x*_m, omega_k)`` as rows ``[M * C, K]`` (row m*C + c)."""
  m, k, c = target_log_probs.shape
  return jnp.swapaxes(target_log_probs, 1, 2).reshape(m * c, k)


def _gain_table(log_cond, target_rows, m: int):
  """The signed table of ``I[Y_n; Y* | Y_V]`` (module docstring).

  Args:
    log_cond: ``[..., R, K]``, ``log p(y_V | omega_k)`` over the ``R``
      configurations of the conditioning labels.
    target_rows: ``[M * C, K]`` from `_target_rows`.
    m: the number of targets ``M``.

  Returns:
    ``(W[..., R (1 + M C), K], rho[..., R (1 + M C)])``: first the ``R``
    rows ``y_V`` (``rho = p(y_V)``), then the rows ``(y_V, m, y*)``
    (``rho = -p(y_V, y*_m) / M``), so that `alfx._bald.table_entropy` returns
    ``H[Y_n | Y_V] - mean_m H[Y_n | Y_V, Y*_m]``.
  """
  lead = log_cond.shape[:-2]
  r, k = log_cond.shape[-2:]
  first_w, first_rho = _bald.posterior_table(log_cond)
  joint = log_cond[..., :, None, :] + target_rows
  second_w, second_rho = _bald.posterior_table(joint)
  weights = jnp.concatenate(
      [first_w, second_w.reshape(lead + (-1, k))], axis=-2)
  rho = jnp.concatenate(
      [first_rho, -second_rho.reshape(lead + (-1,)) / m], axis=-1)
  del r
  return weights, rho


def _epig_scores(probs_t, marginal, target_log_probs, chunk_size: int):
  """``EPIG(n)`` ``[N]`` from `alfx._bald.prepare`'s ``probs_t``, ``H[Y_n]``.

  Clipped at 0 (rounding can make the difference a few ulps negative); NaN
  stays NaN.
  """
  m = target_log_probs.shape[0]
  weights, mass = _bald.posterior_table(_target_rows(target_log_probs))
  h = _bald.table_entropy(probs_t, weights, mass / m, chunk_size=chunk_size)
  return jnp.maximum(marginal - h, 0)


# --------------------------------------------------------------------------
# EPIG.


def epig(log_probs, target_log_probs, *, chunk_size=None):
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
  log_probs, target_log_probs = _check_targets(target_log_probs, log_probs)
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  return _epig(log_probs, target_log_probs, chunk_size=chunk_size)


@_sharding.pool_core(pool=("log_probs",), static=("chunk_size",),
                     out_specs=_sharding.pool_spec, selection=False)
def _epig(log_probs, target_log_probs, chunk_size, axis_name=None):
  """`epig` without input checks, over the local slice of the pool."""
  del axis_name
  probs_t, marginal, _ = _bald.prepare(log_probs, chunk_size)
  scores = _epig_scores(probs_t, marginal, target_log_probs, chunk_size)
  # A NaN target row gets weight 0 in posterior_table (silently dropped):
  # under jit, where the value checks do not run, make it visible.
  return jnp.where(jnp.any(jnp.isnan(target_log_probs)), jnp.nan, scores)


# --------------------------------------------------------------------------
# BatchEPIG.


def exact_steps(c: int, m: int, num_configurations: int,
                batch_size: int) -> int:
  """Number of leading greedy steps of `batch_epig` that enumerate exactly.

  Step 0 (EPIG) always does; step ``s >= 1`` conditions on ``C**s``
  configurations of the picks and has ``M C**(s+1)`` rows
  ``(y_S, m, y*)``: it is exact while that is at most ``num_configurations``.
  """
  s = 1
  while s < batch_size and m * c**(s + 1) <= num_configurations:
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
      jax.random.split(perm_key, k))  # [K, M]
  slot = (jnp.arange(strata.shape[0]) // k) % m
  targets = perms[strata, slot]  # [R]
  y = jax.random.categorical(label_key, target_log_probs[targets, strata],
                             axis=-1)
  return target_log_probs[targets, :, y]  # [R, K]


def batch_epig(log_probs, target_log_probs, batch_size, *, key=None,
               mask=None, num_configurations=DEFAULT_NUM_CONFIGURATIONS,
               chunk_size=None):
  r"""BatchEPIG: greedy maximisation of ``mean_m I[Y_S; Y*_m]``.

  The batch-aware EPIG (Bickford Smith et al. 2023, arXiv:2304.08151; the
  BatchBALD recipe of Kirsch et al. 2019 applied to EPIG). Step ``s`` adds
  the candidate of largest marginal gain

    ``mean_m (I[Y_S, Y_n; Y*_m] - I[Y_S; Y*_m])
      = H[Y_n | Y_S] - mean_m H[Y_n | Y_S, Y*_m]``

  (the first step is plain EPIG). Both terms are the table kernel of
  `alfx.batchbald`, in one signed table (module docstring):

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
  """
  log_probs = _validation.check_log_probs(log_probs)
  n, k, c = log_probs.shape
  mask = _validation.check_mask(mask, n)
  log_probs, target_log_probs = _check_targets(target_log_probs, log_probs)
  m = target_log_probs.shape[0]
  batch_size = _validation.check_batch_size(batch_size, mask)
  num_configurations = _validation.check_positive_int(num_configurations,
                                                      "num_configurations")
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  n_exact = exact_steps(c, m, num_configurations, batch_size)
  if n_exact < batch_size:
    if key is None:
      raise ValueError(
          f"key is required: batch_size={batch_size} with C={c} classes and"
          f" M={m} targets switches to sampled configurations after"
          f" {n_exact} picks (pick {n_exact + 1} would enumerate M *"
          f" C**{n_exact + 1} = {m * c**(n_exact + 1)} rows >"
          f" num_configurations={num_configurations}). Pass"
          " key=jax.random.key(seed), or raise num_configurations (memory"
          " and time grow with it).")
    key = _validation.check_key(key)
    if num_configurations < k:
      raise ValueError(
          f"num_configurations={num_configurations} must be at least K={k}"
          " (log_probs [N, K, C]) when the sampled regime is reached: the"
          " sampled configurations are stratified over the K posterior"
          " samples.")
  else:
    key = None
  return _batch_epig(log_probs, target_log_probs, mask, key,
                     batch_size=batch_size,
                     num_configurations=num_configurations,
                     chunk_size=chunk_size)


@_sharding.pool_core(pool=("log_probs", "mask"),
                     static=("batch_size", "num_configurations", "chunk_size"))
def _batch_epig(log_probs, target_log_probs, mask, key, batch_size,
                num_configurations, chunk_size, axis_name=None):
  """`batch_epig` without input checks, over the local slice of the pool."""
  _, k, c = log_probs.shape
  m = target_log_probs.shape[0]
  dtype = log_probs.dtype
  probs_t, marginal, _ = _bald.prepare(log_probs, chunk_size)
  target_rows = _target_rows(target_log_probs)
  first = _epig_scores(probs_t, marginal, target_log_probs, chunk_size)
  n_exact = exact_steps(c, m, num_configurations, batch_size)
  sampled = n_exact < batch_size

  def exact_branch(s):
    def branch(picked, table, targets):
      del table, targets
      if s == 0:
        return first
      log_cond = _information.log_joint_table(picked[:s])
      weights, rho = _gain_table(log_cond, target_rows, m)
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
      weights = jnp.concatenate([_bald.posterior_table(table)[0],
                                 _bald.posterior_table(table + targets)[0]])
      return _bald.table_entropy(probs_t, weights, row_weights,
                                 chunk_size=chunk_size)

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
      gains = lax.switch(jnp.minimum(t, len(branches) - 1), branches, picked,
                         table, targets)
    index, score, valid, available = _selection.pick(gains, available, axis_name)
    lp = _pool.take(log_probs, index, axis_name)
    picked = picked.at[t].set(lp)
    if sampled:
      table = table + _bald.draw_labels(
          jax.random.fold_in(label_key, t), lp, strata)
    return (available, picked, table), (index, score, valid)

  init = (mask, jnp.zeros((batch_size, k, c), dtype), table0)
  _, (indices, scores, valid) = lax.scan(
      step, init, jnp.arange(batch_size, dtype=jnp.int32))
  return _selection.Selection(indices.astype(jnp.int32), scores, valid)


# --------------------------------------------------------------------------
# k-EPIG.


def _rows_per_subset(u: int, c: int, m: int) -> int:
  """Rows of the signed table of one conditioning set of ``u`` labels."""
  return c**u * (1 + m * c)


def _check_order(order, batch_size: int, c: int, m: int) -> int:
  order = _validation.check_positive_int(order, "order")
  order = min(order, batch_size)
  rows = sum(math.comb(batch_size - 1, u - 1) * _rows_per_subset(u, c, m)
             for u in range(1, order))
  if rows > _information.MAX_CONFIGURATIONS:
    raise ValueError(
        f"order={order} with C={c} classes, M={m} targets and batch_size="
        f"{batch_size} needs increment tables of {rows} rows per step (sum"
        " over u < order of binom(B-1, u-1) C**u (1 + M C)), above"
        f" alfx.MAX_CONFIGURATIONS = {_information.MAX_CONFIGURATIONS};"
        " use a lower order, fewer target inputs (target_log_probs), or"
        " alfx.batch_epig, which samples configurations.")
  return order


class _KEpigState:
  """Static set-up of the order-k increments (subset tables, coefficients)."""

  def __init__(self, log_probs, target_log_probs, batch_size: int,
               order: int, chunk_size: int):
    self.order = order
    self.c = log_probs.shape[-1]
    self.m = target_log_probs.shape[0]
    self.target_rows = _target_rows(target_log_probs)
    self.chunk_size = chunk_size
    self.coefficients = jnp.asarray(
        _kbald.kbald_coefficients(batch_size, order), log_probs.dtype)
    self.subsets = {u: _kbald.colex_subsets(max(batch_size - 1, 0), u - 1)
                    for u in range(1, order)}
    # counts[u][t]: subsets V' of the t - 1 points picked before the previous
    # pick (pick t - 1); 0 at t = 0, where there is no previous pick.
    self.counts = {
        u: jnp.asarray([0] + [math.comb(t - 1, u - 1)
                              for t in range(1, batch_size + 1)], jnp.int32)
        for u in range(1, order)}

  def increment(self, probs_t, picked, t, u):
    """``sum_{V' subset S_old, |V'| = u-1} I[Y_n; Y* | Y_V', Y_j]``, j = pick t-1.

    The signed tables of all subsets are stacked into one (colex order: the
    active subsets are a prefix, the rest get zero weight and are skipped).
    """
    subsets = self.subsets[u]
    n_sub = subsets.shape[0]
    previous = picked[jnp.maximum(t - 1, 0)]
    members = jnp.concatenate(
        [picked[subsets],
         jnp.broadcast_to(previous, (n_sub, 1) + previous.shape)],
        axis=1)  # [n_sub, u, K, C]
    log_cond = jax.vmap(_information.log_joint_table)(members)
    weights, rho = _gain_table(log_cond, self.target_rows, self.m)
    count = self.counts[u][t]
    rho = jnp.where((jnp.arange(n_sub) < count)[:, None], rho, 0)
    per = _rows_per_subset(u, self.c, self.m)
    rows = n_sub * per

    def compute(operands):
      weights, rho, count = operands
      return _bald.table_entropy(
          probs_t, weights.reshape(rows, -1), rho.reshape(rows),
          chunk_size=self.chunk_size, num_rows=count * per,
          block_rows=per * -(-_MIN_BLOCK_ROWS // per))

    # No previous pick at t = 0; the predicate is the step counter, so this
    # stays a real conditional (a skipped pass over the pool) under vmap.
    return lax.cond(t > 0, compute,
                    lambda _: jnp.zeros(probs_t.shape[:1], probs_t.dtype),
                    (weights, rho, count))

  def gains_and_update(self, probs_t, first, d, picked, t):
    """Adds the increments of pick ``t - 1`` to ``E_u`` and returns the gains."""
    a = self.coefficients[t]
    gain = a[0] * first
    columns = []
    for u in range(1, self.order):
      column = d[:, u - 1] + self.increment(probs_t, picked, t, u)
      gain = gain + a[u] * column
      columns.append(column)
    return jnp.stack(columns, axis=1), gain


def kepig(log_probs, target_log_probs, batch_size, *, order=2, mask=None,
          chunk_size=None):
  r"""Greedy k-EPIG: BatchEPIG's inclusion-exclusion truncated at ``order``.

  The k-BALD idea (Kirsch 2023, "Speeding Up BatchBALD: A k-BALD Family of
  Approximations for Active Learning", arXiv:2301.12631) applied to EPIG
  (Bickford Smith et al. 2023, arXiv:2304.08151). Per target ``Y*`` (then
  averaged over the ``M`` targets):

  **Expansion.** With the co-information
  ``I(Y_T) = sum_{non-empty U subset T} (-1)**(|U|+1) H[Y_U]`` (sign
  convention ``I(X;Y;Z) = I(X;Y) - I(X;Y|Z)``), the joint entropy expands
  as ``H[Y_S] = sum_{non-empty T subset S} (-1)**(|T|+1) I(Y_T)`` and, the
  same identity conditioned on ``Y*``,
  ``H[Y_S | Y*] = sum_T (-1)**(|T|+1) I(Y_T | Y*)``. Subtracting, with
  ``I(Y_T) - I(Y_T | Y*) = I(Y_T; Y*)`` (the co-information of the labels
  of ``T`` together with ``Y*``):

    ``I[Y_S; Y*] = sum_{non-empty T subset S} (-1)**(|T|+1) I(Y_T; Y*)``.

  **Greedy gain.** Adding ``n`` to ``S`` adds the terms ``T + {n}``:
  ``I[Y_{S+n}; Y*] - I[Y_S; Y*] = sum_{T subset S} (-1)**|T| I(Y_T, Y_n; Y*)``.
  k-EPIG keeps the co-informations of at most ``order`` pool labels:

    ``gain_k(n | S) = sum_{T subset S, |T| <= order-1} (-1)**|T|
      mean_m I(Y_T, Y_n; Y*_m)``;

  ``order=1`` is EPIG (top-k EPIG), ``order=2`` is 2-EPIG,
  ``EPIG(n) - sum_{j in S} mean_m I(Y_n; Y_j; Y*_m)``: a pick ``j``
  penalises the candidates that would tell the same about the targets (a
  duplicate of ``j`` above all). The terms can be negative (synergy).

  **Computation.** ``I(Y_T, Y_n; Y*) = sum_{V subset T} (-1)**|V|
  I[Y_n; Y* | Y_V]`` (co-information as iterated differences), and
  collecting the terms of each ``V`` gives, as for `alfx.kbald`,

    ``gain_k(n | S) = sum_{u=0}^{order-1} a_u(|S|) E_u(n)``,
    ``E_u(n) = sum_{V subset S, |V| = u} mean_m I[Y_n; Y*_m | Y_V]``,
    ``a_u(s) = sum_{i=0}^{order-1-u} (-1)**i binom(s - u, i)``,

  with ``E_0 = EPIG``. For ``order > |S|`` only ``a_{|S|} = 1`` survives:
  the BatchEPIG gain ``I[Y_n; Y* | Y_S]``, so ``order >= batch_size`` gives
  the picks and gains of exact `batch_epig`. The ``E_u`` are per-point state
  of the scan; a pick ``j`` adds only the terms that contain it,
  ``E_u += sum_{V' subset S_old, |V'| = u-1} mean_m I[Y_n; Y* | Y_V', Y_j]``,
  each the signed table of the module docstring on ``C**u (1 + M C)`` rows.

  Args:
    log_probs: ``float[N, K, C]`` predictive log-probabilities of the pool.
    target_log_probs: ``float[M, K, C]`` those of the target inputs (same
      posterior samples); replicated when the pool is sharded.
    batch_size: static ``int`` ``B``.
    order: static ``int >= 1``; values above ``batch_size`` act as
      ``batch_size``.
    mask: optional ``bool[N]``, True where a point may be picked.
    chunk_size: static ``int``, the most pool points per chunk (see `epig`).

  Returns:
    `alfx.Selection`; ``scores`` are the order-``k`` gains (they can be
    negative for ``order >= 2``).

  Cost: EPIG once, then step ``s`` costs
  ``sum_{u=1}^{order-1} binom(s-1, u-1) 2 C**(u+1) (1 + M C) K N`` FLOPs and
  a ``1 / (2 K)`` as many logs: a 2-EPIG step is ``C`` EPIGs,
  ``2 M K C**3 N`` FLOPs and ``M C**3 N`` logs (4e10 FLOPs and 1e9 logs at
  ``N=10,000, M=100, K=20, C=10``). The co-information ``I(Y_n; Y_j; Y*_m)``
  needs every ``p(y_n, y_j, y*_m)``, ``C**3`` entries per ``(n, m)``: this
  is the floor of an exact 2-EPIG. Memory beyond the inputs: one copy of
  the probabilities, ``(order - 1) N`` floats of state, the increment
  tables (``sum_u binom(B-1, u-1) C**u (1 + M C) K`` floats) and about
  ``2**19`` floats of temporaries.

  Raises:
    ValueError: on bad shapes or values, or increment tables above
      ``alfx.MAX_CONFIGURATIONS`` rows.
  """
  log_probs = _validation.check_log_probs(log_probs)
  n, _, c = log_probs.shape
  mask = _validation.check_mask(mask, n)
  log_probs, target_log_probs = _check_targets(target_log_probs, log_probs)
  batch_size = _validation.check_batch_size(batch_size, mask)
  order = _check_order(order, batch_size, c, target_log_probs.shape[0])
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  return _kepig(log_probs, target_log_probs, mask, batch_size=batch_size,
                order=order, chunk_size=chunk_size)


@_sharding.pool_core(pool=("log_probs", "mask"),
                     static=("batch_size", "order", "chunk_size"))
def _kepig(log_probs, target_log_probs, mask, batch_size, order, chunk_size,
           axis_name=None):
  """`kepig` without input checks, over the local slice of the pool."""
  n, k, c = log_probs.shape
  probs_t, marginal, _ = _bald.prepare(log_probs, chunk_size)
  first = _epig_scores(probs_t, marginal, target_log_probs, chunk_size)
  if order == 1:

    def step1(available, t):
      del t
      index, score, valid, available = _selection.pick(first, available, axis_name)
      return available, (index, score, valid)

    _, (indices, scores, valid) = lax.scan(
        step1, mask, jnp.arange(batch_size, dtype=jnp.int32))
    return _selection.Selection(indices, scores, valid)

  state = _KEpigState(log_probs, target_log_probs, batch_size, order,
                      chunk_size)

  def step(carry, t):
    available, picked, d = carry
    d, gains = state.gains_and_update(probs_t, first, d, picked, t)
    index, score, valid, available = _selection.pick(gains, available, axis_name)
    picked = picked.at[t].set(_pool.take(log_probs, index, axis_name))
    return (available, picked, d), (index, score, valid)

  init = (mask, jnp.zeros((batch_size, k, c), log_probs.dtype),
          jnp.zeros((n, order - 1), log_probs.dtype))
  _, (indices, scores, valid) = lax.scan(
      step, init, jnp.arange(batch_size, dtype=jnp.int32))
  return _selection.Selection(indices, scores, valid)


# --------------------------------------------------------------------------
# Target inputs from the pool, and the registry strategies.


def pool_targets(log_probs, num_targets, *, key, mask=None):
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
  """
  log_probs = _validation.check_log_probs(log_probs)
  mask = _validation.check_mask(mask, log_probs.shape[0])
  num_targets = _validation.check_positive_int(num_targets, "num_targets")
  key = _validation.check_key(key)
  return _pool_targets(log_probs, mask, key, num_targets=num_targets)


@_sharding.pool_core(pool=("log_probs", "mask"), static=("num_targets",),
                     selection=False)
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
    before = jnp.sum(jnp.where(
        jnp.arange(per_device.shape[0]) < lax.axis_index(axis_name),
        per_device, 0))
    total = jnp.sum(per_device)
  u = jax.random.uniform(key, (num_targets,), jnp.float32)
  rank = jnp.minimum((u * total).astype(jnp.int32), total - 1)
  local_rank = rank - before
  owned = (local_rank >= 0) & (local_rank < local)
  # The local row whose inclusive count of eligible rows first exceeds it.
  row = jnp.clip(jnp.searchsorted(jnp.cumsum(counts), local_rank,
                                  side="right"), 0, n_local - 1)
  rows = jnp.where(owned[:, None, None], log_probs[row], 0)
  return _pool.psum(rows, axis_name)


def _targets_and_key(context, key, mask, num_targets):
  key = _validation.check_key(key)
  target_key, key = jax.random.split(key)
  # Checked before it meets labeled, so a bad mask gets the contract's error.
  mask = _validation.check_mask(mask, context.log_probs.shape[0])
  targets = pool_targets(context.log_probs, num_targets, key=target_key,
                         mask=mask & ~context.labeled)
  return targets, key


def epig_strategy(num_targets=DEFAULT_NUM_TARGETS, chunk_size=None):
  """Registry factory of ``"epig"``: top-B EPIG against ``num_targets``
  unlabelled pool inputs drawn per round (`pool_targets`)."""

  def strategy(context, batch_size, *, key, mask):
    targets, _ = _targets_and_key(context, key, mask, num_targets)
    return _selection.top_b(epig(context.log_probs, targets,
                                 chunk_size=chunk_size), batch_size,
                            mask=mask)

  return strategy


def batch_epig_strategy(num_targets=DEFAULT_NUM_TARGETS,
                        num_configurations=DEFAULT_NUM_CONFIGURATIONS,
                        chunk_size=None):
  """Registry factory of ``"batch-epig"`` (`batch_epig`, pool targets)."""

  def strategy(context, batch_size, *, key, mask):
    targets, key = _targets_and_key(context, key, mask, num_targets)
    return batch_epig(context.log_probs, targets, batch_size, key=key,
                      mask=mask, num_configurations=num_configurations,
                      chunk_size=chunk_size)

  return strategy


def kepig_strategy(order: int):
  """Registry factory of ``"kepig-<order>"`` (`kepig`, pool targets)."""

  def factory(num_targets=DEFAULT_NUM_TARGETS, chunk_size=None):

    def strategy(context, batch_size, *, key, mask):
      targets, _ = _targets_and_key(context, key, mask, num_targets)
      return kepig(context.log_probs, targets, batch_size, order=order,
                   mask=mask, chunk_size=chunk_size)

    return strategy

  return factory


def powerepig_strategy(num_targets=DEFAULT_NUM_TARGETS, beta=1.0,
                       chunk_size=None):
  """Registry factory of ``"powerepig"``: power sampling of EPIG scores
  (`alfx.stochastic_batch`, the paper's batch recipe), pool targets."""

  def strategy(context, batch_size, *, key, mask):
    targets, key = _targets_and_key(context, key, mask, num_targets)
    return _sampling.stochastic_batch(
        epig(context.log_probs, targets, chunk_size=chunk_size), batch_size,
        key=key, mode="power", beta=beta, mask=mask)

  return strategy

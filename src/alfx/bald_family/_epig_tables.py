"""EPIG's tables for the table kernel of `alfx.bald_family._batchbald`.

The expected predictive information gain values information about the
labels ``Y*`` of target inputs ``x*`` (Bickford Smith et al. 2023,
arXiv:2304.08151). With the pool's ``log_probs[N, K, C]`` and the targets'
``target_log_probs[M, K, C]`` (the same ``K`` posterior samples), labels are
modelled jointly by the ``K``-sample mixture of BatchBALD, e.g.
``p(y_n, y*_m) = mean_k p(y_n | x_n, omega_k) p(y* | x*_m, omega_k)``, and

  ``EPIG(n) = mean_m I[Y_n; Y*_m] = H[Y_n] - mean_m H[Y_n | Y*_m]``.

Everything is the table kernel `table_entropy`: a table of rows ``r``
(label configurations of points we condition on), each with a posterior
``W[r, k] = p(omega_k | y_r)`` and a weight ``rho_r``, scores every pool
point by ``sum_r rho_r H[p(Y_n | y_r)]``. For EPIG the rows are the
``M * C`` pairs ``(m, y*)``, ``W[(m, y*), k] propto p(y* | x*_m,
omega_k)`` and ``rho = p(y*_m) / M``; one candidate costs one
``[C, K] @ [K, M C]`` product and ``M C**2`` logarithms. Rows of negative
weight subtract: the conditional gain

  ``I[Y_n; Y* | Y_V] = H[Y_n | Y_V] - mean_m H[Y_n | Y_V, Y*_m]``

is ONE table (`gain_table`): the ``C**|V|`` rows ``y_V`` with
``rho = p(y_V)`` followed by the ``C**|V| M C`` rows ``(y_V, m, y*)`` with
``rho = -p(y_V, y*_m) / M``. BatchEPIG and k-EPIG build every step from it.

May import: `alfx._core`, `alfx.bald_family._batchbald`.
"""

import jax.numpy as jnp

from alfx._core import validation as _validation
from alfx.bald_family import _batchbald as _bald


def check_targets(target_log_probs, log_probs):
  """Checks ``target_log_probs[M, K, C]`` against the pool's ``[N, K, C]``.

  Returns both arrays in their common floating dtype.
  """
  targets = _validation.check_log_probs(
    target_log_probs, "target_log_probs", expected="[M, K, C]", pool=False
  )
  _, k, c = log_probs.shape
  if targets.shape[1:] != log_probs.shape[1:]:
    raise ValueError(
      f"target_log_probs must have shape [M, K={k}, C={c}], the K posterior"
      f" samples and C classes of log_probs {list(log_probs.shape)}"
      f" ([N, K, C]), got {list(targets.shape)}. Predict the target inputs"
      " with the same posterior samples (ensemble members, dropout masks)"
      " as the pool, in the same order."
    )
  dtype = jnp.result_type(log_probs.dtype, targets.dtype)
  return log_probs.astype(dtype), targets.astype(dtype)


def check_batch_inputs(log_probs, target_log_probs, mask, batch_size):
  """The shared checks of the batch EPIGs (`batch_epig`, `kepig`).

  Returns ``(log_probs, target_log_probs, mask, batch_size)`` checked, the
  two predictions in their common floating dtype.
  """
  log_probs = _validation.check_log_probs(log_probs)
  mask = _validation.check_mask(mask, log_probs.shape[0])
  log_probs, target_log_probs = check_targets(target_log_probs, log_probs)
  batch_size = _validation.check_batch_size(batch_size, mask)
  return log_probs, target_log_probs, mask, batch_size


def target_rows(target_log_probs):
  """``log p(y* = c | x*_m, omega_k)`` as rows ``[M * C, K]`` (row m*C + c)."""
  m, k, c = target_log_probs.shape
  return jnp.swapaxes(target_log_probs, 1, 2).reshape(m * c, k)


def gain_table(log_cond, targets, m: int):
  """The signed table of ``I[Y_n; Y* | Y_V]`` (module docstring).

  Args:
    log_cond: ``[..., R, K]``, ``log p(y_V | omega_k)`` over the ``R``
      configurations of the conditioning labels.
    targets: ``[M * C, K]`` from `target_rows`.
    m: the number of targets ``M``.

  Returns:
    ``(W[..., R (1 + M C), K], rho[..., R (1 + M C)])``: first the ``R``
    rows ``y_V`` (``rho = p(y_V)``), then the rows ``(y_V, m, y*)``
    (``rho = -p(y_V, y*_m) / M``), so that the table kernel
    (`alfx.bald_family._batchbald.table_entropy`) returns
    ``H[Y_n | Y_V] - mean_m H[Y_n | Y_V, Y*_m]``.
  """
  lead = log_cond.shape[:-2]
  r, k = log_cond.shape[-2:]
  first_w, first_rho = _bald.posterior_table(log_cond)
  joint = log_cond[..., :, None, :] + targets
  second_w, second_rho = _bald.posterior_table(joint)
  weights = jnp.concatenate(
    [first_w, second_w.reshape(lead + (-1, k))], axis=-2
  )
  rho = jnp.concatenate(
    [first_rho, -second_rho.reshape(lead + (-1,)) / m], axis=-1
  )
  del r
  return weights, rho


def epig_scores(probs_t, marginal, target_log_probs, chunk_size: int):
  """``EPIG(n)`` ``[N]`` from ``probs_t``, ``H[Y_n]`` of `_batchbald.prepare`.

  Clipped at 0 (rounding can make the difference a few ulps negative); NaN
  stays NaN.
  """
  m = target_log_probs.shape[0]
  weights, mass = _bald.posterior_table(target_rows(target_log_probs))
  h = _bald.table_entropy(probs_t, weights, mass / m, chunk_size=chunk_size)
  return jnp.maximum(marginal - h, 0)

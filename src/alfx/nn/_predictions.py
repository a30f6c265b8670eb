"""Predictive samples of a Flax model over a pool, in chunks.

Posterior samples come from a deep ensemble (params of ``K`` members stacked on
a leading axis, `alfx.init_ensemble`, predictions by ``jax.vmap`` over
members) or MC dropout (one set of params, ``K`` stochastic passes by
``jax.vmap`` over ``K`` keys). Predictions run over the pool in chunks of at
most ``chunk_size`` rows (default `alfx._core.pool.DEFAULT_CHUNK_SIZE`, 1024)
inside one compiled program, so peak memory is set by ``chunk_size``, not by
``N``. The ``*_unchecked`` cores (jitted, no validation) are what the
compiled loop (`alfx.loop`) calls inside its round.

May import: jax, `alfx._core`, `alfx.nn._forward` (the `Forward` type).
"""

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from alfx._core import pool as _pool
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation
from alfx.nn._forward import Forward


class Predictions(NamedTuple):
  """Predictive samples and last-layer quantities for a pool.

  Attributes:
    log_probs: ``float[N, K, C]`` log-probabilities (``log_softmax`` of the
      logits) under each of the ``K`` posterior samples.
    embeddings: ``float[N, D]`` inputs of the last linear layer, from one
      deterministic network: ensemble member 0, or the MC-dropout model with
      dropout off.
    probs: ``float[N, C]`` softmax of that same network, so that ``(embeddings,
      probs)`` describe one last layer (what BAIT's Fisher information needs).

  Example:
    >>> import flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3)])
    >>> forward = alfx.linen_forward(model)
    >>> x = jnp.ones((5, 2))
    >>> params = alfx.init_ensemble(lambda k: model.init(k, x[:1]), 2,
    ...                             key=jax.random.key(0))
    >>> pred = alfx.ensemble_predictions(forward, params, x)
    >>> [a.shape for a in pred]  # log_probs, embeddings, probs
    [(5, 2, 3), (5, 4), (5, 3)]
  """

  log_probs: jax.Array
  embeddings: jax.Array
  probs: jax.Array


def check_inputs(inputs, name="inputs") -> jax.Array:
  """Pool inputs ``float[N, ...]``: floating, finite, ``N >= 1``."""
  inputs = _validation.as_float_array(inputs, name, "[N, ...]")
  if inputs.ndim < 1 or inputs.shape[0] == 0:
    raise ValueError(
      f"{name} must have shape [N, ...] with N >= 1, got"
      f" shape {list(inputs.shape)}."
    )
  _validation.check_finite(inputs, name, "[N, ...]")
  return inputs


def _check_forward_output(logits, embeddings, b):
  if logits.ndim != 2 or logits.shape[0] != b:
    raise ValueError(
      f"forward must return logits of shape [b={b}, C], got"
      f" {list(logits.shape)}."
    )
  if embeddings.ndim != 2 or embeddings.shape[0] != b:
    raise ValueError(
      f"forward must return embeddings of shape [b={b}, D],"
      f" got {list(embeddings.shape)}."
    )


def _to_log_probs(logits):
  """``[K, b, C]`` logits to ``[b, K, C]`` log-probabilities (log_softmax)."""
  return jax.nn.log_softmax(jnp.swapaxes(logits, 0, 1), axis=-1)


def _ensemble_chunk(forward, params, x):
  """``([b, K, C] log-probs, [b, D] embeddings, [b, C] probs)`` of a chunk."""
  logits, embeddings = jax.vmap(lambda p: forward(p, x, None))(params)
  _check_forward_output(logits[0], embeddings[0], x.shape[0])
  # Member 0's embeddings are a by-product of the vmapped pass: no extra work.
  return (
    _to_log_probs(logits),
    embeddings[0],
    jax.nn.softmax(logits[0], axis=-1),
  )


def _consistent_pass(forward, params, x, key):
  """Logits ``[b, C]`` of one stochastic pass with the same dropout draw for
  every point: each point goes through as its own batch of one, all with
  ``key`` (``vmap`` folds the points back into one matmul)."""
  return jax.vmap(lambda xi: forward(params, xi[None], key)[0][0])(x)


def _dropout_chunk(forward, params, keys, x):
  logits = jax.vmap(lambda k: _consistent_pass(forward, params, x, k))(keys)
  det_logits, embeddings = forward(params, x, None)
  _check_forward_output(det_logits, embeddings, x.shape[0])
  return (
    _to_log_probs(logits),
    embeddings,
    jax.nn.softmax(det_logits, axis=-1),
  )


def ensemble_predictions(
  forward: Forward,
  params: Any,
  inputs: ArrayLike,
  *,
  chunk_size: int | None = None,
) -> Predictions:
  """Predictive samples of a deep ensemble over a pool, in chunks.

  ``log_probs[n, k] = log_softmax(forward(params[k], inputs[n], None))``:
  member ``k``'s deterministic prediction, by ``jax.vmap`` over the stacked
  params. ``embeddings`` and ``probs`` come from member 0 (one network, so
  that BAIT's Fisher information of its last layer is well defined; the
  members' feature spaces are unrelated, so averaging embeddings would not
  be); they are a by-product of the same pass.

  Args:
    forward: a `Forward`.
    params: params of ``K`` members stacked on a leading axis.
    inputs: ``float[N, ...]`` pool inputs.
    chunk_size: static; the most pool rows predicted at once (None: 1024,
      `alfx._core.pool.DEFAULT_CHUNK_SIZE`). Peak memory of the intermediates is
      ``O(chunk_size * K * width)``, whatever ``N``.

  Returns:
    `Predictions` ``(log_probs[N, K, C], embeddings[N, D], probs[N, C])``.
    When ``inputs`` is sharded over the pool axis (`alfx.shard_pool`), each
    device predicts its own rows and the outputs are sharded the same way,
    ready for any acquisition (params are replicated).

  Example:
    >>> import flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3)])
    >>> forward = alfx.linen_forward(model)
    >>> x = jnp.ones((5, 2))
    >>> params = alfx.init_ensemble(lambda k: model.init(k, x[:1]), 3,
    ...                             key=jax.random.key(0))
    >>> pred = alfx.ensemble_predictions(forward, params, x)
    >>> pred.log_probs.shape, pred.embeddings.shape, pred.probs.shape
    ((5, 3, 3), (5, 4), (5, 3))
    >>> bool(jnp.allclose(jnp.exp(pred.log_probs).sum(-1), 1))
    True
  """
  inputs = check_inputs(inputs)
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  return _ensemble_local(params, inputs, forward=forward, chunk_size=chunk_size)


@_sharding.pool_core(
  pool=("inputs",),
  static=("forward", "chunk_size"),
  out_specs=_sharding.pool_spec,
  selection=False,
)
def _ensemble_local(params, inputs, forward, chunk_size, axis_name=None):
  """The rows of ``inputs`` at hand: points are independent, no collective."""
  del axis_name
  return ensemble_predictions_unchecked(forward, params, inputs, chunk_size)


@functools.partial(jax.jit, static_argnums=(0, 3))
def ensemble_predictions_unchecked(forward, params, inputs, chunk_size):
  """`ensemble_predictions` without validation (static ``forward``,
  ``chunk_size``): the loop's round calls it inside its own ``jit``."""
  return Predictions(
    *_pool.chunked_map(
      # fn returns a tuple of arrays: _core types it as one array.
      lambda x: _ensemble_chunk(forward, params, x),  # pyright: ignore[reportArgumentType]
      inputs,
      chunk_size=chunk_size,
    )
  )


def mc_dropout_predictions(
  forward: Forward,
  params: Any,
  inputs: ArrayLike,
  *,
  key: jax.Array,
  num_samples: int,
  chunk_size: int | None = None,
) -> Predictions:
  """Predictive samples of an MC-dropout model over a pool, in chunks.

  ``log_probs[n, k] = log_softmax(forward(params, inputs[n], key_k))`` for
  ``num_samples`` keys split from ``key``, by ``jax.vmap`` over the keys.
  Dropout is *consistent* (Kirsch et al. 2019): sample ``k`` applies the same
  dropout masks to every pool point, so it is one network ``omega_k`` across
  the pool, as the joint ``p(y_1..y_B) = mean_k prod_i p(y_i | omega_k)`` of
  BatchBALD and k-BALD requires (independent per-point masks would make the
  points' predictions look independent). This is done for any model by
  passing each point as its own batch of one under ``jax.vmap`` with the
  sample's key; the result does not depend on ``chunk_size``. ``embeddings``
  and ``probs`` come from the deterministic pass (dropout off), one extra
  forward pass.

  Args:
    forward: a `Forward` whose stochastic pass applies dropout.
    params: one model's params.
    inputs: ``float[N, ...]`` pool inputs.
    key: PRNG key of the dropout masks.
    num_samples: static ``K``.
    chunk_size: static; the most pool rows predicted at once (None: 1024,
      `alfx._core.pool.DEFAULT_CHUNK_SIZE`).

  Returns:
    `Predictions` ``(log_probs[N, K, C], embeddings[N, D], probs[N, C])``.
    When ``inputs`` is sharded over the pool axis (`alfx.shard_pool`), each
    device predicts its own rows and the outputs are sharded the same way;
    the dropout masks are shared by all points, so the predictions equal the
    single-device ones.

  Example:
    >>> import flax.linen as nn
    >>> class Net(nn.Module):
    ...   rate: float = 0.5
    ...   @nn.compact
    ...   def __call__(self, x, train=False):
    ...     h = nn.Dense(4)(x)
    ...     return nn.Dense(3)(nn.Dropout(self.rate, deterministic=not train)(h))
    >>> net = Net()
    >>> forward = alfx.linen_forward(net, train_kwargs={"train": True})
    >>> params = net.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> x = jnp.ones((5, 2))
    >>> pred = alfx.mc_dropout_predictions(
    ...   forward, params, x, key=jax.random.key(1), num_samples=4)
    >>> pred.log_probs.shape, pred.embeddings.shape
    ((5, 4, 3), (5, 4))
  """
  inputs = check_inputs(inputs)
  key = _validation.check_key(key)
  num_samples = _validation.check_positive_int(num_samples, "num_samples")
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  return _mc_dropout_local(
    params,
    inputs,
    key,
    forward=forward,
    num_samples=num_samples,
    chunk_size=chunk_size,
  )


@_sharding.pool_core(
  pool=("inputs",),
  static=("forward", "num_samples", "chunk_size"),
  out_specs=_sharding.pool_spec,
  selection=False,
)
def _mc_dropout_local(
  params, inputs, key, forward, num_samples, chunk_size, axis_name=None
):
  # Every point uses the same K keys (consistent dropout), so the local rows
  # get exactly the single-device predictions: nothing depends on the layout.
  del axis_name
  return mc_dropout_predictions_unchecked(
    forward, params, inputs, key, num_samples, chunk_size
  )


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def mc_dropout_predictions_unchecked(
  forward, params, inputs, key, num_samples, chunk_size
):
  """`mc_dropout_predictions` without validation (static ``forward``,
  ``num_samples``, ``chunk_size``): the loop's round calls it inside its own
  ``jit``."""
  keys = jax.random.split(key, num_samples)
  return Predictions(
    *_pool.chunked_map(
      # fn returns a tuple of arrays: _core types it as one array.
      lambda x: _dropout_chunk(forward, params, keys, x),  # pyright: ignore[reportArgumentType]
      inputs,
      chunk_size=chunk_size,
    )
  )

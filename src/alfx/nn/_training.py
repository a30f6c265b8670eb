"""Training a Flax model on the labelled points of a fixed-size pool.

Ensemble initialisation (`init_ensemble`), uniform draws among the labelled
points (`sample_labeled`), a jitted optax step (`make_train_step`) and a
jitted trainer (`make_fit`): one ``lax.scan`` of optax steps on minibatches
drawn from the fixed-size ``labeled[N]`` mask, so no shape depends on how
many points are labelled; ``jax.vmap`` it over ensemble members or seeds.

Randomness comes only from a keyword-only ``key`` argument.

May import: jax, `alfx._core`, `alfx.nn._require` (optax only through
`require`, when a loss is built), `alfx.nn._forward`,
`alfx.nn._predictions` (the pool-input check).
"""

from collections.abc import Callable
from typing import Any
from typing import cast
from typing import NamedTuple
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

if TYPE_CHECKING:
  import optax

from alfx._core import validation as _validation
from alfx.nn import _predictions
from alfx.nn._forward import Forward
from alfx.nn._require import require


class FitResult(NamedTuple):
  """Trained params and the minibatch loss of every step (``float[steps]``).

  Example:
    >>> result = alfx.FitResult({"w": jnp.zeros(2)}, jnp.array([0.5, 0.25]))
    >>> result.params["w"].shape, result.losses.tolist()
    ((2,), [0.5, 0.25])
  """

  params: Any
  losses: jax.Array


def init_ensemble(
  init_fn: Callable[[jax.Array], Any], num_members: int, *, key: jax.Array
) -> Any:
  """Params of ``num_members`` independently initialised models, stacked.

  ``jax.vmap(init_fn)`` over ``num_members`` keys split from ``key``: every
  leaf gains a leading axis ``[K, ...]``.

  Args:
    init_fn: ``key -> params``, e.g. ``lambda k: module.init(k, x[:1])`` or,
      for NNX, ``lambda k: nnx_forward(Model(rngs=nnx.Rngs(k)))[1]``.
    num_members: ``K``, static.
    key: PRNG key.

  Returns:
    The stacked params.

  Example:
    >>> import flax.linen as nn
    >>> mlp, x = nn.Dense(3), jnp.ones((5, 2))
    >>> params = alfx.init_ensemble(lambda k: mlp.init(k, x[:1]), 8,
    ...                             key=jax.random.key(0))
    >>> params["params"]["kernel"].shape  # [K, 2, 3]
    (8, 2, 3)
  """
  key = _validation.check_key(key)
  num_members = _validation.check_positive_int(num_members, "num_members")
  return jax.vmap(init_fn)(jax.random.split(key, num_members))


def sample_labeled(
  labeled: ArrayLike, batch_size: int, *, key: jax.Array
) -> jax.Array:
  """``int32[batch_size]`` indices drawn uniformly, with replacement, among
  the True entries of ``labeled[N]``.

  Inverse-CDF sampling on the running count of labelled points: ``O(N)`` for
  the count plus ``O(batch_size log N)``, no ``[batch_size, N]`` noise.

  Args:
    labeled: ``bool[N]``, at least one True.
    batch_size: static number of draws.
    key: PRNG key.

  Returns:
    ``int32[batch_size]`` indices in ``[0, N)``. Under ``jit`` the values of
    ``labeled`` cannot be checked: with no labelled point every index is 0
    (in range, but not a labelled point: weight draws by ``labeled[idx]``,
    as `make_fit` does, to ignore them).

  Raises:
    ValueError: ``key`` is None, ``batch_size`` is not a positive int,
      ``labeled`` is not ``bool[N]``, or (on concrete input) it marks no
      point.

  Example:
    >>> labeled = jnp.array([True, False, True, False, False])
    >>> alfx.sample_labeled(labeled, 6, key=jax.random.key(0)).tolist()
    [2, 2, 0, 0, 2, 0]
  """
  key = _validation.check_key(key)
  batch_size = _validation.check_positive_int(batch_size, "batch_size")
  # An array either way (NumPy or JAX): pyright cannot narrow by hasattr.
  labeled = cast(
    jax.Array, labeled if hasattr(labeled, "dtype") else jnp.asarray(labeled)
  )
  if labeled.ndim != 1 or labeled.shape[0] == 0:
    raise ValueError(
      f"labeled must be a boolean array of shape [N] with"
      f" N >= 1, got shape {list(labeled.shape)}."
    )
  labeled = _validation.check_mask(labeled, labeled.shape[0], name="labeled")
  if _validation.is_concrete(labeled) and not bool(jnp.any(labeled)):
    raise ValueError(
      "labeled (shape [N]) marks no point: sample_labeled"
      " draws among the labelled points, so label at least"
      " one (e.g. with alfx.initial_state)."
    )
  return _sample_from_counts(key, _running_count(labeled), batch_size)


def _running_count(labeled):
  return jnp.cumsum(labeled.astype(jnp.int32))


def _sample_from_counts(key, counts, batch_size):
  total = counts[-1]
  u = jax.random.uniform(key, (batch_size,))
  rank = jnp.minimum(
    jnp.floor(u * total).astype(jnp.int32), jnp.maximum(total - 1, 0)
  )
  # The (rank + 1)-th labelled point: the first index whose count exceeds rank.
  # With nothing labelled no count exceeds 0 and searchsorted returns N (out
  # of range): return 0 instead.
  index = jnp.searchsorted(counts, rank, side="right").astype(jnp.int32)
  return jnp.where(total > 0, index, 0)


def cross_entropy_loss(logits, labels, weights):
  """Weighted mean softmax cross-entropy (0 when all weights are 0)."""
  optax = require("optax", "training (alfx.make_fit, make_train_step)")
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1)


def make_train_step(
  forward: Forward, optimizer: "optax.GradientTransformation"
) -> Callable[..., tuple[Any, Any, jax.Array]]:
  """A jitted optax step on one minibatch.

  Args:
    forward: a `Forward`.
    optimizer: an optax ``GradientTransformation``.

  Returns:
    ``step(params, opt_state, x[b, ...], y int[b], weights[b], *, key)
    -> (params, opt_state, loss)``; ``key`` drives dropout (None: the
    deterministic pass).

  Example:
    >>> import flax.linen as nn, optax
    >>> model, x = nn.Dense(3), jnp.ones((5, 2))
    >>> params = model.init(jax.random.key(0), x[:1])
    >>> step = alfx.make_train_step(alfx.linen_forward(model), optax.sgd(0.1))
    >>> opt_state = optax.sgd(0.1).init(params)
    >>> y, weights = jnp.array([0, 1, 2, 0, 1]), jnp.ones(5)
    >>> params, opt_state, loss = step(params, opt_state, x, y, weights,
    ...                                key=None)
    >>> loss.shape
    ()
  """

  return jax.jit(_train_step(forward, optimizer))


def _train_step(forward, optimizer):
  """The unjitted step (inlined into the training scan)."""

  def loss_fn(params, x, y, w, key):
    logits, _ = forward(params, x, key)
    return cross_entropy_loss(logits, y, w)

  def step(params, opt_state, x, y, weights, *, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, weights, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    optax = require("optax", "alfx.make_train_step")
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def make_fit(
  forward: Forward,
  optimizer: "optax.GradientTransformation",
  *,
  num_steps: int,
  batch_size: int,
) -> Callable[..., FitResult]:
  """A jitted trainer: ``num_steps`` optax steps on the labelled points.

  Each step draws ``batch_size`` labelled points uniformly with replacement
  (`sample_labeled`) and takes one ``optimizer`` step on their mean
  cross-entropy, dropout keyed per step. The loop is one ``lax.scan`` and
  every shape is fixed by ``N``, ``num_steps`` and ``batch_size``: the number
  of labelled points is a value, so new labels never recompile. Draws that
  are not labelled (only when ``labeled`` is all False, under ``jit``) get
  weight 0, so the parameters then do not move.

  ``fit`` is pure: ``jax.vmap`` it over stacked ensemble params and keys to
  train ``K`` members (or ``R`` seeds) in one program, e.g.
  ``jax.vmap(lambda p, k: fit.core(p, x, y, labeled, key=k))(params, keys)``.

  Args:
    forward: a `Forward`.
    optimizer: an optax ``GradientTransformation``.
    num_steps: static number of steps.
    batch_size: static minibatch size.

  Returns:
    ``fit(params, inputs[N, ...], labels int[N], labeled bool[N], *, key) ->
    FitResult(params, losses[num_steps])``. Called on concrete arrays it
    checks shapes, that labels are in ``[0, C)`` and that at least one point
    is labelled. ``fit.core`` (same signature) is the unchecked function, for
    use inside ``jit``/``vmap``.

  Example:
    >>> import flax.linen as nn, optax
    >>> model, x = nn.Dense(3), jnp.ones((5, 2))
    >>> params = model.init(jax.random.key(0), x[:1])
    >>> fit = alfx.make_fit(alfx.linen_forward(model), optax.adam(0.05),
    ...                     num_steps=20, batch_size=4)
    >>> labels = jnp.array([0, 1, 2, 0, 1])
    >>> labeled = jnp.array([True, False, True, False, False])
    >>> result = fit(params, x, labels, labeled, key=jax.random.key(0))
    >>> result.losses.shape, bool(result.losses[-1] < result.losses[0])
    ((20,), True)
  """
  num_steps = _validation.check_positive_int(num_steps, "num_steps")
  batch_size = _validation.check_positive_int(batch_size, "batch_size")
  step = _train_step(forward, optimizer)

  def core(params, inputs, labels, labeled, *, key):
    opt_state = optimizer.init(params)
    counts = _running_count(labeled)  # once, not per step

    def body(carry, k):
      params, opt_state = carry
      k_batch, k_drop = jax.random.split(k)
      idx = _sample_from_counts(k_batch, counts, batch_size)
      w = labeled[idx].astype(inputs.dtype)
      params, opt_state, loss = step(
        params, opt_state, inputs[idx], labels[idx], w, key=k_drop
      )
      return (params, opt_state), loss

    (params, _), losses = jax.lax.scan(
      body, (params, opt_state), jax.random.split(key, num_steps)
    )
    return FitResult(params, losses)

  jitted = jax.jit(core)

  def fit(params, inputs, labels, labeled, *, key):
    inputs, labels, labeled = check_training_data(inputs, labels, labeled)
    key = _validation.check_key(key)
    if _validation.is_concrete(labels, labeled):
      c = jax.eval_shape(
        lambda p, x: forward(p, x, None)[0], params, inputs[:1]
      ).shape[-1]
      check_label_values(labels, c)
      if not bool(jnp.any(labeled)):
        raise ValueError(
          "labeled (shape [N]) selects no points: fit needs at"
          " least one labelled point."
        )
    return jitted(params, inputs, labels, labeled, key=key)

  # The unchecked, jit/vmap friendly function (an attribute pyright can't see).
  fit.core = core  # pyright: ignore[reportFunctionMemberAccess]
  return fit


def check_training_data(inputs, labels, labeled):
  """Shapes of ``inputs[N, ...]``, ``labels int[N]`` and ``labeled bool[N]``."""
  inputs = _predictions.check_inputs(inputs)
  n = inputs.shape[0]
  labels = labels if isinstance(labels, jax.Array) else jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"labels must be an integer array of shape [N={n}], got"
      f" dtype {labels.dtype}: pass labels.astype(int)."
    )
  if labels.shape != (n,):
    raise ValueError(
      f"labels must have shape [N={n}] (one per input), got"
      f" {list(labels.shape)}."
    )
  labeled = _validation.check_mask(labeled, n, name="labeled")
  return inputs, labels, labeled


def check_label_values(labels, num_classes: int, name: str = "labels"):
  """On concrete ``labels``: every value is a class index in ``[0, C)``."""
  if not _validation.is_concrete(labels) or labels.size == 0:
    return
  lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
  if lo < 0 or hi >= num_classes:
    raise ValueError(
      f"{name} must be class indices in [0, C={num_classes}),"
      f" got values in [{lo}, {hi}]."
    )

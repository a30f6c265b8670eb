"""The active-learning loop: one compiled round, vmappable over seeds.

A round trains the model on the labelled points (from the same
initialisation every round), measures test accuracy, predicts the pool,
acquires a batch with any strategy and flips the picked points in the
``labeled[N]`` mask. Every shape is fixed by the pool size, the batch size and
the model, so the round compiles once and later rounds reuse the program;
``jax.vmap`` over a leading seed axis of the params and the state runs ``R``
repetitions of an experiment in one program.

May import: jax, `alfx._core`, `alfx.nn` (its modules: the unchecked
prediction cores), `alfx.loop._registry`.
"""

from collections.abc import Callable
import functools
from typing import Any
from typing import cast
from typing import NamedTuple
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

if TYPE_CHECKING:
  import optax

from alfx._core import pool as _pool
from alfx._core import selection as _selection
from alfx._core import validation as _validation
from alfx.loop import _registry
from alfx.nn import _forward
from alfx.nn import _predictions
from alfx.nn import _training


class Data(NamedTuple):
  """A fixed-size pool with its oracle labels, and a test set.

  Attributes:
    pool_inputs: ``float[N, ...]``.
    pool_labels: ``int[N]`` the labels the oracle reveals when a point is
      acquired (only labelled points are ever trained on).
    test_inputs: ``float[T, ...]``.
    test_labels: ``int[T]``.

  Example:
    >>> x, y = jnp.ones((6, 2)), jnp.arange(6) % 3
    >>> data = alfx.Data(pool_inputs=x, pool_labels=y, test_inputs=x[:2],
    ...                  test_labels=y[:2])
    >>> data.pool_inputs.shape, data.test_labels.tolist()
    ((6, 2), [0, 1])
  """

  pool_inputs: jax.Array
  pool_labels: jax.Array
  test_inputs: jax.Array
  test_labels: jax.Array


class LoopState(NamedTuple):
  """``labeled``: ``bool[N]``; ``key``: the PRNG key of the next round.

  Example:
    >>> state = alfx.LoopState(jnp.array([True, False, False]),
    ...                        jax.random.key(0))
    >>> int(state.labeled.sum())
    1
  """

  labeled: jax.Array
  key: jax.Array


class RoundMetrics(NamedTuple):
  """What one round measured.

  Attributes:
    accuracy: ``float[]`` test accuracy of the model trained on the points
      labelled at the start of the round (prediction: argmax of the mean
      over the ``K`` posterior samples).
    num_labeled: ``int32[]`` how many points it was trained on.
    loss: ``float[]`` mean minibatch loss over the last tenth of training
      (mean over ensemble members).
    selection: the batch acquired this round.

  Example:
    >>> sel = alfx.Selection(jnp.array([2]), jnp.array([0.5]),
    ...                      jnp.array([True]))
    >>> metrics = alfx.RoundMetrics(accuracy=jnp.float32(0.75),
    ...   num_labeled=jnp.int32(4), loss=jnp.float32(0.3), selection=sel)
    >>> float(metrics.accuracy), metrics.selection.indices.tolist()
    (0.75, [2])
  """

  accuracy: jax.Array
  num_labeled: jax.Array
  loss: jax.Array
  selection: _selection.Selection


class Loop(NamedTuple):
  """Jitted functions of an active-learning experiment.

  Attributes:
    round: ``(params, state, data) -> (state, RoundMetrics)``, the whole round
      in one program.
    train_and_predict: ``(params, state, data) -> (StrategyContext,
      accuracy, loss)``, the first half of the round: train, test, predict
      the pool (and the EPIG targets, with ``epig_targets="test"``).
    acquire: ``(context, state) -> (state, Selection)``, the second
      half. ``round`` equals ``acquire`` after ``train_and_predict`` (the same
      keys); use the halves to time acquisition on its own.
    evaluate: ``(params, state, data) -> accuracy``: train and test only
      (the accuracy after the last acquisition).

  Example:
    >>> import flax.linen as nn, optax
    >>> loop = alfx.make_loop(alfx.linen_forward(nn.Dense(3)), optax.sgd(0.1),
    ...                       "entropy", batch_size=2, num_steps=5)
    >>> loop._fields
    ('round', 'train_and_predict', 'acquire', 'evaluate')
  """

  round: Callable
  train_and_predict: Callable
  acquire: Callable
  evaluate: Callable


def _split_round_key(key):
  next_key, train_key, acquire_key = jax.random.split(key, 3)
  return next_key, train_key, acquire_key


def make_loop(
  forward: _forward.Forward,
  optimizer: "optax.GradientTransformation",
  strategy: str | _registry.Strategy,
  *,
  batch_size: int,
  num_steps: int,
  train_batch_size: int = 64,
  mc_dropout_samples: int | None = None,
  chunk_size: int | None = None,
  strategy_options: dict | None = None,
  epig_targets: str = "pool",
) -> Loop:
  """Builds the jitted active-learning round for a model and a strategy.

  Posterior samples: by default a deep ensemble, ``params`` holding ``K``
  members stacked on a leading axis (`alfx.init_ensemble`); every member is
  trained by ``jax.vmap`` of `alfx.make_fit` with its own key, and predicts
  deterministically. With ``mc_dropout_samples=K``, ``params`` is one model,
  trained with dropout, and predicts with ``K`` consistent dropout masks.

  Each round trains from ``params`` (the same initialisation every round,
  so a round's model depends only on the labelled set and the key), then
  tests, predicts the pool (`alfx.ensemble_predictions` /
  `alfx.mc_dropout_predictions`), calls
  ``strategy(context, batch_size, key=key, mask=~labeled)`` and sets the
  valid picks in ``labeled``.

  Cost per round: ``num_steps`` optimizer steps on ``train_batch_size``
  points per member, ``K`` forward passes over the pool and the test set,
  and the strategy's own cost. Memory: the pool arrays, ``log_probs[N, K,
  C]`` and the strategy's state; forward intermediates are bounded by
  ``chunk_size``.

  Args:
    forward: a `alfx.Forward` (`alfx.linen_forward`, `alfx.nnx_forward`).
    optimizer: optax transformation used by every member.
    strategy: a registered name (see `alfx.strategy_names`) or a
      ``Strategy`` callable.
    batch_size: static acquisition batch size ``B``.
    num_steps: static training steps per round.
    train_batch_size: static minibatch size.
    mc_dropout_samples: ``K`` for MC dropout; None for an ensemble.
    chunk_size: static; the most pool rows predicted at once (None: 1024,
      `alfx._core.pool.DEFAULT_CHUNK_SIZE`).
    strategy_options: options for `alfx.get_strategy` when ``strategy`` is a
      name.
    epig_targets: where the EPIG strategies draw their target inputs:
      ``"pool"`` (the unlabelled pool, `alfx.pool_targets`) or ``"test"``
      (``data.test_inputs``, predicted under the pool's posterior samples:
      the same dropout masks, or the same members, and handed to the
      strategy as ``StrategyContext.target_log_probs``). With ``"test"``
      the test accuracy uses those same predictions.

  Returns:
    A `Loop`. ``jax.vmap`` its functions over a leading axis of ``params``
    and ``state`` (``data`` unbatched) for several seeds in one program, or
    use `vmap_loop`.

  Example:
    >>> import flax.linen as nn, optax
    >>> x = jax.random.normal(jax.random.key(0), (12, 2))
    >>> y = jnp.arange(12) % 3
    >>> data = alfx.Data(x, y, x, y)
    >>> model = nn.Dense(3)
    >>> params = alfx.init_ensemble(lambda k: model.init(k, x[:1]), 2,
    ...                             key=jax.random.key(1))
    >>> loop = alfx.make_loop(alfx.linen_forward(model), optax.adam(0.1),
    ...                       "entropy", batch_size=2, num_steps=5)
    >>> state = alfx.initial_state(y, 3, key=jax.random.key(2))
    >>> state, metrics = loop.round(params, state, data)
    >>> int(metrics.num_labeled), int(state.labeled.sum())
    (3, 5)
  """
  batch_size = _validation.check_positive_int(batch_size, "batch_size")
  if isinstance(strategy, str):
    strategy = _registry.get_strategy(strategy, **(strategy_options or {}))
  elif strategy_options:
    raise ValueError("strategy_options apply to a strategy given by name.")
  if not callable(strategy):
    raise ValueError(
      f"strategy must be a registered name or a callable, got {strategy!r}."
    )
  if mc_dropout_samples is not None:
    mc_dropout_samples = _validation.check_positive_int(
      mc_dropout_samples, "mc_dropout_samples"
    )
  chunk_size = _validation.check_chunk_size(
    chunk_size, _pool.DEFAULT_CHUNK_SIZE
  )
  if epig_targets not in ("pool", "test"):
    raise ValueError(
      f'epig_targets must be "pool" or "test", got {epig_targets!r}.'
    )
  fit = _training.make_fit(
    forward, optimizer, num_steps=num_steps, batch_size=train_batch_size
  ).core
  tail = max(1, num_steps // 10)

  def train(params, labeled, key, data):
    if mc_dropout_samples is None:
      keys = jax.random.split(key, jax.tree.leaves(params)[0].shape[0])
      result = jax.vmap(
        lambda p, k: fit(p, data.pool_inputs, data.pool_labels, labeled, key=k)
      )(params, keys)
      loss = jnp.mean(result.losses[:, -tail:])
    else:
      result = fit(params, data.pool_inputs, data.pool_labels, labeled, key=key)
      loss = jnp.mean(result.losses[-tail:])
    return result.params, loss

  def predict(params, inputs, key):
    if mc_dropout_samples is None:
      return _predictions.ensemble_predictions_unchecked(
        forward, params, inputs, chunk_size
      )
    return _predictions.mc_dropout_predictions_unchecked(
      forward, params, inputs, key, mc_dropout_samples, chunk_size
    )

  def train_and_predict(params, state, data):
    _, train_key, _ = _split_round_key(state.key)
    fit_key, test_key, pool_key = jax.random.split(train_key, 3)
    trained, loss = train(params, state.labeled, fit_key, data)
    pool = predict(trained, data.pool_inputs, pool_key)
    # Test targets must be the pool's posterior samples: the pool's key
    # gives the same dropout masks (consistent dropout depends on the key
    # only) and the ensemble's members are the same anyway.
    targets = epig_targets == "test"
    test = predict(trained, data.test_inputs, pool_key if targets else test_key)
    accuracy = _accuracy(test.log_probs, data.test_labels)
    context = _registry.StrategyContext(
      log_probs=pool.log_probs,
      embeddings=pool.embeddings,
      probs=pool.probs,
      labeled=state.labeled,
      target_log_probs=test.log_probs if targets else None,
    )
    return context, accuracy, loss

  def acquire(context, state):
    next_key, _, acquire_key = _split_round_key(state.key)
    context = context._replace(labeled=state.labeled)
    selection = strategy(
      context, batch_size, key=acquire_key, mask=~state.labeled
    )
    labeled = _selection.flip_selected(state.labeled, selection)
    return LoopState(labeled, next_key), selection

  def round_(params, state, data):
    context, accuracy, loss = train_and_predict(params, state, data)
    new_state, selection = acquire(context, state)
    metrics = RoundMetrics(
      accuracy=accuracy,
      num_labeled=jnp.sum(state.labeled, dtype=jnp.int32),
      loss=loss,
      selection=selection,
    )
    return new_state, metrics

  def evaluate(params, state, data):
    return train_and_predict(params, state, data)[1]

  return Loop(
    round=jax.jit(round_),
    train_and_predict=jax.jit(train_and_predict),
    acquire=jax.jit(acquire),
    evaluate=jax.jit(evaluate),
  )


def _accuracy(log_probs, labels):
  """Accuracy of the argmax of the mean predictive ``[T, K, C]``."""
  mean_log = jax.nn.logsumexp(log_probs, axis=1)  # log K offset is irrelevant
  return jnp.mean(jnp.argmax(mean_log, axis=-1) == labels)


def vmap_loop(loop: Loop, *, seeds_per_batch: int | None = None) -> Loop:
  """The `Loop` over a leading seed axis of ``params`` and ``state``.

  ``data`` stays shared. Each function is one jitted program for all seeds.

  Args:
    loop: from `make_loop`.
    seeds_per_batch: None (default) maps with ``jax.vmap``: every seed's
      work in one wide program. An int maps with ``jax.lax.map(...,
      batch_size=seeds_per_batch)``: a compiled loop over groups of that
      many vmapped seeds (1: one seed at a time), still one program and no
      host round-trip; less memory, and on a CPU often as fast, since an
      ensemble already fills the vector units.

  Returns:
    A `Loop` whose functions take and return seed-batched values.

  Example:
    >>> def round_(params, state, data):  # a stand-in: label the first free
    ...   i = jnp.argmin(state.labeled)
    ...   sel = alfx.Selection(i[None], jnp.zeros(1), jnp.ones(1, bool))
    ...   metrics = alfx.RoundMetrics(jnp.float32(1), state.labeled.sum(),
    ...                               jnp.float32(0), sel)
    ...   return state._replace(labeled=state.labeled.at[i].set(True)), metrics
    >>> loop = alfx.Loop(round_, round_, round_, round_)
    >>> seeds = alfx.LoopState(jnp.eye(2, 3, dtype=bool),  # 2 seeds, N = 3
    ...                        jax.random.split(jax.random.key(0), 2))
    >>> state, metrics = alfx.vmap_loop(loop).round(None, seeds, None)
    >>> metrics.selection.indices.tolist()
    [[1], [0]]
  """
  if seeds_per_batch is None:
    batch = lambda f, shared: jax.jit(
      jax.vmap(f, in_axes=(0, 0, None) if shared else (0, 0))
    )
  else:
    seeds_per_batch = _validation.check_positive_int(
      seeds_per_batch, "seeds_per_batch"
    )

    def batch(f, shared):
      if shared:
        return jax.jit(
          lambda a, b, c: jax.lax.map(
            lambda ab: f(ab[0], ab[1], c), (a, b), batch_size=seeds_per_batch
          )
        )
      return jax.jit(
        lambda a, b: jax.lax.map(
          lambda ab: f(ab[0], ab[1]), (a, b), batch_size=seeds_per_batch
        )
      )

  return Loop(
    round=batch(loop.round, True),
    train_and_predict=batch(loop.train_and_predict, True),
    acquire=batch(loop.acquire, False),
    evaluate=batch(loop.evaluate, True),
  )


class History(NamedTuple):
  """A whole experiment: ``R`` rounds and a final evaluation.

  Attributes:
    accuracy: ``float[..., R + 1]`` test accuracy after training on
      ``num_labeled`` points: before each acquisition, then after the last.
    num_labeled: ``int32[..., R + 1]``.
    indices: ``int32[..., R, B]`` the points acquired each round.
    valid: ``bool[..., R, B]``.
    state: the final `LoopState`.

  Example:
    >>> history = alfx.History(accuracy=np.array([0.5, 0.75]),
    ...   num_labeled=np.array([2, 4]), indices=np.array([[3, 1]]),
    ...   valid=np.array([[True, True]]), state=None)
    >>> float(history.accuracy[-1]), history.indices.shape  # R = 1, B = 2
    (0.75, (1, 2))
  """

  accuracy: Any
  num_labeled: Any
  indices: Any
  valid: Any
  state: LoopState


def run_loop(
  loop: Loop,
  params: Any,
  state: LoopState,
  data: Data,
  num_rounds: int,
  *,
  callback: Callable[[int, RoundMetrics], Any] | None = None,
) -> History:
  """Runs ``num_rounds`` rounds and a final evaluation, a Python loop over
  compiled rounds (nothing recompiles after the first; the final evaluation
  is one more round whose acquisition is discarded).

  Works unchanged with a `vmap_loop` and seed-batched ``params`` and
  ``state`` (leading axes in the results).

  Args:
    loop: from `make_loop` (or `vmap_loop`).
    params: initial params.
    state: initial `LoopState` (see `initial_state`).
    data: the `Data`.
    num_rounds: number of acquisitions.
    callback: optional ``callback(round_index, metrics)`` after each round
      (e.g. a progress bar); blocks on the round's results.

  Returns:
    A `History` with NumPy arrays.

  Example:
    >>> def round_(params, state, data):  # a stand-in: label the first free
    ...   sel = alfx.top_b(jnp.zeros(4), 1, mask=~state.labeled)
    ...   labeled = state.labeled.at[sel.indices].set(True)
    ...   return state._replace(labeled=labeled), alfx.RoundMetrics(
    ...     jnp.float32(1), state.labeled.sum(), jnp.float32(0), sel)
    >>> loop = alfx.Loop(round_, None, None, None)
    >>> state = alfx.LoopState(jnp.array([True, False, False, False]),
    ...                        jax.random.key(0))
    >>> history = alfx.run_loop(loop, None, state, None, 2)
    >>> history.num_labeled.tolist(), history.indices.tolist()
    ([1, 2, 3], [[1], [2]])
  """
  import numpy as np

  num_rounds = int(num_rounds)
  rounds = []
  for r in range(num_rounds):
    state, metrics = loop.round(params, state, data)
    rounds.append(metrics)
    if callback is not None:
      callback(r, metrics)
  # The final evaluation runs the compiled round once more and keeps only its
  # accuracy (trained on the final labelled set): an acquisition is cheaper
  # than compiling `loop.evaluate`.
  _, last = loop.round(params, state, data)
  final_accuracy = last.accuracy
  final_labeled = last.num_labeled
  stack = lambda xs, axis: np.stack([np.asarray(x) for x in xs], axis=axis)
  batch_axis = np.ndim(final_accuracy)  # 1 under vmap over seeds, else 0
  accuracy = stack([m.accuracy for m in rounds] + [final_accuracy], batch_axis)
  num_labeled = stack(
    [m.num_labeled for m in rounds] + [final_labeled], batch_axis
  )
  if rounds:
    indices = stack([m.selection.indices for m in rounds], batch_axis)
    valid = stack([m.selection.valid for m in rounds], batch_axis)
  else:
    indices = valid = None
  return History(
    accuracy=accuracy,
    num_labeled=num_labeled,
    indices=indices,
    valid=valid,
    state=state,
  )


def initial_state(
  labels: ArrayLike,
  num_initial: int,
  *,
  key: jax.Array,
  per_class: bool = False,
) -> LoopState:
  """A random initial labelled set and the key of the first round.

  Args:
    labels: ``int[N]`` pool labels, class indices ``>= 0`` (their values are
      used only with ``per_class``).
    num_initial: static number of initially labelled points, ``<= N``.
    key: PRNG key (split: one part draws the set, the other seeds the loop).
    per_class: draw ``num_initial // C`` points of each class (``C = max
      label + 1`` must divide ``num_initial``; every class needs that many
      points), as the BatchBALD experiments do; otherwise uniformly.

  Returns:
    `LoopState` with exactly ``num_initial`` labelled points.

  Raises:
    ValueError: ``key`` is None; ``labels`` is not an integer array of
      shape ``[N]`` or (on concrete input) holds a negative value;
      ``num_initial`` is not in ``[1, N]``; or ``per_class`` cannot be
      honoured.

  Example:
    >>> labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    >>> state = alfx.initial_state(labels, 3, key=jax.random.key(0),
    ...                            per_class=True)
    >>> sorted(labels[state.labeled].tolist())  # one point of each class
    [0, 1, 2]
  """
  key = _validation.check_key(key)
  # An array either way (NumPy or JAX): pyright cannot narrow by hasattr.
  labels = cast(
    jax.Array, labels if hasattr(labels, "dtype") else jnp.asarray(labels)
  )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"labels must be integers (class indices), got dtype"
      f" {labels.dtype}: pass labels.astype(int)."
    )
  if labels.ndim != 1:
    raise ValueError(
      f"labels must have shape [N] (one class index per pool"
      f" point), got shape {list(labels.shape)}."
    )
  labels = labels if isinstance(labels, jax.Array) else jnp.asarray(labels)
  n = labels.shape[0]
  num_initial = _validation.check_positive_int(num_initial, "num_initial")
  if num_initial > n:
    raise ValueError(
      f"num_initial={num_initial} is larger than the pool (N={n})."
    )
  if _validation.is_concrete(labels) and n:
    lowest = int(jnp.min(labels))
    if lowest < 0:
      # Negative labels would also break per_class's class ranks (and then
      # label more than num_initial points).
      raise ValueError(
        f"labels must be class indices >= 0, got a minimum"
        f" of {lowest}: map the classes to 0..C-1 first."
      )
  draw_key, loop_key = jax.random.split(key)
  if per_class:
    if not _validation.is_concrete(labels):
      raise ValueError(
        "initial_state(per_class=True) needs concrete labels"
        " (it reads the number of classes): call it outside"
        " jit, or use per_class=False."
      )
    c = int(jnp.max(labels)) + 1
    if num_initial % c:
      raise ValueError(
        f"num_initial={num_initial} with per_class=True must be"
        f" a multiple of the number of classes C={c}."
      )
    counts = jnp.bincount(labels, length=c)
    if int(jnp.min(counts)) < num_initial // c:
      raise ValueError(
        f"per_class=True needs {num_initial // c} points of"
        f" every class; the rarest class has"
        f" {int(jnp.min(counts))}."
      )
  else:
    c = 1
  labeled = _initial_mask(draw_key, labels, num_initial, c, per_class)
  return LoopState(labeled, loop_key)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _initial_mask(key, labels, num_initial, c, per_class):
  n = labels.shape[0]
  noise = jax.random.uniform(key, (n,))
  if not per_class:
    _, idx = jax.lax.top_k(noise, num_initial)
    return jnp.zeros((n,), bool).at[idx].set(True)
  # Rank of each point among its class by noise: sort by (label, noise).
  order = jnp.lexsort((noise, labels))
  sorted_labels = labels[order]
  starts = jnp.searchsorted(sorted_labels, jnp.arange(c))
  rank_sorted = jnp.arange(n) - starts[sorted_labels]
  rank = jnp.zeros((n,), jnp.int32).at[order].set(rank_sorted)
  return rank < num_initial // c

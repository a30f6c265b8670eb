"""Flax integration: predictive samples, last-layer features and training.

Everything here works through one uniform *forward* function,

  ``forward(params, inputs[b, ...], key) -> (logits[b, C], embeddings[b, D])``

where ``key=None`` means the deterministic (evaluation) pass and a PRNG key
means the stochastic (training) pass, with dropout drawn from that key.
``embeddings`` are the inputs of the model's last linear layer (the
"last-layer features" of BAIT, BADGE and the diversity baselines). Adapters
build it from a Flax Linen module (`linen_forward`) or a Flax NNX model
(`nnx_forward`); any function with this signature works.

Posterior samples come from a deep ensemble (params of ``K`` members stacked on
a leading axis, `init_ensemble`, predictions by ``jax.vmap`` over members) or
MC dropout (one set of params, ``K`` stochastic passes by ``jax.vmap`` over
``K`` keys). Predictions run over the pool in chunks of at most
``chunk_size`` rows (default `alfx._pool.DEFAULT_CHUNK_SIZE`, 1024) inside one
compiled program, so peak memory is set by ``chunk_size``, not by ``N``.

Training (`make_fit`) is one ``lax.scan`` of optax steps on minibatches drawn
from the fixed-size ``labeled[N]`` mask, so no shape depends on how many
points are labelled; ``jax.vmap`` it over ensemble members or seeds.

Randomness comes only from a keyword-only ``key`` argument.
"""

from collections.abc import Callable
import functools
import importlib
from typing import Any, NamedTuple, TYPE_CHECKING

import jax
import jax.numpy as jnp
if TYPE_CHECKING:
  import optax

from alfx._core import pool as _pool
from alfx._core import sharding as _sharding
from alfx._core import validation as _validation

#: ``forward(params, inputs, key_or_None) -> (logits[b, C], embeddings[b, D])``
Forward = Callable[[Any, jax.Array, jax.Array | None],
                   tuple[jax.Array, jax.Array]]


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
  """

  log_probs: jax.Array
  embeddings: jax.Array
  probs: jax.Array


class FitResult(NamedTuple):
  """Trained params and the minibatch loss of every step (``float[steps]``)."""

  params: Any
  losses: jax.Array


def require(module: str, what: str):
  """Imports an optional dependency, or says which extra provides it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(
        f"{what} needs {module.split('.')[0]}, which alfx installs with its"
        " flax extra: pip install 'alfx[flax]'.") from e


# ----------------------------------------------------------------------------
# Adapters: Flax Linen and Flax NNX models as a `Forward`.


def _flatten_embeddings(h: jax.Array) -> jax.Array:
  return h.reshape(h.shape[0], -1)


def linen_forward(module, *, head: str | None = None,
                  train_kwargs: dict | None = None,
                  eval_kwargs: dict | None = None,
                  rng_collection: str = "dropout") -> Forward:
  """A `Forward` for a Flax Linen module.

  ``params`` is the variables dict from ``module.init`` (``{"params": ...}``);
  stack several on a leading axis for an ensemble (`init_ensemble`). With a key
  the module is applied with ``train_kwargs`` and ``rngs={rng_collection:
  key}``; without one, with ``eval_kwargs``. The embeddings are the input of
  the head layer, intercepted with ``flax.linen.intercept_methods``: no change
  to the module is needed.

  Models with batch statistics (``BatchNorm``) are not supported: the state
  they mutate is not carried. Use ``LayerNorm`` or ``GroupNorm``.

  Args:
    module: a ``flax.linen.Module`` mapping ``inputs[b, ...]`` to
      ``logits[b, C]``.
    head: name (or ``/``-joined path) of the last linear layer. Default: the
      last ``nn.Dense`` called in the forward pass; a model without any
      ``nn.Dense`` then raises a ``ValueError`` (pass ``head=``).
    train_kwargs: keyword arguments of the stochastic pass, e.g.
      ``{"train": True}`` to enable dropout.
    eval_kwargs: keyword arguments of the deterministic pass, e.g.
      ``{"train": False}``.
    rng_collection: the RNG collection dropout draws from.

  Returns:
    ``forward(variables, inputs, key) -> (logits, embeddings)``.

  Example:
    >>> forward = alfx.linen_forward(cnn, train_kwargs={"train": True},
    ...                              eval_kwargs={"train": False})
  """
  nn = require("flax.linen", "alfx.linen_forward")
  train_kwargs = dict(train_kwargs or {})
  eval_kwargs = dict(eval_kwargs or {})

  def forward(variables, inputs, key):
    extra = set(variables) - {"params"}
    if extra:
      raise ValueError(
          f"linen_forward supports variables with a 'params' collection only,"
          f" got also {sorted(extra)}; batch statistics (BatchNorm) are not"
          " carried: use LayerNorm or GroupNorm.")
    seen = []

    def interceptor(next_fun, args, kwargs, context):
      module_ = context.module
      if context.method_name == "__call__" and args:
        path = "/".join(str(p) for p in module_.path)
        # head=None must not match by name: the top-level module's name is
        # None too, and matching it would return the inputs as embeddings.
        if (isinstance(module_, nn.Dense) if head is None else
            head in (module_.name, path)):
          seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      if key is None:
        logits = module.apply(variables, inputs, **eval_kwargs)
      else:
        logits = module.apply(variables, inputs, rngs={rng_collection: key},
                              **train_kwargs)
    if not seen:
      raise ValueError(
          "linen_forward found no head layer: "
          + ("no nn.Dense was called in the forward pass, so there are no"
             " last-layer embeddings; pass head= the name of the module whose"
             " input is the embedding (the last linear layer), or add an"
             " nn.Dense layer as the model's output."
             if head is None else
             f"no submodule named {head!r} was called; pass head= the name"
             " (or '/'-joined path) of the last linear layer."))
    return logits, _flatten_embeddings(seen[-1])

  return forward


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def nnx_forward(model, *, head: str | None = None) -> tuple[Forward, Any]:
  """A `Forward` and its params for a Flax NNX model.

  The model is split once (``nnx.split(model, nnx.Param, ...)``): ``params``
  is the ``nnx.Param`` state (what training updates and what an ensemble
  stacks); the rest (RNG stream state) is kept by the forward function. Each
  call merges a fresh copy (``nnx.merge``), so the original model is never
  mutated. With a key the copy is put in training mode (``model.train()``)
  and every RNG stream is reseeded from that key, so ``jax.vmap`` over keys
  gives independent dropout masks; without one it is put in evaluation mode
  (``model.eval()``).

  Models with batch statistics (``BatchNorm``) are not supported (their
  updates are not carried).

  Args:
    model: an ``nnx.Module`` mapping ``inputs[b, ...]`` to ``logits[b, C]``.
    head: attribute path of the last linear layer (``"head"``,
      ``"classifier.out"``, ``"layers.3"``). Default: the last ``nnx.Linear``
      called in the forward pass.

  Returns:
    ``(forward, params)``. For an ensemble, stack the ``nnx.Param`` states of
    ``K`` independently initialised models (see `init_ensemble`).
  """
  nnx = require("flax.nnx", "alfx.nnx_forward")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if any(isinstance(v, nnx.BatchStat)
         for _, v in nnx.iter_graph(model)):
    raise ValueError("nnx_forward: models with nnx.BatchStat (BatchNorm) are"
                     " not supported; use LayerNorm or GroupNorm.")
  head_path = None if head is None else tuple(
      int(p) if p.isdigit() else p for p in head.split("."))

  def get(node, name):
    return node[name] if isinstance(name, int) else getattr(node, name)

  def put(node, name, value):
    if isinstance(name, int):
      node[name] = value
    else:
      setattr(node, name, value)

  def forward(params, inputs, key):
    state = rest
    if key is not None:
      leaves, treedef = jax.tree.flatten(state)
      leaves = [jax.random.fold_in(key, i) if _is_key(leaf) else leaf
                for i, leaf in enumerate(leaves)]
      state = jax.tree.unflatten(treedef, leaves)
    copy = nnx.merge(graphdef, params, state)
    if key is None:
      copy.eval()
    else:
      copy.train()
    seen = []

    class Tap(nnx.Module):
      """Records the input of the wrapped layer (a trace-time side effect)."""

      def __init__(self, inner):
        self.inner = inner

      def __call__(self, x, *args, **kwargs):
        seen.append(x)
        return self.inner(x, *args, **kwargs)

    if head_path is None:
      paths = [path for path, node in nnx.iter_graph(copy)
               if isinstance(node, nnx.Linear)]
    else:
      paths = [head_path]
    for path in paths:
      parent = copy
      try:
        for name in path[:-1]:
          parent = get(parent, name)
        put(parent, path[-1], Tap(get(parent, path[-1])))
      except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(f"nnx_forward: cannot reach the layer at {head!r} in"
                         f" the model ({e}); pass head= the attribute path of"
                         " the last linear layer, e.g. 'head'.") from e
    logits = copy(inputs)
    if not seen:
      raise ValueError("nnx_forward found no head layer: no nnx.Linear was"
                       " called; pass head= the attribute path of the last"
                       " linear layer.")
    return logits, _flatten_embeddings(seen[-1])

  return forward, params


def init_ensemble(init_fn: Callable[[jax.Array], Any], num_members: int, *,
                  key):
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
    >>> params = alfx.init_ensemble(lambda k: mlp.init(k, x[:1]), 8,
    ...                             key=jax.random.key(0))
  """
  key = _validation.check_key(key)
  num_members = _validation.check_positive_int(num_members, "num_members")
  return jax.vmap(init_fn)(jax.random.split(key, num_members))


# ----------------------------------------------------------------------------
# Prediction over a pool, in chunks.


def _check_inputs(inputs, name="inputs") -> jax.Array:
  inputs = _validation.as_float_array(inputs, name, "[N, ...]")
  if inputs.ndim < 1 or inputs.shape[0] == 0:
    raise ValueError(f"{name} must have shape [N, ...] with N >= 1, got"
                     f" shape {list(inputs.shape)}.")
  _validation.check_finite(inputs, name, "[N, ...]")
  return inputs


def _check_forward_output(logits, embeddings, b):
  if logits.ndim != 2 or logits.shape[0] != b:
    raise ValueError(f"forward must return logits of shape [b={b}, C], got"
                     f" {list(logits.shape)}.")
  if embeddings.ndim != 2 or embeddings.shape[0] != b:
    raise ValueError(f"forward must return embeddings of shape [b={b}, D],"
                     f" got {list(embeddings.shape)}.")


def _member(params, index: int):
  return jax.tree.map(lambda p: p[index], params)


def _to_log_probs(logits):
  """``[K, b, C]`` logits to ``[b, K, C]`` log-probabilities (log_softmax)."""
  return jax.nn.log_softmax(jnp.swapaxes(logits, 0, 1), axis=-1)


def _ensemble_chunk(forward, params, x):
  """``([b, K, C] log-probs, [b, D] embeddings, [b, C] probs)`` of a chunk."""
  logits, embeddings = jax.vmap(lambda p: forward(p, x, None))(params)
  _check_forward_output(logits[0], embeddings[0], x.shape[0])
  # Member 0's embeddings are a by-product of the vmapped pass: no extra work.
  return (_to_log_probs(logits), embeddings[0],
          jax.nn.softmax(logits[0], axis=-1))


def _consistent_pass(forward, params, x, key):
  """Logits ``[b, C]`` of one stochastic pass with the same dropout draw for
  every point: each point goes through as its own batch of one, all with
  ``key`` (``vmap`` folds the points back into one matmul)."""
  return jax.vmap(lambda xi: forward(params, xi[None], key)[0][0])(x)


def _dropout_chunk(forward, params, keys, x):
  logits = jax.vmap(lambda k: _consistent_pass(forward, params, x, k))(keys)
  det_logits, embeddings = forward(params, x, None)
  _check_forward_output(det_logits, embeddings, x.shape[0])
  return (_to_log_probs(logits), embeddings,
          jax.nn.softmax(det_logits, axis=-1))


def ensemble_predictions(forward: Forward, params, inputs, *,
                         chunk_size: int | None = None) -> Predictions:
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
      `alfx._pool.DEFAULT_CHUNK_SIZE`). Peak memory of the intermediates is
      ``O(chunk_size * K * width)``, whatever ``N``.

  Returns:
    `Predictions` ``(log_probs[N, K, C], embeddings[N, D], probs[N, C])``.
    When ``inputs`` is sharded over the pool axis (`alfx.shard_pool`), each
    device predicts its own rows and the outputs are sharded the same way,
    ready for any acquisition (params are replicated).
  """
  inputs = _check_inputs(inputs)
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  return _ensemble_local(params, inputs, forward=forward,
                         chunk_size=chunk_size)


@_sharding.pool_core(pool=("inputs",), static=("forward", "chunk_size"),
                     out_specs=_sharding.pool_spec, selection=False)
def _ensemble_local(params, inputs, forward, chunk_size, axis_name=None):
  """The rows of ``inputs`` at hand: points are independent, no collective."""
  del axis_name
  return ensemble_predictions_unchecked(forward, params, inputs, chunk_size)


@functools.partial(jax.jit, static_argnums=(0, 3))
def ensemble_predictions_unchecked(forward, params, inputs, chunk_size):
  return Predictions(*_pool.chunked_map(
      lambda x: _ensemble_chunk(forward, params, x), inputs,
      chunk_size=chunk_size))


def mc_dropout_predictions(forward: Forward, params, inputs, *, key,
                           num_samples: int, chunk_size: int | None = None
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
      `alfx._pool.DEFAULT_CHUNK_SIZE`).

  Returns:
    `Predictions` ``(log_probs[N, K, C], embeddings[N, D], probs[N, C])``.
    When ``inputs`` is sharded over the pool axis (`alfx.shard_pool`), each
    device predicts its own rows and the outputs are sharded the same way;
    the dropout masks are shared by all points, so the predictions equal the
    single-device ones.
  """
  inputs = _check_inputs(inputs)
  key = _validation.check_key(key)
  num_samples = _validation.check_positive_int(num_samples, "num_samples")
  chunk_size = _validation.check_chunk_size(chunk_size,
                                            _pool.DEFAULT_CHUNK_SIZE)
  return _mc_dropout_local(params, inputs, key, forward=forward,
                           num_samples=num_samples, chunk_size=chunk_size)


@_sharding.pool_core(pool=("inputs",),
                     static=("forward", "num_samples", "chunk_size"),
                     out_specs=_sharding.pool_spec, selection=False)
def _mc_dropout_local(params, inputs, key, forward, num_samples, chunk_size,
                      axis_name=None):
  # Every point uses the same K keys (consistent dropout), so the local rows
  # get exactly the single-device predictions: nothing depends on the layout.
  del axis_name
  return mc_dropout_predictions_unchecked(forward, params, inputs, key, num_samples,
                                 chunk_size)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def mc_dropout_predictions_unchecked(forward, params, inputs, key, num_samples,
                            chunk_size):
  keys = jax.random.split(key, num_samples)
  return Predictions(*_pool.chunked_map(
      lambda x: _dropout_chunk(forward, params, keys, x), inputs,
      chunk_size=chunk_size))


# ----------------------------------------------------------------------------
# Training on the labelled points of a fixed-size pool.


def sample_labeled(labeled: jax.Array, batch_size: int, *, key) -> jax.Array:
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
  """
  key = _validation.check_key(key)
  batch_size = _validation.check_positive_int(batch_size, "batch_size")
  labeled = labeled if hasattr(labeled, "dtype") else jnp.asarray(labeled)
  if labeled.ndim != 1 or labeled.shape[0] == 0:
    raise ValueError(f"labeled must be a boolean array of shape [N] with"
                     f" N >= 1, got shape {list(labeled.shape)}.")
  labeled = _validation.check_mask(labeled, labeled.shape[0], name="labeled")
  if _validation.is_concrete(labeled) and not bool(jnp.any(labeled)):
    raise ValueError("labeled (shape [N]) marks no point: sample_labeled"
                     " draws among the labelled points, so label at least"
                     " one (e.g. with alfx.initial_state).")
  return _sample_from_counts(key, _running_count(labeled), batch_size)


def _running_count(labeled):
  return jnp.cumsum(labeled.astype(jnp.int32))


def _sample_from_counts(key, counts, batch_size):
  total = counts[-1]
  u = jax.random.uniform(key, (batch_size,))
  rank = jnp.minimum(jnp.floor(u * total).astype(jnp.int32),
                     jnp.maximum(total - 1, 0))
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


def make_train_step(forward: Forward,
                    optimizer: "optax.GradientTransformation"):
  """A jitted optax step on one minibatch.

  Returns:
    ``step(params, opt_state, x[b, ...], y int[b], weights[b], *, key)
    -> (params, opt_state, loss)``; ``key`` drives dropout (None: the
    deterministic pass).
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


def make_fit(forward: Forward, optimizer: "optax.GradientTransformation", *,
             num_steps: int, batch_size: int):
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
      params, opt_state, loss = step(params, opt_state, inputs[idx],
                                     labels[idx], w, key=k_drop)
      return (params, opt_state), loss

    (params, _), losses = jax.lax.scan(body, (params, opt_state),
                                       jax.random.split(key, num_steps))
    return FitResult(params, losses)

  jitted = jax.jit(core)

  def fit(params, inputs, labels, labeled, *, key):
    inputs, labels, labeled = check_training_data(inputs, labels, labeled)
    key = _validation.check_key(key)
    if _validation.is_concrete(labels, labeled):
      c = jax.eval_shape(lambda p, x: forward(p, x, None)[0], params,
                         inputs[:1]).shape[-1]
      check_label_values(labels, c)
      if not bool(jnp.any(labeled)):
        raise ValueError("labeled (shape [N]) selects no points: fit needs at"
                         " least one labelled point.")
    return jitted(params, inputs, labels, labeled, key=key)

  fit.core = core  # the unchecked, jit/vmap friendly function
  return fit


def check_training_data(inputs, labels, labeled):
  """Shapes of ``inputs[N, ...]``, ``labels int[N]`` and ``labeled bool[N]``."""
  inputs = _check_inputs(inputs)
  n = inputs.shape[0]
  labels = labels if isinstance(labels, jax.Array) else jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be an integer array of shape [N={n}], got"
                     f" dtype {labels.dtype}: pass labels.astype(int).")
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape [N={n}] (one per input), got"
                     f" {list(labels.shape)}.")
  labeled = _validation.check_mask(labeled, n, name="labeled")
  return inputs, labels, labeled


def check_label_values(labels, num_classes: int, name: str = "labels"):
  if not _validation.is_concrete(labels) or labels.size == 0:
    return
  lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
  if lo < 0 or hi >= num_classes:
    raise ValueError(f"{name} must be class indices in [0, C={num_classes}),"
                     f" got values in [{lo}, {hi}].")

"""Adapters: Flax Linen and Flax NNX models as one pure `Forward` function.

Everything in `alfx.nn` works through

  ``forward(params, inputs[b, ...], key) -> (logits[b, C], embeddings[b, D])``

where ``key=None`` means the deterministic (evaluation) pass and a PRNG key
means the stochastic (training) pass, with dropout drawn from that key.
``embeddings`` are the inputs of the model's last linear layer (the
"last-layer features" of BAIT, BADGE and the diversity baselines). Adapters
build it from a Flax Linen module (`linen_forward`) or a Flax NNX model
(`nnx_forward`); any function with this signature works.

May import: jax, `alfx.nn._require` (Flax itself only through `require`,
when an adapter is built).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from alfx.nn._require import require

#: ``forward(params, inputs, key_or_None) -> (logits[b, C], embeddings[b, D])``
Forward = Callable[
  [Any, jax.Array, jax.Array | None], tuple[jax.Array, jax.Array]
]


def _flatten_embeddings(h: jax.Array) -> jax.Array:
  return h.reshape(h.shape[0], -1)


def linen_forward(
  module: Any,
  *,
  head: str | None = None,
  train_kwargs: dict | None = None,
  eval_kwargs: dict | None = None,
  rng_collection: str = "dropout",
) -> Forward:
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
    >>> import flax.linen as nn
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train=False):
    ...     x = nn.Dropout(0.5, deterministic=not train)(nn.Dense(4)(x))
    ...     return nn.Dense(3)(x)  # the head: its input is the embedding
    >>> forward = alfx.linen_forward(MLP(), train_kwargs={"train": True})
    >>> x = jnp.ones((5, 2))
    >>> variables = MLP().init(jax.random.key(0), x[:1])
    >>> logits, embeddings = forward(variables, x, None)
    >>> logits.shape, embeddings.shape
    ((5, 3), (5, 4))
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
        " carried: use LayerNorm or GroupNorm."
      )
    seen = []

    def interceptor(next_fun, args, kwargs, context):
      module_ = context.module
      if context.method_name == "__call__" and args:
        path = "/".join(str(p) for p in module_.path)
        # head=None must not match by name: the top-level module's name is
        # None too, and matching it would return the inputs as embeddings.
        if (
          isinstance(module_, nn.Dense)
          if head is None
          else head in (module_.name, path)
        ):
          seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      if key is None:
        logits = module.apply(variables, inputs, **eval_kwargs)
      else:
        logits = module.apply(
          variables, inputs, rngs={rng_collection: key}, **train_kwargs
        )
    if not seen:
      raise ValueError(
        "linen_forward found no head layer: "
        + (
          "no nn.Dense was called in the forward pass, so there are no"
          " last-layer embeddings; pass head= the name of the module whose"
          " input is the embedding (the last linear layer), or add an"
          " nn.Dense layer as the model's output."
          if head is None
          else f"no submodule named {head!r} was called; pass head= the name"
          " (or '/'-joined path) of the last linear layer."
        )
      )
    return logits, _flatten_embeddings(seen[-1])

  return forward


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def nnx_forward(model: Any, *, head: str | None = None) -> tuple[Forward, Any]:
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

  Example:
    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.body = nnx.Linear(2, 4, rngs=rngs)
    ...     self.head = nnx.Linear(4, 3, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.head(nnx.relu(self.body(x)))
    >>> forward, params = alfx.nnx_forward(MLP(nnx.Rngs(0)), head="head")
    >>> logits, embeddings = forward(params, jnp.ones((5, 2)), None)
    >>> logits.shape, embeddings.shape
    ((5, 3), (5, 4))
  """
  nnx = require("flax.nnx", "alfx.nnx_forward")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if any(isinstance(v, nnx.BatchStat) for _, v in nnx.iter_graph(model)):
    raise ValueError(
      "nnx_forward: models with nnx.BatchStat (BatchNorm) are"
      " not supported; use LayerNorm or GroupNorm."
    )
  head_path = (
    None
    if head is None
    else tuple(int(p) if p.isdigit() else p for p in head.split("."))
  )

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
      leaves = [
        jax.random.fold_in(key, i) if _is_key(leaf) else leaf
        for i, leaf in enumerate(leaves)
      ]
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
      paths = [
        path
        for path, node in nnx.iter_graph(copy)
        if isinstance(node, nnx.Linear)
      ]
    else:
      paths = [head_path]
    for path in paths:
      parent = copy
      try:
        for name in path[:-1]:
          parent = get(parent, name)
        put(parent, path[-1], Tap(get(parent, path[-1])))
      except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(
          f"nnx_forward: cannot reach the layer at {head!r} in"
          f" the model ({e}); pass head= the attribute path of"
          " the last linear layer, e.g. 'head'."
        ) from e
    logits = copy(inputs)
    if not seen:
      raise ValueError(
        "nnx_forward found no head layer: no nnx.Linear was"
        " called; pass head= the attribute path of the last"
        " linear layer."
      )
    return logits, _flatten_embeddings(seen[-1])

  return forward, params

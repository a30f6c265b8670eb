"""Acquisition strategies by name, behind one uniform call.

Every registered strategy is called as

  ``strategy(context, batch_size, *, key, mask) -> Selection``

with ``context`` a `StrategyContext` holding everything the model produced for
the pool (``log_probs[N, K, C]``, last-layer ``embeddings[N, D]`` and
``probs[N, C]``, and the ``labeled[N]`` mask), a static ``batch_size``, the
PRNG ``key`` (ignored by deterministic strategies) and the ``mask[N]`` of
selectable points. Strategies ignore what they do not need, so
an experiment switches strategy by changing one string. All of them run under
``jit`` and ``vmap``: the active-learning round calls them inside its own
compiled program.
"""

from collections.abc import Callable
import inspect
from typing import NamedTuple
from typing import Protocol

import jax

from alfx._core import sampling as _sampling
from alfx._core import selection as _selection
from alfx.bait_family import _bait
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family import _epig
from alfx.bald_family import _kbald
import alfx.baselines as _baselines
from alfx.baselines import _uncertainty
from alfx.information import _kernels as _information


class StrategyContext(NamedTuple):
  """What the model says about the pool, for any strategy.

  Attributes:
    log_probs: ``float[N, K, C]`` predictive samples.
    embeddings: ``float[N, D]`` last-layer inputs (one network, see
      `alfx.ensemble_predictions`).
    probs: ``float[N, C]`` that network's class probabilities.
    labeled: ``bool[N]`` True for points already labelled.
    target_log_probs: optional ``float[M, K, C]``: predictions of inputs
      drawn from the target distribution (e.g. the test inputs), under the
      same ``K`` posterior samples as ``log_probs``. The EPIG strategies
      draw their targets from these rows; None (the default) draws them
      from the unlabelled pool (`alfx.pool_targets`).
    in_pool: optional ``bool[N]``: False for the padding rows
      `alfx.shard_pool` adds to a sharded pool (``ShardedPool.in_pool``),
      so that BAIT's pool Fisher information averages real points only;
      None (the default): every row is a pool point. Padding is never
      picked as long as ``mask`` excludes it.

  Example:
    >>> log_probs = jnp.log(jnp.array([[[0.5, 0.5]], [[0.9, 0.1]]]))
    >>> context = alfx.StrategyContext(log_probs=log_probs,
    ...   embeddings=jnp.eye(2), probs=jnp.exp(log_probs[:, 0]),
    ...   labeled=jnp.zeros(2, bool))
    >>> strategy = alfx.get_strategy("entropy")
    >>> sel = strategy(context, 1, key=jax.random.key(0), mask=~context.labeled)
    >>> sel.indices.tolist()  # the 50/50 point
    [0]
  """

  log_probs: jax.Array
  embeddings: jax.Array
  probs: jax.Array
  labeled: jax.Array
  target_log_probs: jax.Array | None = None
  in_pool: jax.Array | None = None


class Strategy(Protocol):
  """``strategy(context, batch_size, *, key, mask) -> Selection``.

  ``batch_size`` is static; ``key`` is a PRNG key (deterministic strategies
  ignore it); ``mask`` is the ``bool[N]`` selectable set. Must run under
  ``jit`` and ``vmap``.

  Example:
    >>> def lowest_index(context, batch_size, *, key, mask):
    ...   del key
    ...   return alfx.top_b(-jnp.arange(mask.shape[0]) * 1.0, batch_size,
    ...                     mask=mask)
    >>> log_probs = jnp.log(jnp.array([[[0.5, 0.5]], [[0.9, 0.1]]]))
    >>> context = alfx.StrategyContext(log_probs=log_probs,
    ...   embeddings=jnp.eye(2), probs=jnp.exp(log_probs[:, 0]),
    ...   labeled=jnp.zeros(2, bool))
    >>> lowest_index(context, 1, key=None, mask=jnp.array([False, True]))
    Selection(indices=Array([1], dtype=int32), ...)
  """

  def __call__(
    self,
    context: StrategyContext,
    batch_size: int,
    *,
    key: jax.Array,
    mask: jax.Array,
  ) -> _selection.Selection: ...


_FACTORIES: dict[str, Callable[..., Strategy]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_strategy(
  name: str,
  factory: Callable[..., Strategy],
  *,
  description: str = "",
  overwrite: bool = False,
) -> None:
  """Registers ``factory(**options) -> Strategy`` under ``name``.

  Args:
    name: the string experiments use.
    factory: called by `get_strategy` with the user's options; returns a
      `Strategy`.
    description: one line for listings (``alfx-experiment --list``).
    overwrite: replace an existing entry instead of raising.

  Example:
    A factory and its strategy (``alfx.register_strategy("my-random",
    factory)`` adds it for the whole process); a taken name is refused:

    >>> def factory():
    ...   def strategy(context, batch_size, *, key, mask):
    ...     return alfx.random_batch(mask, batch_size, key=key, mask=mask)
    ...   return strategy
    >>> alfx.register_strategy("random", factory)
    Traceback (most recent call last):
    ...
    ValueError: a strategy named 'random' is already registered; pass
    overwrite=True to replace it.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty string, got {name!r}.")
  if name in _FACTORIES and not overwrite:
    raise ValueError(
      f"a strategy named {name!r} is already registered; pass"
      " overwrite=True to replace it."
    )
  _FACTORIES[name] = factory
  _DESCRIPTIONS[name] = description


def strategy_names() -> tuple[str, ...]:
  """The registered names, sorted.

  Example:
    >>> names = alfx.strategy_names()
    >>> "batchbald" in names, "bait-full" in names
    (True, True)
  """
  return tuple(sorted(_FACTORIES))


def strategy_descriptions() -> dict[str, str]:
  """The one-line description of every registered name (`strategy_names`).

  Example:
    >>> alfx.loop.strategy_descriptions()["bait-full"]
    'BAIT (Ash et al. 2021), full last-layer Fisher'
  """
  return {name: _DESCRIPTIONS[name] for name in strategy_names()}


def get_strategy(name: str, **options) -> Strategy:
  """The strategy registered as ``name``, configured by ``options``.

  Args:
    name: one of `strategy_names`.
    **options: forwarded to the strategy's factory (e.g.
      ``num_configurations`` for ``"batchbald"``); an option the strategy
      does not take raises.

  Returns:
    ``strategy(context, batch_size, *, key, mask) -> Selection``.

  Raises:
    ValueError: unknown ``name`` (the message lists the valid names) or an
      option the strategy does not accept (the message lists the valid
      options).

  Example:
    >>> strategy = alfx.get_strategy("batchbald", num_configurations=100)
    >>> callable(strategy)
    True
  """
  if name not in _FACTORIES:
    raise ValueError(
      f"unknown strategy {name!r}; valid names: {', '.join(strategy_names())}."
    )
  factory = _FACTORIES[name]
  valid = _option_names(factory)
  if valid is not None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ValueError(
        f"strategy {name!r} does not accept option(s)"
        f" {', '.join(unknown)}; valid options: "
        + (", ".join(valid) if valid else "none (it takes no options)")
        + "."
      )
  return factory(**options)


def _option_names(factory) -> tuple[str, ...] | None:
  """The keyword options ``factory`` takes; None when it takes ``**kwargs``
  or its signature cannot be read (then the factory checks for itself)."""
  try:
    parameters = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError):
    return None
  if any(p.kind == p.VAR_KEYWORD for p in parameters):
    return None
  return tuple(
    p.name
    for p in parameters
    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  )


# ----------------------------------------------------------------------------
# Built-in strategies. Each factory takes the strategy's options and returns
# the uniform call; the public functions do the work (their shape checks run
# under the caller's trace, their value checks are skipped there).


def _topk_bald():

  def strategy(context, batch_size, *, key, mask):
    del key
    return _selection.top_b(
      _information.bald(context.log_probs), batch_size, mask=mask
    )

  return strategy


def _random():

  def strategy(context, batch_size, *, key, mask):
    # Only the pool's length (and sharding) is read from log_probs.
    return _sampling.random_batch(
      context.log_probs, batch_size, key=key, mask=mask
    )

  return strategy


def _top_score(score):

  def factory():

    def strategy(context, batch_size, *, key, mask):
      del key
      return _selection.top_b(score(context.log_probs), batch_size, mask=mask)

    return strategy

  return factory


def _stochastic(score, mode):

  def factory(beta=1.0):

    def strategy(context, batch_size, *, key, mask):
      return _sampling.stochastic_batch(
        score(context.log_probs),
        batch_size,
        key=key,
        mode=mode,
        beta=beta,
        mask=mask,
      )

    return strategy

  return factory


def _badge():

  def strategy(context, batch_size, *, key, mask):
    return _baselines.badge(
      context.embeddings, context.probs, batch_size, key=key, mask=mask
    )

  return strategy


def _coreset():

  def strategy(context, batch_size, *, key, mask):
    del key
    return _baselines.coreset(
      context.embeddings, batch_size, labeled=context.labeled, mask=mask
    )

  return strategy


def _typiclust(max_clusters=500, k_nn=20, min_cluster_size=5):

  def strategy(context, batch_size, *, key, mask):
    return _baselines.typiclust(
      context.embeddings,
      batch_size,
      key=key,
      labeled=context.labeled,
      mask=mask,
      max_clusters=max_clusters,
      k_nn=k_nn,
      min_cluster_size=min_cluster_size,
    )

  return strategy


def _batchbald(
  num_configurations=_bald.DEFAULT_NUM_CONFIGURATIONS, chunk_size=None
):

  def strategy(context, batch_size, *, key, mask):
    return _bald.batchbald(
      context.log_probs,
      batch_size,
      key=key,
      mask=mask,
      num_configurations=num_configurations,
      chunk_size=chunk_size,
    )

  return strategy


def _kbald_order(order):

  def factory(chunk_size=None):

    def strategy(context, batch_size, *, key, mask):
      del key
      return _kbald.kbald(
        context.log_probs,
        batch_size,
        order=order,
        mask=mask,
        chunk_size=chunk_size,
      )

    return strategy

  return factory


def _kbald_dynamic(tolerance=0.05, chunk_size=None):

  def strategy(context, batch_size, *, key, mask):
    del key
    return _kbald.kbald_dynamic(
      context.log_probs,
      batch_size,
      tolerance=tolerance,
      mask=mask,
      chunk_size=chunk_size,
    )

  return strategy


def _conservative_bald(threshold=0.05, budget=None, chunk_size=None):

  def strategy(context, batch_size, *, key, mask):
    del key
    return _kbald.conservative_bald(
      context.log_probs,
      batch_size,
      threshold=threshold,
      budget=budget,
      mask=mask,
      chunk_size=chunk_size,
    )

  return strategy


def _bait_kind(kind):

  def factory(lam=1.0, oversample=2, top_c=2, method="auto"):

    def strategy(context, batch_size, *, key, mask):
      del key
      return _bait.bait(
        context.embeddings,
        context.probs,
        batch_size,
        labeled=context.labeled,
        mask=mask,
        in_pool=context.in_pool,
        fisher=kind,
        top_c=top_c,
        lam=lam,
        oversample=oversample,
        method=method,
      )

    return strategy

  return factory


register_strategy(
  "random", _random, description="uniform without replacement over the pool"
)
register_strategy(
  "bald",
  _topk_bald,
  description="top-B BALD scores (1-BALD, Houlsby et al. 2011)",
)
for _name, _score, _text in (
  (
    "entropy",
    _uncertainty.predictive_entropy,
    "predictive entropy of the mean prediction",
  ),
  (
    "margin",
    _uncertainty.margin,
    "smallest gap between the top two mean probabilities",
  ),
  (
    "least-confidence",
    _uncertainty.least_confidence,
    "lowest top mean probability",
  ),
  (
    "variation-ratios",
    _uncertainty.variation_ratios,
    "disagreement of the samples' votes",
  ),
  (
    "mean-std",
    _uncertainty.mean_std,
    "mean over classes of the samples' standard deviation",
  ),
):
  register_strategy(_name, _top_score(_score), description=f"top-B {_text}")
for _mode in ("power", "softmax", "softrank"):
  register_strategy(
    f"{_mode}bald",
    _stochastic(_information.bald, _mode),
    description=f"{_mode} sampling of BALD scores (Kirsch et al. 2021),"
    " option beta",
  )
register_strategy(
  "batchbald",
  _batchbald,
  description="greedy joint mutual information of the batch"
  " (Kirsch et al. 2019), option num_configurations",
)
register_strategy(
  "kbald-2",
  _kbald_order(2),
  description="BALD minus pairwise mutual information with"
  " the batch (k-BALD, order 2)",
)
register_strategy(
  "kbald-3",
  _kbald_order(3),
  description="k-BALD of order 3 (adds co-information of triples)",
)
register_strategy(
  "kbald-dynamic",
  _kbald_dynamic,
  description="2-BALD, batch ends where 3-BALD diverges by"
  " more than option tolerance (default 0.05)",
)
register_strategy(
  "conservative-bald",
  _conservative_bald,
  description="top BALD excluding points whose MI with a"
  " pick exceeds option threshold (default 0.05 nats)",
)
for _kind, _text in (
  ("full", "BAIT (Ash et al. 2021), full last-layer Fisher"),
  ("topc", "BAIT (Exp): Fisher of the top_c classes"),
  ("binary", "BAIT (Binary): Bernoulli Fisher of the top class"),
  ("diagonal", "BAIT with the diagonal of the Fisher"),
):
  register_strategy(f"bait-{_kind}", _bait_kind(_kind), description=_text)
register_strategy(
  "epig",
  _epig.epig_strategy,
  description="top-B EPIG (Bickford Smith et al. 2023) against"
  " option num_targets (default 100) unlabelled pool inputs",
)
register_strategy(
  "batch-epig",
  _epig.batch_epig_strategy,
  description="greedy joint EPIG of the batch (BatchEPIG),"
  " options num_targets, num_configurations",
)
register_strategy(
  "kepig-2",
  _epig.kepig_strategy(2),
  description="EPIG minus the co-information with each pick"
  " and the targets (k-EPIG, order 2), options num_targets,"
  " target_label_samples",
)
register_strategy(
  "powerepig",
  _epig.powerepig_strategy,
  description="power sampling of EPIG scores (Bickford Smith"
  " et al. 2023), options num_targets, beta",
)
register_strategy(
  "badge",
  _badge,
  description="k-means++ seeding on gradient embeddings (Ash et al. 2020)",
)
register_strategy(
  "coreset",
  _coreset,
  description="k-center greedy on embeddings (Sener and Savarese 2018)",
)
register_strategy(
  "typiclust",
  _typiclust,
  description="most typical points of uncovered k-means"
  " clusters (Hacohen et al. 2022)",
)

"""The conformance table: every public acquisition and registry strategy.

One `Row` per acquisition. `tests/test_conformance.py` runs the same
properties over every row (in-process, small shapes) and
`tests/conformance_worker.py` runs every row once per device layout (one
device, 4 forced devices, 2 processes) on a pool that needs padding. Adding
an acquisition to alfx means adding one row here; a registry strategy gets
its row from `alfx.strategy_names()` and its traits from `STRATEGY_TRAITS`.

A row's ``call(a, batch_size, key)`` takes a dict ``a`` of pool arrays (every
leaf but those of `REPLICATED` has the pool as axis 0: ``log_probs[N, K,
C]``, ``utilities[N]``, ``embeddings[N, D]``, ``probs[N, C]``,
``labeled[N]``, ``mask[N]`` and, on a padded sharded pool, ``in_pool[N]``;
``target_log_probs[M, K, C]``), a static batch size and a PRNG key (ignored
by deterministic rows). Rows that take ``labeled`` receive a
``mask`` that overlaps ``labeled`` (the function must exclude the labelled
points itself); the others receive ``mask & ~labeled``.

This module imports no test framework: the worker subprocess imports it too.
"""

from collections.abc import Callable
import dataclasses
import os
import zlib

import numpy as np

import alfx

#: The pool arrays a row can read (besides ``mask``, ``labeled``).
FLOAT_ARRAYS = ("log_probs", "utilities", "embeddings", "probs")
#: Inputs without a pool axis (replicated on every device): EPIG's target
#: predictions ``[M, K, C]``.
REPLICATED = ("target_log_probs",)
M = 8

#: One shape for every property and every device layout: small (the time
#: is compilation), and N = 203 needs padding on 2 and 4 devices.
N, K, C, D, B = 203, 5, 3, 6, 4

#: ``ALFX_TEST_SEED`` draws different inputs (as in conftest.py).
BASE_SEED = int(os.environ.get("ALFX_TEST_SEED", "0"))


def seed(*tags) -> int:
  """A stable seed for ``tags`` (crc32), mixed with ``ALFX_TEST_SEED``; the
  worker subprocesses derive the same inputs from it."""
  return (zlib.crc32("/".join(tags).encode()) + 7919 * BASE_SEED) % (2**32)


@dataclasses.dataclass(frozen=True)
class Row:
  """One acquisition in the conformance table.

  Attributes:
    name: the test id.
    call: ``call(a, batch_size, key) -> Selection``.
    needs: the float pool arrays it reads; ``needs[0]`` is the one the
      bad-input properties corrupt.
    labeled: takes ``labeled`` and must never pick a labelled point even
      where ``mask`` selects it.
    random: draws from ``key`` (no lower-index tie property).
    dynamic: may end its batch early (``valid`` is a prefix).
    reads_values: False where only the pool's length is read (random_batch):
      no NaN or rank property on the values.
    in_pool: takes ``in_pool=`` (BAIT; every registry strategy through
      ``StrategyContext.in_pool``), passed on a padded sharded pool.
    twin: for a registry strategy, the direct row whose function it wraps
      (its program under jit is that row's plus the wrapper): the default
      suite runs the properties that compile under jit on the twin only,
      ``-m slow`` on the strategy too.
    duplicates: inputs with duplicated rows (`make_inputs`). Not for
      TypiClust: two pairs of duplicates in one cluster tie its typicality
      exactly in real numbers, and the sharded and single-device sums then
      round the tie either way.
  """

  name: str
  call: Callable
  needs: tuple[str, ...]
  labeled: bool = False
  random: bool = False
  dynamic: bool = False
  reads_values: bool = True
  in_pool: bool = False
  twin: str | None = None
  duplicates: bool = True


def _in_pool(a):
  return a.get("in_pool")


def _capacity(a):
  # A static labelled capacity (shape-derived, so new labelled sets never
  # recompile); the pools here label at most a quarter of their points.
  return max(4, a["embeddings"].shape[0] // 2)


def _bait_row(name, fisher, **kw):
  def call(a, b, key):
    del key
    extra = dict(kw)
    if extra.get("method") == "structured":
      extra["labeled_capacity"] = _capacity(a)
    return alfx.bait(
      a["embeddings"],
      a["probs"],
      b,
      labeled=a["labeled"],
      mask=a["mask"],
      fisher=fisher,
      in_pool=_in_pool(a),
      **extra,
    )

  return Row(name, call, ("embeddings", "probs"), labeled=True, in_pool=True)


def _stochastic_row(mode):
  return Row(
    f"stochastic_batch_{mode}",
    lambda a, b, key: alfx.stochastic_batch(
      a["utilities"], b, key=key, mode=mode, mask=a["mask"]
    ),
    ("utilities",),
    random=True,
  )


ROWS = [
  Row(
    "top_b",
    lambda a, b, key: alfx.top_b(a["utilities"], b, mask=a["mask"]),
    ("utilities",),
  ),
  Row(
    "topk_bald",
    lambda a, b, key: alfx.topk_bald(a["log_probs"], b, mask=a["mask"]),
    ("log_probs",),
  ),
  Row(
    "batchbald",
    lambda a, b, key: alfx.batchbald(a["log_probs"], b, mask=a["mask"]),
    ("log_probs",),
  ),
  # C**3 = 27 > 20 configurations: exact for 2 picks, then sampled.
  Row(
    "batchbald_sampled",
    lambda a, b, key: alfx.batchbald(
      a["log_probs"], b, key=key, mask=a["mask"], num_configurations=20
    ),
    ("log_probs",),
    random=True,
  ),
  Row(
    "kbald2",
    lambda a, b, key: alfx.kbald(a["log_probs"], b, order=2, mask=a["mask"]),
    ("log_probs",),
  ),
  Row(
    "kbald3",
    lambda a, b, key: alfx.kbald(a["log_probs"], b, order=3, mask=a["mask"]),
    ("log_probs",),
  ),
  Row(
    "kbald_dynamic",
    lambda a, b, key: alfx.kbald_dynamic(
      a["log_probs"], b, tolerance=0.5, mask=a["mask"]
    ),
    ("log_probs",),
    dynamic=True,
  ),
  Row(
    "conservative_bald",
    lambda a, b, key: alfx.conservative_bald(
      a["log_probs"], b, threshold=0.05, mask=a["mask"]
    ),
    ("log_probs",),
    dynamic=True,
  ),
  _stochastic_row("power"),
  _stochastic_row("softmax"),
  _stochastic_row("softrank"),
  Row(
    "random_batch",
    lambda a, b, key: alfx.random_batch(
      a["embeddings"], b, key=key, mask=a["mask"]
    ),
    ("embeddings",),
    random=True,
    reads_values=False,
  ),
  Row(
    "badge",
    lambda a, b, key: alfx.badge(
      a["embeddings"], a["probs"], b, key=key, mask=a["mask"]
    ),
    ("embeddings", "probs"),
    random=True,
  ),
  Row(
    "coreset",
    lambda a, b, key: alfx.coreset(
      a["embeddings"], b, labeled=a["labeled"], mask=a["mask"], block_size=8
    ),
    ("embeddings",),
    labeled=True,
  ),
  Row(
    "typiclust",
    lambda a, b, key: alfx.typiclust(
      a["embeddings"],
      b,
      key=key,
      labeled=a["labeled"],
      mask=a["mask"],
      block_size=8,
    ),
    ("embeddings",),
    labeled=True,
    random=True,
    duplicates=False,
  ),
  _bait_row("bait_full", "full"),
  _bait_row("bait_topc", "topc"),
  _bait_row("bait_binary", "binary"),
  _bait_row("bait_diagonal", "diagonal"),
  # The path of C * D > DENSE_MAX_DIM, forced at a small shape.
  _bait_row("bait_structured_full", "full", method="structured"),
  # EPIG against M replicated target predictions. M C**4 = 648
  # configurations: exact for every step.
  Row(
    "batch_epig",
    lambda a, b, key: alfx.batch_epig(
      a["log_probs"], a["target_log_probs"], b, mask=a["mask"]
    ),
    ("log_probs",),
  ),
  # M C**3 = 216 > 100: exact for 2 picks, then sampled.
  Row(
    "batch_epig_sampled",
    lambda a, b, key: alfx.batch_epig(
      a["log_probs"],
      a["target_log_probs"],
      b,
      key=key,
      mask=a["mask"],
      num_configurations=100,
    ),
    ("log_probs",),
    random=True,
  ),
  Row(
    "kepig2",
    lambda a, b, key: alfx.kepig(
      a["log_probs"], a["target_log_probs"], b, order=2, mask=a["mask"]
    ),
    ("log_probs",),
  ),
  # One target label drawn per row of the increment tables (C = 3).
  Row(
    "kepig2_sampled",
    lambda a, b, key: alfx.kepig(
      a["log_probs"],
      a["target_log_probs"],
      b,
      key=key,
      order=2,
      mask=a["mask"],
      target_label_samples=1,
    ),
    ("log_probs",),
    random=True,
  ),
]

# --------------------------------------------------------------------------
# Registry strategies: ``strategy(context, batch_size, *, key, mask)``.

#: Per registered name: (needs, random, dynamic, twin). Every name of
#: `alfx.strategy_names()` must appear (test_conformance checks it).
_LP, _EP = ("log_probs",), ("embeddings", "probs")
STRATEGY_TRAITS = {
  "random": (_LP, True, False, "random_batch"),
  "bald": (_LP, False, False, None),
  "entropy": (_LP, False, False, None),
  "margin": (_LP, False, False, None),
  "least-confidence": (_LP, False, False, None),
  "variation-ratios": (_LP, False, False, None),
  "mean-std": (_LP, False, False, None),
  "powerbald": (_LP, True, False, "stochastic_batch_power"),
  "softmaxbald": (_LP, True, False, "stochastic_batch_softmax"),
  "softrankbald": (_LP, True, False, "stochastic_batch_softrank"),
  "batchbald": (_LP, False, False, "batchbald"),
  "kbald-2": (_LP, False, False, "kbald2"),
  "kbald-3": (_LP, False, False, "kbald3"),
  "kbald-dynamic": (_LP, False, True, "kbald_dynamic"),
  "conservative-bald": (_LP, False, True, "conservative_bald"),
  "bait-full": (_EP, False, False, "bait_full"),
  "bait-topc": (_EP, False, False, "bait_topc"),
  "bait-binary": (_EP, False, False, "bait_binary"),
  "bait-diagonal": (_EP, False, False, "bait_diagonal"),
  "badge": (_EP, True, False, "badge"),
  "coreset": (("embeddings",), False, False, "coreset"),
  "typiclust": (("embeddings",), True, False, "typiclust"),
  # EPIG: the targets are pool rows drawn with the key, so every EPIG
  # strategy is random.
  "epig": (_LP, True, False, None),
  "powerepig": (_LP, True, False, None),
  "batch-epig": (_LP, True, False, "batch_epig"),
  "kepig-2": (_LP, True, False, "kepig2"),
}


def _strategy_row(name):
  # An unknown (newly registered) name still gets a row, with the weakest
  # traits; test_conformance asks for an entry in STRATEGY_TRAITS.
  needs, random, dynamic, twin = STRATEGY_TRAITS.get(
    name, (FLOAT_ARRAYS, True, True, None)
  )
  strategy = alfx.get_strategy(name)

  def call(a, b, key):
    context = alfx.StrategyContext(
      log_probs=a["log_probs"],
      embeddings=a["embeddings"],
      probs=a["probs"],
      labeled=a["labeled"],
      in_pool=_in_pool(a),
    )
    return strategy(context, b, key=key, mask=a["mask"])

  # The context carries every array; a strategy reads those of `needs`.
  return Row(
    f"strategy:{name}",
    call,
    needs,
    random=random,
    dynamic=dynamic,
    reads_values=name != "random",
    twin=twin,
    duplicates=name != "typiclust",
    in_pool=True,
  )


def all_rows():
  return ROWS + [_strategy_row(name) for name in alfx.strategy_names()]


def rows_by_name():
  return {row.name: row for row in all_rows()}


# --------------------------------------------------------------------------
# Inputs.


def twin(j, n=N):
  """The lower duplicate of row ``j`` (see `make_inputs`), or None."""
  half = n // 2
  return j - half if half <= j < 2 * half else None


def make_inputs(
  row, seed_, *, n=N, k=K, c=C, d=D, dtype=np.float32, selectable=None
):
  """NumPy inputs of ``row`` from ``seed_``.

  Rows ``n // 2 + i`` of every float array are exact copies of rows ``i``
  (`twin`; if ``row.duplicates``): ties, across shards too, that must go to
  the lower index.

  Args:
    row: a `Row` (decides whether ``mask`` overlaps ``labeled``).
    seed_: the NumPy seed; equal seeds give equal inputs in every process.
    n, k, c, d: pool size, samples, classes, embedding dimension.
    dtype: the float dtype.
    selectable: if set, exactly this many points are selectable
      (``mask & ~labeled``).

  Returns:
    A dict of every pool array (the row ignores those it does not need).
  """
  rng = np.random.default_rng(seed_)
  logits = 2.5 * rng.standard_normal((n, k, c))
  log_probs = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  probs_logits = 2.0 * rng.standard_normal((n, c))
  probs = np.exp(probs_logits) / np.sum(np.exp(probs_logits), -1, keepdims=True)
  target_logits = 2.5 * rng.standard_normal((M, k, c))
  a = dict(
    log_probs=log_probs,
    utilities=rng.random(n),
    embeddings=rng.standard_normal((n, d)) + 3.0,
    probs=probs,
    target_log_probs=target_logits
    - np.log(np.sum(np.exp(target_logits), -1, keepdims=True)),
  )
  # Fixed counts (whatever the seed): n // 6 labelled points (at least
  # one), n // 8 further points masked out; mask selects half of the
  # labelled points (those must still never be picked).
  order = rng.permutation(n)
  n_labeled, n_out = max(1, n // 6), n // 8
  labeled = np.zeros(n, bool)
  labeled[order[:n_labeled]] = True
  mask = np.ones(n, bool)
  mask[order[n_labeled : n_labeled + n_out]] = False
  mask[order[1:n_labeled:2]] = False
  if row.duplicates:
    half = n // 2
    for name in FLOAT_ARRAYS:
      a[name][half : 2 * half] = a[name][:half]
  if selectable is not None:
    # The first `selectable` unlabelled points.
    free = np.flatnonzero(~labeled)[:selectable]
    mask = labeled.copy()  # labelled points selected by mask, but taken
    mask[free] = True
  a = {name: np.asarray(x, dtype) for name, x in a.items()}
  a["labeled"] = labeled
  a["mask"] = mask if row.labeled else mask & ~labeled
  return a


def selectable(a):
  """The points the row may pick."""
  return np.asarray(a["mask"]) & ~np.asarray(a["labeled"])

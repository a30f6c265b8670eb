"""The compiled active-learning loop and the strategy registry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alfx
from alfx._core import selection as _selection
from alfx.loop import _loop
from alfx.loop import _registry
from tests.helpers import blobs
from tests.helpers import ensemble_params
from tests.helpers import mlp

N, D, C = 48, 5, 3


def tiny(rate=0.0):
  return mlp(hidden=8, classes=C, rate=rate)


def make_data(rng, n=N, t=20):
  x, y = blobs(rng, n + t, D, C, spread=2.0, noise=1.0)
  return alfx.Data(x[:n], y[:n], x[n:], y[n:])


_LOOPS = {}


def get_loop(strategy, batch_size, mc):
  """Loops are built once per configuration so that tests share compiled
  programs (their inputs are fresh per test; only values change)."""
  config = (strategy, batch_size, mc)
  if config not in _LOOPS:
    forward = alfx.linen_forward(
      tiny(rate=0.5 if mc else 0.0),
      train_kwargs={"train": True},
      eval_kwargs={"train": False},
    )
    _LOOPS[config] = alfx.make_loop(
      forward,
      optax.adam(0.05),
      strategy,
      batch_size=batch_size,
      num_steps=6,
      train_batch_size=8,
      mc_dropout_samples=mc,
      chunk_size=16,
    )
  return _LOOPS[config]


def setup(rng, strategy="bald", *, k=3, batch_size=4, mc=None, initial=6):
  data = make_data(rng)
  model = tiny(rate=0.5 if mc else 0.0)
  key = jax.random.key(int(rng.integers(2**31)))
  params = (
    model.init(key, data.pool_inputs[:1])
    if mc
    else ensemble_params(model, data.pool_inputs, k, key)
  )
  loop = get_loop(strategy, batch_size, mc)
  state = alfx.initial_state(
    data.pool_labels, initial, key=jax.random.fold_in(key, 1)
  )
  return loop, params, state, data


@pytest.mark.parametrize(
  "strategy,mc", [("bald", None), ("random", None), ("bald", 4)]
)
def test_rounds_grow_the_mask_by_b_new_points_without_recompiling(
  rng, strategy, mc
):
  loop, params, state, data = setup(rng, strategy, mc=mc)
  b = 4
  for r in range(4):
    before = np.asarray(state.labeled)
    state, metrics = loop.round(params, state, data)
    after = np.asarray(state.labeled)
    picks = np.asarray(metrics.selection.indices)
    assert metrics.selection.valid.all()
    assert len(set(picks.tolist())) == b  # no duplicates in a batch
    assert not before[picks].any()  # never re-picks a labelled point
    assert after[picks].all()
    assert after.sum() == before.sum() + b == 6 + (r + 1) * b
    np.testing.assert_array_equal(after & ~before, np.isin(np.arange(N), picks))
    assert int(metrics.num_labeled) == before.sum()
    assert 0 <= float(metrics.accuracy) <= 1
    assert np.isfinite(float(metrics.loss))
  # Compiled once (possibly by an earlier test sharing this loop), then reused.
  assert loop.round._cache_size() == 1  # pylint: disable=protected-access


def test_round_is_train_and_predict_then_acquire(rng):
  loop, params, state, data = setup(rng)
  new_state, metrics = loop.round(params, state, data)
  predictions, accuracy, loss = loop.train_and_predict(params, state, data)
  chex.assert_shape(predictions.log_probs, (N, 3, C))
  chex.assert_shape(predictions.embeddings, (N, 8))
  np.testing.assert_array_equal(predictions.labeled, state.labeled)
  assert predictions.target_log_probs is None
  half_state, selection = loop.acquire(predictions, state)
  chex.assert_trees_all_close(
    (new_state.labeled, metrics.selection, metrics.accuracy, metrics.loss),
    (half_state.labeled, selection, accuracy, loss),
    atol=1e-6,
  )
  np.testing.assert_array_equal(
    jax.random.key_data(new_state.key), jax.random.key_data(half_state.key)
  )
  np.testing.assert_allclose(loop.evaluate(params, state, data), accuracy)
  # The bald strategy on these predictions: top-B of the BALD scores.
  expected = alfx.top_b(
    alfx.bald(predictions.log_probs), 4, mask=~state.labeled
  )
  np.testing.assert_array_equal(selection.indices, expected.indices)


def test_accuracy_of_the_mean_predictive(rng):
  log_probs = jax.nn.log_softmax(
    jnp.asarray(2 * rng.standard_normal((30, 4, C)), jnp.float32)
  )
  labels = jnp.asarray(rng.integers(0, C, 30))
  mean = np.exp(np.asarray(log_probs, np.float64)).mean(1)
  np.testing.assert_allclose(
    _loop._accuracy(log_probs, labels),  # pylint: disable=protected-access
    np.mean(mean.argmax(-1) == np.asarray(labels)),
  )


def test_vmap_over_seeds_equals_python_loop(rng):
  # Kept small: the per-seed round is get_loop's (compiled once per file),
  # the seeds share one ensemble's members, one round then the final
  # evaluation on the grown mask; the vmapped and lax.map programs remain.
  loop, params, _, data = setup(rng)
  # Three seeds: these members, reordered, halved.
  params = jax.tree.map(lambda a: jnp.stack([a, a[::-1], a / 2]), params)
  keys = jax.random.split(jax.random.key(7), 3)
  states = [alfx.initial_state(data.pool_labels, 6, key=k) for k in keys]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
  batched = alfx.run_loop(alfx.vmap_loop(loop), params, stacked, data, 1)
  chex.assert_shape(batched.accuracy, (3, 2))
  chex.assert_shape(batched.indices, (3, 1, 4))
  for r in range(3):
    one = alfx.run_loop(
      loop, jax.tree.map(lambda a: a[r], params), states[r], data, 1
    )
    np.testing.assert_array_equal(batched.indices[r], one.indices)
    np.testing.assert_allclose(batched.accuracy[r], one.accuracy, atol=1e-6)
    np.testing.assert_array_equal(batched.num_labeled[r], [6, 10])
    np.testing.assert_array_equal(batched.state.labeled[r], one.state.labeled)
  # Groups of 2 seeds in a compiled loop (3 = 2 + a remainder of 1): the same.
  grouped = alfx.run_loop(
    alfx.vmap_loop(loop, seeds_per_batch=2), params, stacked, data, 1
  )
  np.testing.assert_array_equal(grouped.indices[:, 0], batched.indices[:, 0])
  np.testing.assert_allclose(
    grouped.accuracy[:, 0], batched.accuracy[:, 0], atol=1e-6
  )


def test_run_loop_history_and_callback(rng):
  loop, params, state, data = setup(rng, "random", batch_size=5)
  seen = []
  history = alfx.run_loop(
    loop, params, state, data, 3, callback=lambda r, m: seen.append(r)
  )
  assert seen == [0, 1, 2]
  np.testing.assert_array_equal(history.num_labeled, [6, 11, 16, 21])
  assert history.valid.all()
  picked = history.indices.reshape(-1)
  assert len(set(picked.tolist())) == 15
  assert not np.asarray(state.labeled)[picked].any()
  np.testing.assert_array_equal(
    np.asarray(history.state.labeled),
    np.asarray(state.labeled) | np.isin(np.arange(N), picked),
  )


def test_initial_state(rng):
  labels = jnp.asarray(np.repeat(np.arange(4), 5))  # 4 classes x 5
  s = alfx.initial_state(labels, 7, key=jax.random.key(1))
  assert int(s.labeled.sum()) == 7
  for seed in range(5):
    s = alfx.initial_state(labels, 8, key=jax.random.key(seed), per_class=True)
    np.testing.assert_array_equal(
      np.bincount(np.asarray(labels)[np.asarray(s.labeled)], minlength=4),
      [2, 2, 2, 2],
    )
  a = alfx.initial_state(labels, 8, key=jax.random.key(0))
  b = alfx.initial_state(labels, 8, key=jax.random.key(1))
  assert not np.array_equal(a.labeled, b.labeled)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="multiple of the number of classes"):
    alfx.initial_state(labels, 6, key=key, per_class=True)
  skewed = jnp.asarray([0] * 8 + [1] * 8 + [2] * 2)
  with pytest.raises(ValueError, match="rarest class has 2"):
    alfx.initial_state(skewed, 9, key=key, per_class=True)
  with pytest.raises(ValueError, match="larger than the pool"):
    alfx.initial_state(labels, 21, key=key)


def test_initial_state_bad_labels_and_key():
  labels = jnp.asarray(np.repeat(np.arange(4), 5))
  key = jax.random.key(0)
  # Negative labels used to label more than num_initial points (per_class).
  negative = labels.at[3].set(-1)
  for per_class in (False, True):
    with pytest.raises(
      ValueError,
      match=r"labels must be class indices >= 0,"
      r" got a minimum of -1",
    ):
      alfx.initial_state(negative, 8, key=key, per_class=per_class)
  with pytest.raises(
    ValueError,
    match=r"labels must be integers.*pass"
    r" labels\.astype\(int\)",
  ):
    alfx.initial_state(labels.astype(jnp.float32), 8, key=key)
  with pytest.raises(ValueError, match=r"labels must be integers"):
    alfx.initial_state(
      np.asarray(labels, np.float64), 8, key=key, per_class=True
    )
  with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
    alfx.initial_state(labels.reshape(4, 5), 8, key=key)
  with pytest.raises(ValueError, match="key is required"):
    alfx.initial_state(labels, 8, key=None)
  with pytest.raises(ValueError, match="num_initial"):
    alfx.initial_state(labels, 0, key=key)
  # NumPy and list labels are accepted.
  s = alfx.initial_state(np.asarray(labels), 8, key=key, per_class=True)
  assert int(s.labeled.sum()) == 8
  assert int(alfx.initial_state(list(range(6)), 2, key=key).labeled.sum()) == 2


def test_make_loop_bad_arguments(rng):
  data = make_data(rng)
  forward = alfx.linen_forward(tiny())
  opt = optax.adam(0.1)
  with pytest.raises(
    ValueError, match="unknown strategy 'nope'; valid names: .*bald.*random"
  ):
    alfx.make_loop(forward, opt, "nope", batch_size=2, num_steps=1)
  with pytest.raises(ValueError, match="batch_size"):
    alfx.make_loop(forward, opt, "bald", batch_size=0, num_steps=1)
  with pytest.raises(ValueError, match="mc_dropout_samples"):
    alfx.make_loop(
      forward, opt, "bald", batch_size=2, num_steps=1, mc_dropout_samples=0
    )
  with pytest.raises(
    ValueError,
    match="'bald' does not accept option.*num_samples.*valid options: none",
  ):
    alfx.make_loop(
      forward,
      opt,
      "bald",
      batch_size=2,
      num_steps=1,
      strategy_options={"num_samples": 3},
    )
  with pytest.raises(ValueError, match="chunk_size"):
    alfx.make_loop(
      forward, opt, "bald", batch_size=2, num_steps=1, chunk_size=0
    )
  del data
  with pytest.raises(ValueError, match='epig_targets must be "pool" or'):
    alfx.make_loop(
      forward, opt, "epig", batch_size=2, num_steps=1, epig_targets="tset"
    )


@pytest.mark.parametrize("mc", [None, 4])
def test_test_targets_are_predicted_under_the_pool_samples(rng, mc):
  # With the test inputs equal to the pool inputs, targets predicted under
  # the pool's posterior samples (MC dropout: the same masks) equal the
  # pool's own predictions; under another key they would differ.
  model = tiny(rate=0.5 if mc else 0.0)
  forward = alfx.linen_forward(
    model, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )
  data = make_data(rng)
  data = data._replace(
    test_inputs=data.pool_inputs, test_labels=data.pool_labels
  )
  key = jax.random.key(int(rng.integers(2**31)))
  params = (
    model.init(key, data.pool_inputs[:1])
    if mc
    else ensemble_params(model, data.pool_inputs, 3, key)
  )
  state = alfx.initial_state(data.pool_labels, 6, key=jax.random.key(3))
  loops = {
    where: alfx.make_loop(
      forward,
      optax.adam(0.05),
      "epig",
      batch_size=3,
      num_steps=4,
      train_batch_size=8,
      mc_dropout_samples=mc,
      epig_targets=where,
    )
    for where in ("pool", "test")
  }
  pooled, _, _ = loops["pool"].train_and_predict(params, state, data)
  assert pooled.target_log_probs is None
  context, accuracy, _ = loops["test"].train_and_predict(params, state, data)
  chex.assert_shape(context.target_log_probs, (N, mc or 3, C))
  np.testing.assert_array_equal(context.target_log_probs, context.log_probs)
  np.testing.assert_array_equal(context.log_probs, pooled.log_probs)
  assert 0 <= float(accuracy) <= 1
  new_state, selection = loops["test"].acquire(context, state)
  assert np.all(np.asarray(selection.valid))
  assert not np.any(np.asarray(state.labeled)[np.asarray(selection.indices)])
  assert int(new_state.labeled.sum()) == int(state.labeled.sum()) + 3


@pytest.mark.parametrize("name", ["bait-full", "bait-binary"])
def test_bait_strategies_weigh_padding_by_in_pool(rng, name):
  # alfx.shard_pool pads with copies of the last row; with in_pool the
  # padded context gives the unpadded pool's BAIT (F averages real rows).
  context = _context(rng, n=30)
  pad = lambda a: jnp.concatenate([a, a[-1:]], axis=0)
  padded = alfx.StrategyContext(
    *[pad(a) for a in context[:4]], in_pool=jnp.arange(31) < 30
  )
  mask = jnp.arange(31) < 30
  strategy = alfx.get_strategy(name)
  key = jax.random.key(0)
  expected = strategy(context, 4, key=key, mask=~context.labeled)
  got = strategy(padded, 4, key=key, mask=mask)
  np.testing.assert_array_equal(got.indices, expected.indices)
  np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5)
  # Without in_pool the padding row counts as a pool point.
  unweighted = strategy(padded._replace(in_pool=None), 4, key=key, mask=mask)
  assert not np.allclose(unweighted.scores, expected.scores, rtol=1e-5)


def test_epig_strategies_draw_targets_from_the_context(rng):
  # Every given target row is the same prediction: whichever rows are
  # drawn, EPIG is against that one input, which the pool targets (drawn
  # from the unlabelled pool) are not.
  context = _context(rng)
  one = jax.nn.log_softmax(
    jnp.asarray(3 * rng.standard_normal((1, 4, C)), jnp.float32)
  )
  given = context._replace(target_log_probs=jnp.repeat(one, 7, axis=0))
  mask = ~context.labeled
  key = jax.random.key(0)
  expected = alfx.top_b(alfx.epig(context.log_probs, one), 5, mask=mask)
  sel = alfx.get_strategy("epig")(given, 5, key=key, mask=mask)
  np.testing.assert_array_equal(sel.indices, expected.indices)
  np.testing.assert_allclose(sel.scores, expected.scores, rtol=1e-5)
  pooled = alfx.get_strategy("epig")(context, 5, key=key, mask=mask)
  assert not np.allclose(pooled.scores, expected.scores)
  exact = alfx.batch_epig(context.log_probs, one, 3, mask=mask)
  sel = alfx.get_strategy("batch-epig")(given, 3, key=key, mask=mask)
  np.testing.assert_array_equal(sel.indices, exact.indices)
  two = alfx.kepig(context.log_probs, one, 3, mask=mask)
  sel = alfx.get_strategy("kepig-2")(given, 3, key=key, mask=mask)
  np.testing.assert_array_equal(sel.indices, two.indices)
  with pytest.raises(ValueError, match="target_log_probs must have shape"):
    bad = context._replace(target_log_probs=one[:, :2])
    alfx.get_strategy("epig")(bad, 3, key=key, mask=mask)


# ----------------------------------------------------------------------------
# Registry.


def _context(rng, n=30, k=4):
  log_probs = jax.nn.log_softmax(
    jnp.asarray(2 * rng.standard_normal((n, k, C)), jnp.float32)
  )
  return alfx.StrategyContext(
    log_probs=log_probs,
    embeddings=jnp.asarray(rng.standard_normal((n, D)), jnp.float32),
    probs=jnp.exp(log_probs[:, 0]),
    labeled=jnp.zeros(n, bool),
  )


def test_unknown_name_lists_the_valid_names():
  with pytest.raises(ValueError) as e:
    alfx.get_strategy("batchbal")
  for name in alfx.strategy_names():
    assert name in str(e.value)
  assert {"random", "bald"} <= set(alfx.strategy_names())


def test_unknown_option_lists_the_valid_options():
  # BatchBALD's option was renamed: the old name is refused, and the message
  # names the valid ones.
  with pytest.raises(
    ValueError,
    match=r"strategy 'batchbald' does not"
    r" accept option\(s\) num_samples; valid options:"
    r" num_configurations, chunk_size\.",
  ):
    alfx.get_strategy("batchbald", num_samples=100)
  with pytest.raises(
    ValueError,
    match=r"'kbald-dynamic' does not accept"
    r" option\(s\) max_batch_size, order; valid options:"
    r" tolerance, chunk_size",
  ):
    alfx.get_strategy("kbald-dynamic", order=2, max_batch_size=4)
  with pytest.raises(
    ValueError, match="'random' does not accept.*valid options: none"
  ):
    alfx.get_strategy("random", beta=1.0)
  assert callable(
    alfx.get_strategy("batchbald", num_configurations=100, chunk_size=8)
  )


def test_bald_strategy_is_top_b_of_bald(rng):
  ctx = _context(rng)
  mask = jnp.asarray(rng.random(30) < 0.5).at[0].set(True)
  sel = alfx.get_strategy("bald")(ctx, 1, key=None, mask=mask)
  ref = alfx.top_b(alfx.bald(ctx.log_probs), 1, mask=mask)
  chex.assert_trees_all_equal(sel, ref)


def test_random_strategy_is_uniform_without_replacement(rng):
  ctx = _context(rng, n=12)
  mask = jnp.asarray(rng.random(12) < 0.6).at[:3].set(True)
  random = alfx.get_strategy("random")
  strategy = jax.jit(lambda k, c, m: random(c, 2, key=k, mask=m))
  draws = 4000
  keys = jax.random.split(jax.random.key(int(rng.integers(99))), draws)
  picks = np.asarray(
    jax.vmap(strategy, in_axes=(0, None, None))(keys, ctx, mask).indices
  )
  assert np.asarray(mask)[picks].all()
  assert (picks[:, 0] != picks[:, 1]).all()
  counts = np.bincount(picks.ravel(), minlength=12)[np.asarray(mask)]
  expected = 2 * draws / int(mask.sum())
  assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected))
  a = strategy(jax.random.key(1), ctx, mask).indices
  np.testing.assert_array_equal(
    a, strategy(jax.random.key(1), ctx, mask).indices
  )
  others = {
    tuple(np.asarray(strategy(jax.random.key(s), ctx, mask).indices))
    for s in range(2, 12)
  }
  assert len(others) > 1  # different keys, different picks


def test_register_a_custom_strategy_and_use_it_in_the_loop(rng):
  def lowest_index():
    def strategy(context, batch_size, *, key, mask):
      del key
      n = context.log_probs.shape[0]
      return alfx.top_b(
        -jnp.arange(n, dtype=jnp.float32), batch_size, mask=mask
      )

    return strategy

  alfx.register_strategy("test-lowest-index", lowest_index)
  try:
    with pytest.raises(ValueError, match="already registered"):
      alfx.register_strategy("test-lowest-index", lowest_index)
    loop, params, state, data = setup(rng, "test-lowest-index")
    _, metrics = loop.round(params, state, data)
    np.testing.assert_array_equal(
      metrics.selection.indices, np.flatnonzero(~np.asarray(state.labeled))[:4]
    )
  finally:
    _registry._FACTORIES.pop("test-lowest-index")  # pylint: disable=protected-access
    _registry._DESCRIPTIONS.pop("test-lowest-index")  # pylint: disable=protected-access


def test_flip_selected_ignores_invalid_picks():
  labeled = jnp.array([False, True, False, False])
  sel = alfx.Selection(
    indices=jnp.array([2, 0], jnp.int32),
    scores=jnp.zeros(2),
    valid=jnp.array([True, False]),
  )
  np.testing.assert_array_equal(
    _selection.flip_selected(labeled, sel), [False, True, True, False]
  )


def test_flip_selected_per_shard_equals_unsharded(rng):
  # vmap with an axis name stands in for shard_map over 4 pool shards.
  labeled = jnp.asarray(rng.random(24) < 0.3)
  picks = rng.choice(np.flatnonzero(~np.asarray(labeled)), 5, replace=False)
  sel = alfx.Selection(
    indices=jnp.asarray(picks, jnp.int32),
    scores=jnp.zeros(5),
    valid=jnp.arange(5) < 4,
  )
  whole = _selection.flip_selected(labeled, sel)
  shards = jax.vmap(
    lambda l: _selection.flip_selected(l, sel, "pool"), axis_name="pool"
  )(labeled.reshape(4, 6))
  np.testing.assert_array_equal(shards.reshape(-1), whole)
  np.testing.assert_array_equal(
    whole, np.asarray(labeled) | np.isin(np.arange(24), picks[:4])
  )

"""Flax integration: predictions from Linen and NNX models, and training."""

import functools

import chex
from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alfx
from alfx._core import pool as _pool
from alfx.nn import _forward
from alfx.nn import _predictions
from alfx.nn import _training
from tests.helpers import blobs
from tests.helpers import ensemble_params
from tests.helpers import mlp
from tests.helpers import seed_for


def np_mlp(variables, x):
  """float64 NumPy forward of `mlp` without dropout: (logits, hidden)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  h = np.maximum(
    np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0
  )
  return h @ p["head"]["kernel"] + p["head"]["bias"], h


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def linen_ensemble(rng, n=23, d=5, k=3, classes=4, scale=1.0):
  model = mlp(classes=classes)
  x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  key = jax.random.key(int(rng.integers(2**31)))
  params = ensemble_params(model, x, k, key)
  params = jax.tree.map(lambda a: a * scale, params)
  return model, x, params


# ----------------------------------------------------------------------------
# Ensemble predictions (Linen).


class EnsemblePredictionsTest(chex.TestCase):
  def rng(self):
    return np.random.default_rng(seed_for(self.id()))

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_reference_per_member(self):
    model, x, params = linen_ensemble(self.rng())
    forward = alfx.linen_forward(model)
    predict = functools.partial(
      alfx.ensemble_predictions, forward, chunk_size=7
    )
    out = self.variant(predict)(params, x)
    chex.assert_shape(out.log_probs, (23, 3, 4))
    chex.assert_shape(out.embeddings, (23, 6))
    chex.assert_shape(out.probs, (23, 4))
    for k in range(3):
      logits, hidden = np_mlp(jax.tree.map(lambda a: a[k], params), x)
      np.testing.assert_allclose(
        out.log_probs[:, k], np_log_softmax(logits), atol=1e-5
      )
      if k == 0:  # embeddings and probs are member 0's
        np.testing.assert_allclose(out.embeddings, hidden, atol=1e-5)
        np.testing.assert_allclose(
          out.probs, np.exp(np_log_softmax(logits)), atol=1e-6
        )

  def test_chunked_equals_unchunked_and_vmap_equals_loop(self):
    model, x, params = linen_ensemble(self.rng(), n=29)
    forward = alfx.linen_forward(model)
    whole = alfx.ensemble_predictions(forward, params, x, chunk_size=1000)
    for chunk in (1, 4, 28, 29):
      got = alfx.ensemble_predictions(forward, params, x, chunk_size=chunk)
      chex.assert_trees_all_close(got, whole, atol=1e-6)
    for k in range(3):  # a Python loop over members, model.apply directly
      logits = model.apply(jax.tree.map(lambda a: a[k], params), x)
      np.testing.assert_allclose(
        whole.log_probs[:, k], jax.nn.log_softmax(logits), atol=1e-6
      )
    # vmap over a seed axis (3 ensembles: these members, reordered, halved)
    # equals a Python loop over the seeds, whose calls reuse the program of
    # chunk_size=4 above.
    seeds = jax.tree.map(lambda a: jnp.stack([a, a[::-1], a / 2]), params)
    batched = jax.vmap(
      lambda p: alfx.ensemble_predictions(forward, p, x, chunk_size=4)
    )(seeds)
    for r in range(3):
      one = alfx.ensemble_predictions(
        forward, jax.tree.map(lambda a: a[r], seeds), x, chunk_size=4
      )
      chex.assert_trees_all_close(
        jax.tree.map(lambda a: a[r], batched), one, atol=1e-6
      )

  def test_log_space_when_softmax_underflows(self):
    # Logits hundreds apart: softmax underflows to 0 in float32, log_softmax
    # stays finite and exact.
    model, x, params = linen_ensemble(self.rng(), scale=60.0)
    forward = alfx.linen_forward(model)
    out = alfx.ensemble_predictions(forward, params, x)
    assert bool(jnp.all(jnp.isfinite(out.log_probs)))
    assert float(jnp.min(out.log_probs)) < -110  # exp() would be 0 in float32
    for k in range(3):
      logits, _ = np_mlp(jax.tree.map(lambda a: a[k], params), x)
      ref = np_log_softmax(logits)
      np.testing.assert_allclose(out.log_probs[:, k], ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
      jax.nn.logsumexp(out.log_probs, -1), 0, atol=1e-5
    )

  def test_float64_in_float64_out(self):
    with jax.enable_x64(True):
      model, x, params = linen_ensemble(self.rng())
      params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
      x = x.astype(jnp.float64)
      forward = alfx.linen_forward(model)
      out = alfx.ensemble_predictions(forward, params, x, chunk_size=4)
      assert out.log_probs.dtype == jnp.float64
      assert out.embeddings.dtype == jnp.float64
      logits, _ = np_mlp(jax.tree.map(lambda a: a[1], params), x)
      np.testing.assert_allclose(
        out.log_probs[:, 1], np_log_softmax(logits), atol=1e-12
      )

  def test_bad_inputs(self):
    model, x, params = linen_ensemble(self.rng())
    forward = alfx.linen_forward(model)
    with pytest.raises(ValueError, match="chunk_size"):
      alfx.ensemble_predictions(forward, params, x, chunk_size=0)
    with pytest.raises(ValueError, match=r"inputs .*NaN"):
      alfx.ensemble_predictions(forward, params, x.at[3, 1].set(jnp.nan))
    with pytest.raises(
      ValueError, match=r"inputs must have shape \[N, \.\.\.\]"
    ):
      alfx.ensemble_predictions(forward, params, x[:0])
    with pytest.raises(ValueError, match="inputs must be a floating"):
      alfx.ensemble_predictions(forward, params, jnp.ones((3, 5), jnp.int32))

  def test_chunk_size_none_is_the_library_default(self):
    model, x, params = linen_ensemble(self.rng())
    forward = alfx.linen_forward(model)
    for module in (_forward, _predictions, _training):  # one shared constant
      assert not hasattr(module, "DEFAULT_CHUNK_SIZE")
    assert _pool.DEFAULT_CHUNK_SIZE == 1024
    default = alfx.ensemble_predictions(forward, params, x)
    chex.assert_trees_all_equal(
      default, alfx.ensemble_predictions(forward, params, x, chunk_size=None)
    )
    chex.assert_trees_all_close(
      default,
      alfx.ensemble_predictions(forward, params, x, chunk_size=1024),
      atol=1e-6,
    )


# ----------------------------------------------------------------------------
# Linen adapter details.


def test_linen_head_selection_and_errors(rng):
  model, x, params = linen_ensemble(rng, k=1)
  one = jax.tree.map(lambda a: a[0], params)
  _, default = alfx.linen_forward(model)(one, x, None)
  _, named = alfx.linen_forward(model, head="head")(one, x, None)
  _, first = alfx.linen_forward(model, head="Dense_0")(one, x, None)
  np.testing.assert_allclose(default, np_mlp(one, x)[1], atol=1e-5)
  np.testing.assert_array_equal(named, default)
  np.testing.assert_array_equal(first, x)  # input of the first layer
  with pytest.raises(ValueError, match="no submodule named 'nope'"):
    alfx.linen_forward(model, head="nope")(one, x, None)
  with pytest.raises(ValueError, match="batch statistics"):
    alfx.linen_forward(model)({**one, "batch_stats": {}}, x, None)


def test_linen_model_without_dense_needs_head(rng):
  # No nn.Dense anywhere: there is no default head, and the inputs must not
  # be returned as embeddings (the top-level module once matched head=None).
  class ConvOnly(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Conv(4, (1,), name="mix")(x[..., None])
      return nn.Conv(3, (1,), name="out")(h).mean(1)

  model = ConvOnly()
  x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(
    ValueError,
    match=r"no nn\.Dense was called.*pass"
    r" head=.*or add an nn\.Dense layer",
  ):
    alfx.linen_forward(model)(variables, x, None)
  with pytest.raises(ValueError, match="no nn.Dense"):
    alfx.ensemble_predictions(
      alfx.linen_forward(model), jax.tree.map(lambda a: a[None], variables), x
    )
  # With head= the named module's input is the embedding.
  logits, embeddings = alfx.linen_forward(model, head="out")(variables, x, None)
  chex.assert_shape(logits, (5, 3))
  chex.assert_shape(embeddings, (5, 6 * 4))


def test_linen_train_and_eval_kwargs_control_dropout(rng):
  model = mlp(rate=0.5)
  x = jnp.asarray(rng.standard_normal((9, 5)), jnp.float32)
  variables = model.init(jax.random.key(0), x[:1])
  forward = alfx.linen_forward(
    model, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )
  det, _ = forward(variables, x, None)
  np.testing.assert_allclose(det, model.apply(variables, x), atol=1e-6)
  a, _ = forward(variables, x, jax.random.key(1))
  b, _ = forward(variables, x, jax.random.key(2))
  assert not np.allclose(a, b)  # dropout is on and keyed
  np.testing.assert_array_equal(a, forward(variables, x, jax.random.key(1))[0])


# ----------------------------------------------------------------------------
# MC dropout.


class DropoutHead(nn.Module):
  """Dropout on the inputs, then a linear head: masks are easy to read."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3, name="head")(x)


class MCDropoutTest(chex.TestCase):
  def rng(self):
    return np.random.default_rng(seed_for(self.id()))

  def setup_model(self, n=13):
    rng = self.rng()
    model = mlp(rate=0.5)
    x = jnp.asarray(rng.standard_normal((n, 5)), jnp.float32)
    variables = model.init(jax.random.key(int(rng.integers(99))), x[:1])
    forward = alfx.linen_forward(
      model, train_kwargs={"train": True}, eval_kwargs={"train": False}
    )
    return model, forward, variables, x

  @chex.variants(with_jit=True, without_jit=True)
  def test_equals_a_loop_over_samples_and_points(self):
    _, forward, variables, x = self.setup_model()
    key = jax.random.key(3)
    predict = functools.partial(
      alfx.mc_dropout_predictions, forward, num_samples=4, chunk_size=5
    )
    out = self.variant(predict)(variables, x, key=key)
    chex.assert_shape(out.log_probs, (13, 4, 4))
    keys = jax.random.split(key, 4)
    for k in range(4):
      for i in range(13):  # each point alone, with sample k's key
        logits, _ = forward(variables, x[i : i + 1], keys[k])
        np.testing.assert_allclose(
          out.log_probs[i, k], jax.nn.log_softmax(logits[0]), atol=1e-5
        )
    det, hidden = forward(variables, x, None)
    np.testing.assert_allclose(out.probs, jax.nn.softmax(det), atol=1e-6)
    np.testing.assert_allclose(out.embeddings, hidden, atol=1e-6)
    np.testing.assert_allclose(
      jax.nn.logsumexp(out.log_probs, -1), 0, atol=1e-5
    )

  def test_consistent_masks_and_chunk_invariance(self):
    model = DropoutHead()
    x0 = jnp.asarray(self.rng().standard_normal((1, 6)), jnp.float32)
    x = jnp.tile(x0, (10, 1))  # ten identical points
    variables = model.init(jax.random.key(0), x0)
    forward = alfx.linen_forward(
      model, train_kwargs={"train": True}, eval_kwargs={"train": False}
    )
    out = alfx.mc_dropout_predictions(
      forward, variables, x, key=jax.random.key(1), num_samples=8, chunk_size=3
    )
    # The same mask for every point within a sample; masks differ between
    # samples (8 draws of 6 Bernoulli(0.5) are all equal w.p. 2**-42).
    np.testing.assert_allclose(
      out.log_probs,
      jnp.broadcast_to(out.log_probs[:1], out.log_probs.shape),
      atol=1e-6,
    )
    assert float(jnp.std(out.log_probs[0], axis=0).max()) > 1e-3
    whole = alfx.mc_dropout_predictions(
      forward,
      variables,
      x,
      key=jax.random.key(1),
      num_samples=8,
      chunk_size=100,
    )
    chex.assert_trees_all_close(out, whole, atol=1e-6)

  def test_bad_inputs(self):
    _, forward, variables, x = self.setup_model()
    with pytest.raises(ValueError, match="num_samples"):
      alfx.mc_dropout_predictions(
        forward, variables, x, key=jax.random.key(0), num_samples=0
      )
    with pytest.raises(ValueError, match="key is required"):
      alfx.mc_dropout_predictions(
        forward, variables, x, key=None, num_samples=2
      )
    with pytest.raises(ValueError, match="chunk_size"):
      alfx.mc_dropout_predictions(
        forward,
        variables,
        x,
        key=jax.random.key(0),
        num_samples=2,
        chunk_size=0,
      )
    with pytest.raises(TypeError):  # key is keyword-only
      alfx.mc_dropout_predictions(
        forward, variables, x, jax.random.key(0), num_samples=2
      )


# ----------------------------------------------------------------------------
# NNX.


class NnxMLP(nnx.Module):
  def __init__(self, d, hidden, classes, *, rate=0.0, rngs):
    self.body = nnx.Linear(d, hidden, rngs=rngs)
    self.drop = nnx.Dropout(rate, rngs=rngs)
    self.head = nnx.Linear(hidden, classes, rngs=rngs)

  def features(self, x):
    return self.drop(nnx.relu(self.body(x)))

  def __call__(self, x):
    return self.head(self.features(x))


def test_nnx_ensemble_matches_models_called_directly(rng):
  x = jnp.asarray(rng.standard_normal((11, 5)), jnp.float32)
  seed = int(rng.integers(99))
  forward, _ = alfx.nnx_forward(NnxMLP(5, 7, 3, rngs=nnx.Rngs(seed)))
  params = alfx.init_ensemble(
    lambda k: alfx.nnx_forward(NnxMLP(5, 7, 3, rngs=nnx.Rngs(k)))[1],
    3,
    key=jax.random.key(seed),
  )
  out = alfx.ensemble_predictions(forward, params, x, chunk_size=4)
  chex.assert_shape(out.log_probs, (11, 3, 3))
  graphdef, _, rest = nnx.split(
    NnxMLP(5, 7, 3, rngs=nnx.Rngs(0)), nnx.Param, ...
  )
  for k in range(3):  # rebuild each member as a model and call it
    member = nnx.merge(graphdef, jax.tree.map(lambda a: a[k], params), rest)
    member.eval()
    np.testing.assert_allclose(
      out.log_probs[:, k], jax.nn.log_softmax(member(x)), atol=1e-5
    )
    if k == 0:
      np.testing.assert_allclose(out.embeddings, member.features(x), atol=1e-5)


def test_nnx_mc_dropout_head_path_and_no_mutation(rng):
  x = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  model = NnxMLP(5, 16, 3, rate=0.5, rngs=nnx.Rngs(0))
  snapshot = lambda: jax.tree.map(
    lambda a: np.asarray(jax.random.key_data(a) if _forward._is_key(a) else a),
    nnx.state(model),
  )
  before = snapshot()
  forward, params = alfx.nnx_forward(model, head="head")
  out = alfx.mc_dropout_predictions(
    forward,
    params,
    jnp.tile(x[:1], (4, 1)),
    key=jax.random.key(2),
    num_samples=5,
    chunk_size=3,
  )
  # Consistent: identical points, identical samples; dropout active.
  np.testing.assert_allclose(
    out.log_probs,
    jnp.broadcast_to(out.log_probs[:1], out.log_probs.shape),
    atol=1e-6,
  )
  assert float(jnp.std(out.log_probs[0], axis=0).max()) > 1e-3
  # Deterministic pass: dropout off, embeddings are the head's input.
  model.eval()
  np.testing.assert_allclose(
    out.probs[0], jax.nn.softmax(model(x[:1]))[0], atol=1e-6
  )
  np.testing.assert_allclose(
    out.embeddings[0], model.features(x[:1])[0], atol=1e-6
  )
  model.train()
  chex.assert_trees_all_equal(snapshot(), before)  # the model is untouched


def test_nnx_errors():
  model = NnxMLP(5, 7, 3, rngs=nnx.Rngs(0))
  forward, params = alfx.nnx_forward(model, head="missing.layer")
  with pytest.raises(ValueError, match="cannot reach the layer"):
    forward(params, jnp.ones((2, 5)), None)

  class WithBatchNorm(nnx.Module):
    def __init__(self, rngs):
      self.bn = nnx.BatchNorm(5, rngs=rngs)
      self.head = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
      return self.head(self.bn(x))

  with pytest.raises(ValueError, match="BatchNorm"):
    alfx.nnx_forward(WithBatchNorm(nnx.Rngs(0)))


# ----------------------------------------------------------------------------
# Training.


def test_sample_labeled_draws_only_and_uniformly_labelled_points(rng):
  n = 40
  labeled = rng.random(n) < 0.3
  labeled[int(rng.integers(n))] = True
  draws = jax.jit(alfx.sample_labeled, static_argnums=1)(
    jnp.asarray(labeled), 20_000, key=jax.random.key(int(rng.integers(99)))
  )
  draws = np.asarray(draws)
  assert labeled[draws].all()
  counts = np.bincount(draws, minlength=n)[labeled]
  expected = 20_000 / labeled.sum()
  # Multinomial counts: 6 standard deviations is a never-fails bound.
  assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected))
  # Eager (concrete input) draws are the same draws.
  eager = alfx.sample_labeled(jnp.asarray(labeled), 5, key=jax.random.key(3))
  np.testing.assert_array_equal(
    eager,
    jax.jit(alfx.sample_labeled, static_argnums=1)(
      jnp.asarray(labeled), 5, key=jax.random.key(3)
    ),
  )


def test_sample_labeled_errors_and_nothing_labelled_under_jit():
  key = jax.random.key(0)
  nothing = jnp.zeros(7, bool)
  with pytest.raises(
    ValueError,
    match=r"labeled \(shape \[N\]\) marks no"
    " point.*label at least one",
  ):
    alfx.sample_labeled(nothing, 4, key=key)
  # Under jit the values cannot be checked: every index is 0, in range (it
  # used to be N, out of range).
  draws = jax.jit(alfx.sample_labeled, static_argnums=1)(nothing, 4, key=key)
  np.testing.assert_array_equal(draws, np.zeros(4))
  with pytest.raises(ValueError, match="key is required"):
    alfx.sample_labeled(jnp.ones(7, bool), 4, key=None)
  with pytest.raises(ValueError, match="batch_size must be a positive"):
    alfx.sample_labeled(jnp.ones(7, bool), 0, key=key)
  with pytest.raises(
    ValueError,
    match=r"labeled must be a boolean.*"
    r"astype\(bool\)",
  ):
    alfx.sample_labeled(jnp.ones(7, jnp.int32), 4, key=key)
  with pytest.raises(
    ValueError,
    match=r"labeled must be a boolean array of"
    r" shape \[N\]",
  ):
    alfx.sample_labeled(jnp.ones((2, 3), bool), 4, key=key)


def test_fit_loss_falls_on_separable_problem(rng):
  x, y = blobs(rng, 60, 4)
  model = mlp(hidden=8, classes=3)
  forward = alfx.linen_forward(model)
  params = model.init(jax.random.key(0), x[:1])
  labeled = jnp.asarray(rng.random(60) < 0.5)
  fit = alfx.make_fit(forward, optax.adam(0.05), num_steps=150, batch_size=16)
  result = fit(params, x, y, labeled, key=jax.random.key(1))
  chex.assert_shape(result.losses, (150,))
  assert float(result.losses[-10:].mean()) < 0.1 * float(result.losses[0])
  pred = jnp.argmax(model.apply(result.params, x), -1)
  assert float(jnp.mean((pred == y)[labeled])) == 1.0


def test_fit_ignores_unlabelled_points_entirely(rng):
  x, y = blobs(rng, 60, 4)
  model = mlp(hidden=8, classes=3)
  forward = alfx.linen_forward(model)
  params = model.init(jax.random.key(0), x[:1])
  labeled = jnp.asarray(rng.random(60) < 0.4)
  fit = alfx.make_fit(forward, optax.adam(0.05), num_steps=20, batch_size=8)
  a = fit(params, x, y, labeled, key=jax.random.key(5))
  # Scramble everything about the unlabelled points: nothing may change.
  x2 = jnp.where(labeled[:, None], x, 100.0)
  y2 = jnp.where(labeled, y, (y + 1) % 3)
  b = fit(params, x2, y2, labeled, key=jax.random.key(5))
  chex.assert_trees_all_equal(a, b)


def test_fit_with_no_labelled_point_under_jit_leaves_params(rng):
  x, y = blobs(rng, 10, 4)
  model = mlp(hidden=4, classes=3)
  forward = alfx.linen_forward(model)
  params = model.init(jax.random.key(0), x[:1])
  fit = alfx.make_fit(forward, optax.adam(0.1), num_steps=5, batch_size=4)
  result = jax.jit(fit.core)(
    params, x, y, jnp.zeros(10, bool), key=jax.random.key(0)
  )
  chex.assert_trees_all_close(result.params, params)
  np.testing.assert_array_equal(result.losses, 0)


def test_train_step_matches_numpy_gradient(rng):
  # A linear model (head only): the cross-entropy gradient is x^T (p - onehot).
  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3, name="head")(x)

  x, y = blobs(rng, 12, 4)
  w = jnp.asarray(rng.random(12) < 0.7, jnp.float32).at[0].set(1.0)
  model = Linear()
  params = model.init(jax.random.key(0), x[:1])
  lr = 0.3
  step = alfx.make_train_step(alfx.linen_forward(model), optax.sgd(lr))
  new, _, loss = step(
    params, optax.sgd(lr).init(params), x, y, w, key=jax.random.key(0)
  )
  kernel = np.asarray(params["params"]["head"]["kernel"], np.float64)
  bias = np.asarray(params["params"]["head"]["bias"], np.float64)
  xs, ws = np.asarray(x, np.float64), np.asarray(w, np.float64)
  logits = xs @ kernel + bias
  p = np.exp(np_log_softmax(logits))
  onehot = np.eye(3)[np.asarray(y)]
  ce = -(np_log_softmax(logits) * onehot).sum(-1)
  np.testing.assert_allclose(loss, (ws * ce).sum() / ws.sum(), rtol=1e-5)
  g = (ws[:, None] * (p - onehot)) / ws.sum()
  np.testing.assert_allclose(
    new["params"]["head"]["kernel"], kernel - lr * xs.T @ g, atol=1e-5
  )
  np.testing.assert_allclose(
    new["params"]["head"]["bias"], bias - lr * g.sum(0), atol=1e-5
  )


def test_fit_vmap_over_members_equals_loop(rng):
  x, y = blobs(rng, 30, 4)
  model = mlp(hidden=5, classes=3)
  forward = alfx.linen_forward(model)
  params = ensemble_params(model, x, 3, jax.random.key(0))
  labeled = jnp.arange(30) < 12
  fit = alfx.make_fit(forward, optax.adam(0.02), num_steps=10, batch_size=8)
  keys = jax.random.split(jax.random.key(1), 3)
  # Jitted, as the loop runs it (eager vmap of the training scan: seconds).
  batched = jax.jit(jax.vmap(lambda p, k: fit.core(p, x, y, labeled, key=k)))(
    params, keys
  )
  for k in range(3):
    one = fit(jax.tree.map(lambda a: a[k], params), x, y, labeled, key=keys[k])
    chex.assert_trees_all_close(
      jax.tree.map(lambda a: a[k], batched), one, atol=1e-5
    )


def test_fit_bad_inputs(rng):
  x, y = blobs(rng, 10, 4)
  model = mlp(hidden=4, classes=3)
  forward = alfx.linen_forward(model)
  params = model.init(jax.random.key(0), x[:1])
  labeled = jnp.arange(10) < 4
  fit = alfx.make_fit(forward, optax.adam(0.1), num_steps=2, batch_size=4)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"labels must have shape \[N=10\]"):
    fit(params, x, y[:9], labeled, key=key)
  with pytest.raises(ValueError, match="labels must be an integer"):
    fit(params, x, y.astype(jnp.float32), labeled, key=key)
  with pytest.raises(ValueError, match=r"class indices in \[0, C=3\)"):
    fit(params, x, y.at[2].set(3), labeled, key=key)
  with pytest.raises(ValueError, match=r"class indices in \[0, C=3\)"):
    fit(params, x, y.at[2].set(-1), labeled, key=key)
  with pytest.raises(ValueError, match=r"labeled must have shape \[N=10\]"):
    fit(params, x, y, labeled[:5], key=key)
  with pytest.raises(ValueError, match="selects no points"):
    fit(params, x, y, jnp.zeros(10, bool), key=key)
  with pytest.raises(ValueError, match="key is required"):
    fit(params, x, y, labeled, key=None)
  with pytest.raises(ValueError, match="num_steps"):
    alfx.make_fit(forward, optax.adam(0.1), num_steps=0, batch_size=4)
  with pytest.raises(ValueError, match="num_members"):
    alfx.init_ensemble(lambda k: model.init(k, x[:1]), 0, key=key)
  with pytest.raises(ValueError, match="key is required"):
    alfx.init_ensemble(lambda k: model.init(k, x[:1]), 2, key=None)

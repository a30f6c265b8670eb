"""The experiment's models: shapes, dropout modes, MC dropout, embeddings.

The BatchBALD CNN is checked against a float64 NumPy forward pass written
from the paper's description; everything runs on small inputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alfx
from alfx.experiment import datasets
from alfx.experiment import models


@functools.cache
def _init(architecture, shape, classes, seed=0):
  # Initialising a CNN compiles for seconds on a loaded CPU: once per shape
  # (dropout has no parameters, so every rate shares them).
  model = models.make_model(
    classes, (16,), 0.0, architecture=architecture, image_shape=shape
  )
  return model.init(jax.random.key(seed), jnp.zeros((1, *shape)))


def build(architecture, shape, *, dropout=0.5, classes=10, batch=3):
  model = models.make_model(
    classes, (16,), dropout, architecture=architecture, image_shape=shape
  )
  x = jax.random.normal(jax.random.key(1), (batch, *shape))
  return model, _init(architecture, shape, classes), x


def forward_of(model):
  return alfx.linen_forward(
    model, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )


@pytest.mark.parametrize(
  "architecture, shape, width",
  [
    ("cnn", (28, 28, 1), 128),
    ("cnn", (32, 32, 3), 128),
    ("cifar-cnn", (32, 32, 3), 128),
    ("cnn", (8, 8, 1), 128),
    ("mlp", (8, 8, 1), 16),
    ("linear", (8, 8, 1), 64),
  ],
)
def test_output_and_embedding_shapes(architecture, shape, width):
  model, variables, x = build(architecture, shape)
  logits, embeddings = forward_of(model)(variables, x, None)
  assert logits.shape == (3, 10) and embeddings.shape == (3, width)


def test_cnn_takes_flat_or_channelless_images():
  model, variables, x = build("cnn", (8, 8, 1))
  nhwc = model.apply(variables, x)
  np.testing.assert_allclose(
    model.apply(variables, x.reshape(3, 64)), nhwc, rtol=1e-6
  )
  np.testing.assert_allclose(model.apply(variables, x[..., 0]), nhwc, rtol=1e-6)


def numpy_cnn(params, x):
  """The BatchBALD MNIST CNN in float64 NumPy: [conv 5x5 VALID, max-pool 2,
  ReLU] x 2, dense 128, ReLU, head (eval mode: dropout is the identity)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  h = np.asarray(x, np.float64)
  for name in ("Conv_0", "Conv_1"):
    kernel, bias = p[name]["kernel"], p[name]["bias"]  # [5, 5, in, out]
    windows = np.lib.stride_tricks.sliding_window_view(h, (5, 5), (1, 2))
    h = np.einsum("bhwcij,ijco->bhwo", windows, kernel) + bias
    b, hh, ww, c = h.shape
    h = h[:, : hh // 2 * 2, : ww // 2 * 2]
    h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
    h = np.maximum(h, 0)
  h = h.reshape(h.shape[0], -1)
  h = np.maximum(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
  return h @ p["head"]["kernel"] + p["head"]["bias"], h


def test_cnn_matches_the_papers_network_in_numpy():
  model, variables, x = build("cnn", (28, 28, 1), batch=2)
  shapes = jax.tree.map(jnp.shape, variables["params"])
  assert shapes["Conv_0"]["kernel"] == (5, 5, 1, 32)
  assert shapes["Conv_1"]["kernel"] == (5, 5, 32, 64)
  assert shapes["Dense_0"]["kernel"] == (1024, 128)  # 4 x 4 x 64
  assert shapes["head"]["kernel"] == (128, 10)
  logits, embeddings = forward_of(model)(variables, x, None)
  ref_logits, ref_embeddings = numpy_cnn(variables, x)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(embeddings, ref_embeddings, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", ["cnn", "cifar-cnn"])
def test_embedding_is_the_heads_input(architecture):
  model, variables, x = build(architecture, (32, 32, 3))
  logits, embeddings = forward_of(model)(variables, x, None)
  head = variables["params"]["head"]
  np.testing.assert_allclose(
    logits, embeddings @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
  )
  assert float(embeddings.min()) >= 0  # after the ReLU


@pytest.mark.parametrize("architecture", ["cnn", "cifar-cnn"])
def test_dropout_is_active_only_in_training(architecture):
  model, variables, x = build(architecture, (32, 32, 3))
  forward = forward_of(model)
  eval_a = model.apply(variables, x, rngs={"dropout": jax.random.key(1)})
  eval_b = model.apply(variables, x, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(forward(variables, x, None)[0], eval_a)
  train_a = forward(variables, x, jax.random.key(1))[0]
  train_b = forward(variables, x, jax.random.key(2))[0]
  assert float(jnp.abs(train_a - train_b).max()) > 1e-3
  assert float(jnp.abs(train_a - eval_a).max()) > 1e-3
  np.testing.assert_array_equal(
    train_a, forward(variables, x, jax.random.key(1))[0]
  )
  # dropout=0: the same network with no dropout layers (for ensembles).
  plain, plain_vars, _ = build(architecture, (32, 32, 3), dropout=0.0)
  np.testing.assert_array_equal(
    forward_of(plain)(plain_vars, x, jax.random.key(1))[0],
    plain.apply(plain_vars, x),
  )


def test_cnn_dropout_order_equals_the_papers():
  # The CNN drops channels after pooling and ReLU; the paper's code drops
  # them before. A channel scale >= 0 commutes with both: same outputs, with
  # the same masks (the same module names draw the same keys).
  import flax.linen as nn

  class PaperOrder(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      for width in (32, 64):
        x = nn.Conv(width, (5, 5), padding="VALID")(x)
        x = nn.Dropout(0.5, broadcast_dims=(1, 2), deterministic=not train)(x)
        x = nn.relu(nn.max_pool(x, (2, 2), strides=(2, 2)))
      x = nn.Dense(128)(x.reshape(x.shape[0], -1))
      x = nn.relu(nn.Dropout(0.5, deterministic=not train)(x))
      return nn.Dense(10, name="head")(x)

  model, variables, x = build("cnn", (28, 28, 1), batch=3)
  for key in (jax.random.key(3), jax.random.key(4)):
    rngs = {"dropout": key}
    ours = model.apply(variables, x, train=True, rngs=rngs)
    paper = PaperOrder().apply(variables, x, train=True, rngs=rngs)
    np.testing.assert_allclose(ours, paper, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(ours - model.apply(variables, x)).max()) > 1e-3


def test_mc_dropout_samples_differ_and_are_consistent_across_the_pool():
  model, variables, x = build("cnn", (28, 28, 1), batch=3)
  pool = jnp.concatenate([x, x[:1]])  # point 3 is a copy of point 0
  forward = forward_of(model)
  pred = alfx.mc_dropout_predictions(
    forward, variables, pool, key=jax.random.key(7), num_samples=4
  )
  assert pred.log_probs.shape == (4, 4, 10)
  lp = np.asarray(pred.log_probs)
  # Consistent dropout: one mask per sample, shared by every pool point.
  np.testing.assert_allclose(lp[3], lp[0], rtol=1e-5, atol=1e-5)
  # The samples are different networks ...
  spread = np.abs(lp - lp.mean(axis=1, keepdims=True)).max(axis=(1, 2))
  assert np.all(spread > 1e-3), spread
  # ... so BALD is far from zero, and the deterministic pass is repeatable.
  assert float(alfx.bald(pred.log_probs).max()) > 1e-4
  det = forward(variables, pool, None)
  np.testing.assert_array_equal(det[1], pred.embeddings)
  np.testing.assert_array_equal(det[0], forward(variables, pool, None)[0])
  again = alfx.mc_dropout_predictions(
    forward, variables, pool, key=jax.random.key(7), num_samples=4
  )
  np.testing.assert_array_equal(again.log_probs, pred.log_probs)


def test_cnn_ensemble_predictions():
  model, _, x = build("cnn", (8, 8, 1), dropout=0.0)
  members = [_init("cnn", (8, 8, 1), 10, seed) for seed in (0, 1)]
  params = jax.tree.map(lambda *a: jnp.stack(a), *members)
  pred = alfx.ensemble_predictions(forward_of(model), params, x)
  assert pred.log_probs.shape == (3, 2, 10) and pred.embeddings.shape == (
    3,
    128,
  )
  members = np.asarray(pred.log_probs)
  assert np.abs(members[:, 0] - members[:, 1]).max() > 1e-3  # two networks


def test_short_training_on_tiny_digits_reduces_the_loss():
  digits = datasets.load_digits_data(subsample=200)
  model = models.make_model(
    10, (), 0.25, architecture="cnn", image_shape=digits.image_shape
  )
  x = jnp.asarray(digits.pool_x)
  variables = _init("cnn", (8, 8, 1), 10)
  fit = alfx.make_fit(
    forward_of(model), optax.adam(3e-3), num_steps=40, batch_size=32
  )
  labels = jnp.asarray(digits.pool_y)
  result = fit(
    variables, x, labels, jnp.ones(len(x), bool), key=jax.random.key(1)
  )
  losses = np.asarray(result.losses)
  assert losses[-8:].mean() < 0.6 * losses[:8].mean(), losses
  accuracy = (model.apply(result.params, x).argmax(-1) == labels).mean()
  assert float(accuracy) > 0.5


def test_has_dropout_and_bad_arguments():
  assert models.has_dropout("mlp", (8,), 0.3)
  assert not models.has_dropout("mlp", (), 0.3)  # no hidden layer
  assert not models.has_dropout("cnn", (), 0.0)
  assert not models.has_dropout("linear", (8,), 0.3)
  with pytest.raises(ValueError, match="unknown model 'resnet'"):
    models.make_model(10, architecture="resnet")
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
    models.make_model(10, dropout=1.0, architecture="cnn")
  with pytest.raises(ValueError, match="at least 4x4"):
    models.make_model(10, architecture="cnn", image_shape=(3, 3, 1))
  with pytest.raises(ValueError, match=r"image_shape must be \(H, W, C\)"):
    models.make_model(10, architecture="cnn", image_shape=(8, 8))
  model = models.make_model(10, architecture="cnn")
  with pytest.raises(ValueError, match="needs images"):
    model.init(jax.random.key(0), jnp.zeros((1, 64)))

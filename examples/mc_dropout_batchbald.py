"""Active learning with an MC-dropout Flax Linen CNN and BatchBALD.

A small CNN on scikit-learn's 8x8 digits; K = 20 consistent MC-dropout
samples (the same dropout masks for every pool point within a sample, as
BatchBALD's joint over points requires); batches of 10 picked by BatchBALD.
Each round (train, predict the pool, acquire, update the mask) is one compiled
program; rounds after the first reuse it.

Run: python examples/mc_dropout_batchbald.py [--strategy bald]
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import alfx
from alfx.experiment.datasets import load_digits_data
from alfx.experiment.datasets import loop_data


class Conv3x3(nn.Module):
  """A 3x3 "SAME" convolution, as patch extraction and a Dense layer.

  The same linear map as ``nn.Conv(features, (3, 3), strides=stride)``.
  Written out because XLA:CPU runs ``nn.Conv``'s gradient inside a compiled
  training loop about 6x slower than this (jax-ml/jax#12868); on a GPU, use
  ``nn.Conv``.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    h, w = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
      [padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)],
      axis=-1,
    )
    patches = patches[:, :: self.stride, :: self.stride, :]
    return nn.Dense(self.features)(patches)


class CNN(nn.Module):
  """Two convolutions, a dropout-regularised dense layer, a linear head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], 8, 8, 1)
    x = nn.relu(Conv3x3(16)(x))
    x = nn.relu(Conv3x3(32, stride=2)(x))
    x = nn.Dropout(0.25, deterministic=not train)(x)
    x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(10, name="head")(x)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--strategy", default="batchbald")
  parser.add_argument("--rounds", type=int, default=8)
  args = parser.parse_args()

  data = loop_data(load_digits_data())
  cnn = CNN()
  # With a key the model runs with dropout (training and MC samples); without
  # one, deterministically (embeddings and probs for BAIT-like strategies).
  forward = alfx.linen_forward(
    cnn, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )
  init_key, state_key = jax.random.split(jax.random.key(0))
  params = cnn.init(init_key, data.pool_inputs[:1])
  options = {"num_configurations": 1000} if args.strategy == "batchbald" else {}
  loop = alfx.make_loop(
    forward,
    optax.adam(3e-3),
    args.strategy,
    strategy_options=options,
    batch_size=10,
    num_steps=200,
    mc_dropout_samples=20,
  )
  state = alfx.initial_state(
    data.pool_labels, 20, key=state_key, per_class=True
  )

  for r in range(args.rounds + 1):  # the last round only reports accuracy
    t = time.perf_counter()
    state, metrics = loop.round(params, state, data)
    jax.block_until_ready(state)
    print(
      f"round {r}: {int(metrics.num_labeled):3d} labels, test accuracy"
      f" {float(metrics.accuracy):.3f}"
      + (
        f", picked {metrics.selection.indices.tolist()}"
        if r < args.rounds
        else ""
      )
      + f" ({time.perf_counter() - t:.2f} s)"
    )
  print(f"compiled the round {loop.round._cache_size()} time(s)")  # pylint: disable=protected-access


if __name__ == "__main__":
  main()

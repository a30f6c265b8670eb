"""Active learning with a deep ensemble of Flax Linen MLPs and BAIT.

Eight MLPs trained together (``jax.vmap`` over stacked params) give the
posterior samples; BAIT uses the last-layer inputs and class probabilities of
member 0. The script runs random acquisition and BAIT from the same initial
labelled set and prints both learning curves.

Run: python examples/ensemble_bait.py [--strategies random,bait-full,bait-binary]
"""

import argparse

import flax.linen as nn
import jax
import optax

import alfx
from alfx.experiment.datasets import load_digits_data
from alfx.experiment.datasets import loop_data


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10, name="head")(x)  # BAIT's embeddings: its inputs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--strategies", default="random,bait-full")
  parser.add_argument("--rounds", type=int, default=10)
  args = parser.parse_args()

  data = loop_data(load_digits_data())
  mlp = MLP()
  forward = alfx.linen_forward(mlp)
  init_key, state_key = jax.random.split(jax.random.key(0))
  params = alfx.init_ensemble(
    lambda k: mlp.init(k, data.pool_inputs[:1]), 8, key=init_key
  )  # every leaf: a leading [8]
  state = alfx.initial_state(
    data.pool_labels, 20, key=state_key, per_class=True
  )

  for name in args.strategies.split(","):
    loop = alfx.make_loop(
      forward, optax.adam(1e-2), name, batch_size=10, num_steps=100
    )
    history = alfx.run_loop(loop, params, state, data, args.rounds)
    curve = " ".join(f"{a:.3f}" for a in history.accuracy)
    print(
      f"{name:12s} labels {history.num_labeled[0]}..."
      f"{history.num_labeled[-1]}: accuracy {curve}"
    )


if __name__ == "__main__":
  main()

"""The same loop with a Flax NNX model: MC dropout, then a deep ensemble.

``alfx.nnx_forward`` splits the model (``nnx.split``) into its ``nnx.Param``
state, which is what training updates and an ensemble stacks, and a forward
function that merges a fresh copy per call (``nnx.merge``), in training mode
with every RNG stream reseeded from the given key (dropout on), or in
evaluation mode without a key.

Run: python examples/nnx_active_learning.py [--strategy kbald-2]
"""

import argparse

from flax import nnx
import jax
import optax

import alfx
from alfx.experiment.datasets import load_digits_data
from alfx.experiment.datasets import loop_data


class MLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.dropout = nnx.Dropout(0.3, rngs=rngs)
    self.head = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(self.dropout(nnx.relu(self.hidden(x))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--strategy", default="kbald-2")
  parser.add_argument("--rounds", type=int, default=8)
  args = parser.parse_args()

  data = loop_data(load_digits_data(repeated=True))
  state = alfx.initial_state(
    data.pool_labels, 20, key=jax.random.key(1), per_class=True
  )

  # MC dropout: one model, 16 consistent dropout samples.
  forward, params = alfx.nnx_forward(MLP(rngs=nnx.Rngs(0)), head="head")
  loop = alfx.make_loop(
    forward,
    optax.adam(3e-3),
    args.strategy,
    batch_size=10,
    num_steps=150,
    mc_dropout_samples=16,
  )
  history = alfx.run_loop(loop, params, state, data, args.rounds)
  print("test accuracy per round")
  print("MC dropout (K=16):", " ".join(f"{a:.3f}" for a in history.accuracy))

  # Deep ensemble: the Param states of 8 independently initialised models.
  members = alfx.init_ensemble(
    lambda k: alfx.nnx_forward(MLP(rngs=nnx.Rngs(k)))[1],
    8,
    key=jax.random.key(2),
  )
  loop = alfx.make_loop(
    forward, optax.adam(3e-3), args.strategy, batch_size=10, num_steps=150
  )
  history = alfx.run_loop(loop, members, state, data, args.rounds)
  print("ensemble (K=8):   ", " ".join(f"{a:.3f}" for a in history.accuracy))
  print("labels:           ", " ".join(f"{n:5d}" for n in history.num_labeled))


if __name__ == "__main__":
  main()

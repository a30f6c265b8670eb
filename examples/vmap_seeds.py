"""Repetitions of an experiment in one program: ``jax.vmap`` over seeds.

R seeds (different initial labelled sets, initialisations and training
noise) of the same active-learning experiment, run (a) as one vmapped
program and (b) as a Python loop over R runs of the single-seed program.
Both give the same picks; the script measures the wall time of each after
compilation and prints the speed-up.

Run: python examples/vmap_seeds.py [--seeds 8] [--strategy bald]
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import alfx
from alfx.experiment.datasets import load_digits_data
from alfx.experiment.datasets import loop_data


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10, name="head")(nn.relu(nn.Dense(64)(x)))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, default=8)
  parser.add_argument("--strategy", default="bald")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()

  data = loop_data(load_digits_data(repeated=True))
  mlp = MLP()
  loop = alfx.make_loop(
    alfx.linen_forward(mlp),
    optax.adam(1e-2),
    args.strategy,
    batch_size=10,
    num_steps=100,
  )
  init = lambda k: mlp.init(k, data.pool_inputs[:1])
  keys = jax.random.split(jax.random.key(0), args.seeds)
  params = [alfx.init_ensemble(init, 8, key=k) for k in keys]
  states = [
    alfx.initial_state(
      data.pool_labels, 20, key=jax.random.fold_in(k, 1), per_class=True
    )
    for k in keys
  ]
  stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  batched = alfx.vmap_loop(loop)

  # Compile both programs first (one round each), then time whole runs.
  jax.block_until_ready(batched.round(stack(params), stack(states), data))
  jax.block_until_ready(loop.round(params[0], states[0], data))

  t = time.perf_counter()
  together = alfx.run_loop(
    batched, stack(params), stack(states), data, args.rounds
  )
  vmapped = time.perf_counter() - t
  t = time.perf_counter()
  apart = [
    alfx.run_loop(loop, p, s, data, args.rounds) for p, s in zip(params, states)
  ]
  looped = time.perf_counter() - t

  same = all(
    np.array_equal(together.indices[r], apart[r].indices)
    for r in range(args.seeds)
  )
  print(
    f"{args.seeds} seeds x {args.rounds} rounds ({args.strategy}, ensemble"
    f" of 8, pool {data.pool_inputs.shape[0]}): vmapped {vmapped:.2f} s, Python"
    f" loop {looped:.2f} s, speed-up {looped / vmapped:.2f}x; same picks:"
    f" {same}"
  )
  print("final accuracy per seed:", np.round(together.accuracy[:, -1], 3))


if __name__ == "__main__":
  main()

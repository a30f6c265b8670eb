"""Select a batch with BALD from random predictive samples and print it.

Run: python examples/quickstart.py
"""

import jax
import jax.numpy as jnp

import alfx


def main():
  n, k, c, batch_size = 1000, 8, 10, 5
  key = jax.random.key(0)
  # K posterior samples of C-class predictions for N pool points.
  logits = 3.0 * jax.random.normal(key, (n, k, c))
  log_probs = jax.nn.log_softmax(logits, axis=-1)

  scores = alfx.bald(log_probs)
  mask = jnp.arange(n) % 7 != 0  # e.g. every 7th point is already labelled
  batch = alfx.top_b(scores, batch_size, mask=mask)

  print(f"pool: N={n} points, K={k} samples, C={c} classes")
  print(
    f"BALD range over the pool: [{float(scores.min()):.3f},"
    f" {float(scores.max()):.3f}] nats (upper bound log C ="
    f" {float(jnp.log(c)):.3f})"
  )
  print("picked indices:", batch.indices.tolist())
  print("their BALD    :", [round(float(s), 4) for s in batch.scores])
  jent = alfx.joint_entropy(log_probs[batch.indices])
  ents = alfx.entropy(jnp.log(jnp.mean(jnp.exp(log_probs[batch.indices]), 1)))
  print(
    f"joint entropy of the batch {float(jent):.3f} nats <= sum of its"
    f" marginal entropies {float(ents.sum()):.3f}"
  )


if __name__ == "__main__":
  main()

"""Benchmark: Flax predictions, ensemble training and the compiled round.

The main job's configuration: repeated digits (pool N=3891, D=64 features,
C=10 classes, 500 test points), an MLP 64-H-10, a deep ensemble of K members
trained for S Adam steps on minibatches of 64, top-B BALD with B=10. Rows:

* ``predict``: `alfx.ensemble_predictions` over the pool.
* ``predict mc``: `alfx.mc_dropout_predictions` (consistent masks: every
  point passes as its own batch of one under vmap) next to ``predict mc
  (plain)``, the same K stochastic passes with ordinary per-example masks,
  to show what consistency costs.
* ``fit``: training the K members (``jax.vmap`` of `alfx.make_fit`).
* ``round``: one whole round (train, test, predict, BALD, flip the mask).
* ``round xR vmap`` / ``lax.map`` / ``loop``: R seeds in one vmapped
  program, in one program looping over the seeds (`alfx.vmap_loop` with
  ``seeds_per_batch=1``), and as a Python loop over R single-seed rounds.

FLOP counts (multiply-adds count 2): a forward pass of one point is
``2 (D H + H C)``; training a step is 3 forward-equivalents (forward, two
backward matmuls) on 64 points; the byte floor is the pool read once per
pass over it. Run: ``python benchmarks/loop.py [--quick]``.
"""

import functools

import flax.linen as nn
import harness
import jax
import jax.numpy as jnp
import optax

import alfx
from alfx.experiment.datasets import load_digits_data
from alfx.experiment.datasets import loop_data


class MLP(nn.Module):
  hidden: int = 64
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(self.hidden)(x))
    if self.rate:
      h = nn.Dropout(self.rate, deterministic=not train)(h)
    return nn.Dense(10, name="head")(h)


def row(name, fn, args, flops, bytes_moved=0.0, eager=True, note=""):
  best, first, peak = harness.time_compiled(fn, *args)
  eager_s = harness.time_eager(fn, *args) if eager else None
  floor = harness.floor_seconds(flops=flops, bytes_moved=bytes_moved)
  return {
    "configuration": name,
    "compiled": harness.fmt_seconds(best),
    "first call": harness.fmt_seconds(first),
    "eager": harness.fmt_seconds(eager_s) if eager else "skipped",
    "peak mem": harness.fmt_bytes(peak),
    "GFLOP": f"{flops / 1e9:.2f}",
    "floor": harness.fmt_seconds(floor),
    "x floor": f"{best / floor:.1f}",
    "note": note,
    "_best": best,
  }


def main():
  args = harness.script_args(
    __doc__.split("\n")[0], "loop.md", "one configuration, no eager runs"
  )
  started, load_start, machine = harness.start()
  data = loop_data(load_digits_data(repeated=True))
  n, d = data.pool_inputs.shape
  c, b, train_batch = 10, 10, 64
  configs = (
    [(8, 64, 100)]
    if args.quick
    else [(8, 64, 100), (8, 64, 200), (16, 128, 100)]
  )
  rows = []
  for k, hidden, steps in configs:
    tag = f"K={k} H={hidden}"
    mlp = MLP(hidden)
    forward = alfx.linen_forward(mlp)
    params = alfx.init_ensemble(
      lambda key: mlp.init(key, data.pool_inputs[:1]), k, key=jax.random.key(0)
    )
    per_point = 2 * (d * hidden + hidden * c)
    pool_bytes = 4 * n * (d + k * c)

    # Jitted around the public function: its checks run at trace time only,
    # so the compiled program is the prediction alone.
    predict = jax.jit(
      functools.partial(alfx.ensemble_predictions, forward, chunk_size=1024)
    )
    rows.append(
      row(
        f"predict {tag} N={n}",
        predict,
        (params, data.pool_inputs),
        n * k * per_point,
        pool_bytes,
        note="K members vmapped, 4 chunks of 1024 rows",
      )
    )

    fit = alfx.make_fit(
      forward, optax.adam(1e-2), num_steps=steps, batch_size=train_batch
    )
    fit_members = jax.jit(
      jax.vmap(
        lambda p, x, y, lab, key: fit.core(p, x, y, lab, key=key),
        in_axes=(0, None, None, None, 0),
      )
    )
    labeled = jnp.arange(n) < 100
    keys = jax.random.split(jax.random.key(1), k)
    train_flops = steps * k * 3 * train_batch * per_point
    rows.append(
      row(
        f"fit {tag} S={steps}",
        fit_members,
        (params, data.pool_inputs, data.pool_labels, labeled, keys),
        train_flops,
        eager=not args.quick and k <= 8,
        note=f"{k} members vmapped; {steps} steps of 64x{d}x{hidden}"
        " matmuls: small, so per-step overhead shows",
      )
    )

    loop = alfx.make_loop(
      forward, optax.adam(1e-2), "bald", batch_size=b, num_steps=steps
    )
    state = alfx.initial_state(data.pool_labels, 20, key=jax.random.key(2))
    round_flops = train_flops + (n + 500) * k * per_point
    rows.append(
      row(
        f"round {tag} S={steps} bald",
        loop.round,
        (params, state, data),
        round_flops,
        pool_bytes,
        eager=False,
        note="fit + test + pool predictions + BALD",
      )
    )

    seeds = 3
    stack = lambda x: jax.tree.map(lambda a: jnp.stack([a] * seeds), x)
    batched = alfx.vmap_loop(loop)
    vm = row(
      f"round x{seeds} seeds vmap {tag}",
      batched.round,
      (stack(params), stack(state), data),
      seeds * round_flops,
      seeds * pool_bytes,
      eager=False,
    )
    looped = row(
      f"round x{seeds} seeds loop {tag}",
      lambda p, s, dd: [loop.round(p, s, dd) for _ in range(seeds)],
      (params, state, data),
      seeds * round_flops,
      seeds * pool_bytes,
      eager=False,
    )
    grouped = row(
      f"round x{seeds} seeds lax.map {tag}",
      alfx.vmap_loop(loop, seeds_per_batch=1).round,
      (stack(params), stack(state), data),
      seeds * round_flops,
      seeds * pool_bytes,
      eager=False,
    )
    for r in (vm, grouped):
      r["configuration"] += (
        f" (speed-up {looped['_best'] / r['_best']:.2f}x over the loop)"
      )
    rows += [vm, grouped, looped]

  # MC dropout: consistent masks (per-point passes under vmap) vs plain.
  k, hidden = 16, 128
  mlp = MLP(hidden, rate=0.3)
  forward = alfx.linen_forward(
    mlp, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )
  variables = mlp.init(jax.random.key(0), data.pool_inputs[:1])
  per_point = 2 * (d * hidden + hidden * c)
  mc = jax.jit(
    lambda v, x, key: alfx.mc_dropout_predictions(
      forward, v, x, key=key, num_samples=k, chunk_size=1024
    )
  )
  # Dropout acts after the first layer, so x W1 does not depend on the
  # sample: vmap over keys leaves it unbatched and computes it once. The K
  # samples cost the head only; plus one deterministic pass.
  mc_flops = n * (2 * d * hidden + k * 2 * hidden * c + per_point)
  rows.append(
    row(
      f"predict mc K={k} H={hidden} N={n}",
      mc,
      (variables, data.pool_inputs, jax.random.key(3)),
      mc_flops,
      4 * n * (d + k * c),
      note="consistent masks: K x H random bits; x W1 once",
    )
  )

  @jax.jit
  def plain(variables, x, key):
    logits = jax.vmap(lambda kk: forward(variables, x, kk)[0])(
      jax.random.split(key, k)
    )
    return jax.nn.log_softmax(logits, -1)

  # Per-example masks: K * N * H random bits (the consistent version draws
  # K * H), the same matmuls.
  rows.append(
    row(
      f"predict mc (plain) K={k} H={hidden} N={n}",
      plain,
      (variables, data.pool_inputs, jax.random.key(3)),
      mc_flops - n * per_point,
      4 * n * (d + k * c),
      note="per-example masks: K x N x H random bits dominate",
    )
  )
  table = harness.print_table(
    rows,
    [
      "configuration",
      "compiled",
      "first call",
      "eager",
      "peak mem",
      "GFLOP",
      "floor",
      "x floor",
      "note",
    ],
  )
  command = f"python benchmarks/loop.py{' --quick' if args.quick else ''}"
  head = harness.report_head(
    "Flax predictions, training and the round",
    machine,
    load_start,
    command,
    started,
  )
  head.append(
    "Eager: skipped for whole rounds and large fits (a training scan op"
    " by op takes minutes).\n"
  )
  harness.write_page(args.out, [*head, table, ""])


if __name__ == "__main__":
  main()

"""Running the experiment: every strategy on one dataset, all seeds vmapped.

`run_dataset` builds the model and the `alfx.Loop` of each strategy, compiles
training and prediction once per dataset (only the acquisition compiles per
strategy) and runs the rounds, timing training and acquisition separately.
Its rows are what `alfx.experiment.report` writes and summarises.

May import: numpy, `alfx` (the public API), jax and optax (inside
`run_dataset`), tqdm (inside `progress_bar`), `alfx.experiment.datasets`,
`alfx.experiment.models`.
"""

import argparse
from collections.abc import Sequence
import sys
import time
from typing import Any

import numpy as np

from alfx.experiment import datasets
from alfx.experiment import models


def strategy_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
  """The `alfx.get_strategy` options the flags ``args`` set for ``name``."""
  if name == "batchbald":
    return {"num_configurations": args.num_configurations}
  return {}


def progress_bar(total: int, enabled: bool) -> Any:
  """A tqdm bar when tqdm is installed and wanted, else a no-op stand-in."""
  if enabled:
    try:
      from tqdm.auto import tqdm

      return tqdm(
        total=total, unit="round", file=sys.stderr, dynamic_ncols=True
      )
    except ImportError:
      pass

  class _Quiet:
    def update(self, n=1):
      pass

    def set_description(self, text):
      pass

    def close(self):
      pass

  return _Quiet()


def run_dataset(
  dataset: datasets.Dataset,
  strategies: Sequence[str],
  args: argparse.Namespace,
  progress: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
  """Runs every strategy on one dataset, all seeds vmapped; returns rows."""
  import jax
  import jax.numpy as jnp
  import optax

  import alfx

  datasets.check_budget(dataset, args.initial, args.rounds, args.batch_size)
  mc = args.mc_dropout
  model = models.make_model(
    dataset.num_classes, tuple(args.hidden), args.dropout if mc else 0.0
  )
  forward = alfx.linen_forward(
    model, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )
  optimizer = optax.adam(args.lr)
  data = alfx.Data(
    jnp.asarray(dataset.pool_x),
    jnp.asarray(dataset.pool_y),
    jnp.asarray(dataset.test_x),
    jnp.asarray(dataset.test_y),
  )
  seeds = [args.seed + s for s in range(args.seeds)]
  per_class = (
    args.initial % dataset.num_classes == 0
    and np.bincount(dataset.pool_y, minlength=dataset.num_classes).min()
    >= args.initial // dataset.num_classes
  )
  init = lambda k: model.init(k, data.pool_inputs[:1])
  params, states = [], []
  for seed in seeds:
    init_key, state_key = jax.random.split(jax.random.key(seed))
    params.append(
      init(init_key)
      if mc
      else alfx.init_ensemble(init, args.ensemble, key=init_key)
    )
    states.append(
      alfx.initial_state(
        data.pool_labels, args.initial, key=state_key, per_class=per_class
      )
    )
  stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  params, state0 = stack(params), stack(states)

  def loop_for(strategy):
    loop = alfx.make_loop(
      forward,
      optimizer,
      strategy,
      batch_size=args.batch_size,
      num_steps=args.train_steps,
      train_batch_size=args.train_batch_size,
      mc_dropout_samples=mc,
      chunk_size=args.chunk_size,
      strategy_options=strategy_options(strategy, args),
    )
    return alfx.vmap_loop(loop, seeds_per_batch=args.seeds_per_batch)

  # Training and prediction do not depend on the strategy: compile them once
  # per dataset; only the acquisition compiles per strategy.
  t0 = time.perf_counter()
  base = loop_for("random")
  train_and_predict = base.train_and_predict.lower(
    params, state0, data
  ).compile()
  predictions_shape = jax.eval_shape(
    base.train_and_predict, params, state0, data
  )[0]
  shared_compile = time.perf_counter() - t0

  rows, summary = [], []
  for name in strategies:
    progress.set_description(f"{dataset.name}/{name}")
    t0 = time.perf_counter()
    acquire = loop_for(name).acquire.lower(predictions_shape, state0).compile()
    compile_seconds = time.perf_counter() - t0
    state = state0
    acq_times, train_times, start = [], [], time.perf_counter()
    for r in range(args.rounds + 1):
      if r < args.rounds:
        t = time.perf_counter()
        predictions, accuracy, loss = train_and_predict(params, state, data)
        jax.block_until_ready(predictions)
        train_times.append(time.perf_counter() - t)
        labeled_before = np.asarray(state.labeled).sum(-1)
        t = time.perf_counter()
        state, selection = acquire(predictions, state)
        jax.block_until_ready(state)
        acq_times.append(time.perf_counter() - t)
      else:
        labeled_before = np.asarray(state.labeled).sum(-1)
        # The final evaluation reuses the compiled train-and-predict program
        # (one pool prediction more than needed, one compilation less).
        _, accuracy, _ = train_and_predict(params, state, data)
        loss = None
      accuracy = np.asarray(accuracy)
      for i, seed in enumerate(seeds):
        rows.append(
          {
            "dataset": dataset.name,
            "strategy": name,
            "seed": seed,
            "round": r,
            "num_labeled": int(labeled_before[i]),
            "accuracy": float(accuracy[i]),
            "train_loss": "" if loss is None else float(np.asarray(loss)[i]),
            "acquisition_seconds": (
              f"{acq_times[-1]:.6f}" if r < args.rounds else ""
            ),
          }
        )
      progress.update(1)
    summary.append(
      {
        "dataset": dataset.name,
        "strategy": name,
        "compile_seconds": compile_seconds,
        "run_seconds": time.perf_counter() - start,
        "acquisition_seconds": float(np.mean(acq_times))
        if acq_times
        else float("nan"),
        "train_seconds": float(np.mean(train_times))
        if train_times
        else float("nan"),
      }
    )
  return rows, summary, shared_compile

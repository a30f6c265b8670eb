"""Running the experiment: every strategy on one dataset, all seeds vmapped.

`run_dataset` builds the model and the `alfx.Loop` of each strategy, compiles
training and prediction once per dataset (only the acquisition compiles per
strategy) and runs the rounds from the host, one compiled round at a time,
timing training and acquisition separately. Each finished round can be
written to disk at once with its loop state (`alfx.experiment.durable`), so
a run can be interrupted and resumed. Its rows are what
`alfx.experiment.report` writes and summarises.

May import: numpy, `alfx` (the public API), jax and optax (inside
`run_dataset`), tqdm (inside `progress_bar`), `alfx.experiment.datasets`,
`alfx.experiment.durable`, `alfx.experiment.models`,
`alfx.experiment.report`.
"""

import argparse
from collections.abc import Sequence
import os
import sys
import time
from typing import Any

import numpy as np

from alfx.experiment import datasets
from alfx.experiment import durable
from alfx.experiment import models
from alfx.experiment import report


def strategy_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
  """The `alfx.get_strategy` options the flags ``args`` set for ``name``:
  ``--num-configurations`` for BatchBALD, then every ``--strategy-option
  name:key=value`` given for ``name`` (parsed by the command line into
  ``args.strategy_options``, ``{name: {key: value}}``)."""
  options = {}
  if name == "batchbald":
    options["num_configurations"] = args.num_configurations
  options.update((getattr(args, "strategy_options", None) or {}).get(name, {}))
  return options


def progress_bar(total: int, enabled: bool) -> Any:
  """Progress over ``total`` rounds: a redrawn tqdm bar on a terminal, one
  line per round when stderr is a file or a pipe (a log stays readable),
  nothing when not ``enabled``.

  The returned object has ``update(n)``, ``set_description(text)``,
  ``set_postfix_str(text)`` and ``close()`` (tqdm's names).
  """
  if enabled and sys.stderr.isatty():
    try:
      from tqdm.auto import tqdm

      return tqdm(
        total=total, unit="round", file=sys.stderr, dynamic_ncols=True
      )
    except ImportError:
      pass
  return _Lines(total, sys.stderr if enabled else None)


class _Lines:
  """tqdm's interface, written as one line per update (or not at all)."""

  def __init__(self, total, file):
    self.total, self.file, self.n = total, file, 0
    self.description, self.postfix = "", ""
    self.start = time.perf_counter()

  def update(self, n=1):
    self.n += n
    if self.file is not None:
      elapsed = time.perf_counter() - self.start
      print(
        f"{self.description}: {self.n}/{self.total} rounds"
        + (f", {self.postfix}" if self.postfix else "")
        + f" [{elapsed:.0f} s]",
        file=self.file,
        flush=True,
      )

  def set_description(self, text):
    self.description, self.postfix = text, ""

  def set_postfix_str(self, text):
    self.postfix = text

  def close(self):
    pass


def run_dataset(
  dataset: datasets.Dataset,
  strategies: Sequence[str],
  args: argparse.Namespace,
  progress: Any,
  out: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
  """Runs every strategy on one dataset, all seeds vmapped, round by round.

  With ``out``, every finished round's rows are appended to
  ``out/results.csv`` (flushed to disk) and the loop state is checkpointed
  (`alfx.experiment.durable`); a strategy with a checkpoint continues
  after its last finished round, so an interrupted run resumes where it
  stopped and its rows equal an uninterrupted run's.

  Returns:
    ``(rows, summary, shared_compile_seconds)``: the rows this call
    computed, one timing summary per strategy, and the compile time of
    training and prediction (0 when every strategy had finished before).
  """
  if out is not None:
    ckpts = {
      name: durable.load_checkpoint(
        durable.checkpoint_path(out, dataset.name, name)
      )
      for name in strategies
    }
  else:
    ckpts = {name: None for name in strategies}
  if all(
    c is not None and int(c["next_round"]) > args.rounds for c in ckpts.values()
  ):  # all finished before: nothing to compile
    progress.update(len(strategies) * (args.rounds + 1))
    return [], [_summary(dataset.name, n, ckpts[n]) for n in strategies], 0.0

  import jax
  import jax.numpy as jnp
  import optax

  import alfx

  datasets.check_budget(dataset, args.initial, args.rounds, args.batch_size)
  mc = args.mc_dropout
  model = models.make_model(
    dataset.num_classes,
    tuple(args.hidden),
    args.dropout if mc else 0.0,
    architecture=args.model,
    image_shape=dataset.image_shape,
  )
  forward = alfx.linen_forward(
    model, train_kwargs={"train": True}, eval_kwargs={"train": False}
  )
  optimizer = optax.adam(args.lr)
  data = datasets.loop_data(dataset)
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
      epig_targets=args.epig_targets,
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

  key_impl = jax.random.key_impl(state0.key)
  n_seeds, n_pool = np.shape(state0.labeled)
  rows, summary = [], []
  for name in strategies:
    progress.set_description(f"{dataset.name}/{name}")
    ckpt = ckpts[name]
    first = 0 if ckpt is None else int(ckpt["next_round"])
    if first > args.rounds:  # finished in an earlier session
      summary.append(_summary(dataset.name, name, ckpt))
      progress.update(args.rounds + 1)
      continue
    t0 = time.perf_counter()
    acquire = loop_for(name).acquire.lower(predictions_shape, state0).compile()
    compile_seconds = time.perf_counter() - t0
    acq_times, train_times, run_before = [], [], 0.0
    state = state0
    if ckpt is not None:
      if ckpt["labeled"].shape != (n_seeds, n_pool):
        raise ValueError(
          f"{durable.checkpoint_path(out or '', dataset.name, name)}: its"
          f" state has shape {list(ckpt['labeled'].shape)}, this run needs"
          f" [{n_seeds}, {n_pool}] (seeds, pool); start afresh with"
          " --overwrite."
        )
      state = alfx.LoopState(
        jnp.asarray(ckpt["labeled"]),
        jax.random.wrap_key_data(jnp.asarray(ckpt["key_data"]), impl=key_impl),
      )
      acq_times = [float(t) for t in ckpt["acquisition_seconds"]]
      train_times = [float(t) for t in ckpt["train_seconds"]]
      compile_seconds += float(ckpt["compile_seconds"])
      run_before = float(ckpt["run_seconds"])
      progress.update(first)
    start = time.perf_counter()
    for r in range(first, args.rounds + 1):
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
      new_rows = [
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
        for i, seed in enumerate(seeds)
      ]
      rows += new_rows
      if out is not None:
        # Rows first, then the state that follows them: a run cut off in
        # between redoes this round on resume (its rows are dropped then).
        durable.append_rows(
          os.path.join(out, durable.RESULTS), new_rows, report.CSV_COLUMNS
        )
        durable.save_checkpoint(
          durable.checkpoint_path(out, dataset.name, name),
          next_round=r + 1,
          labeled=np.asarray(state.labeled),
          key_data=np.asarray(jax.random.key_data(state.key)),
          acquisition_seconds=np.asarray(acq_times, np.float64),
          train_seconds=np.asarray(train_times, np.float64),
          compile_seconds=compile_seconds,
          run_seconds=run_before + time.perf_counter() - start,
        )
      progress.set_postfix_str(
        f"{int(labeled_before.mean())} labels, accuracy {accuracy.mean():.3f}"
      )
      progress.update(1)
    summary.append(
      {
        "dataset": dataset.name,
        "strategy": name,
        "compile_seconds": compile_seconds,
        "run_seconds": run_before + time.perf_counter() - start,
        "acquisition_seconds": _mean(acq_times),
        "train_seconds": _mean(train_times),
      }
    )
  return rows, summary, shared_compile


def _mean(times):
  return float(np.mean(times)) if len(times) else float("nan")


def _summary(dataset, strategy, ckpt):
  """The timing summary of a run that finished in an earlier session."""
  return {
    "dataset": dataset,
    "strategy": strategy,
    "compile_seconds": float(ckpt["compile_seconds"]),
    "run_seconds": float(ckpt["run_seconds"]),
    "acquisition_seconds": _mean(ckpt["acquisition_seconds"]),
    "train_seconds": _mean(ckpt["train_seconds"]),
  }

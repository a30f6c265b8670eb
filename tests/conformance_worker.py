"""Runs every row of the conformance table once, in one device layout.

Executed by ``tests/test_conformance.py`` (the device count and the process
group are fixed when JAX starts, hence a subprocess per layout)::

  python -m tests.conformance_worker MODE OUT_DIR [--rows a,b | --rows all]
      [--extras a,b | --extras all] [--process-id I --port P]

MODE is one of

* ``single``: one process, one CPU device: what test_conformance computes
  in its own process as the reference (for debugging a layout by hand).
* ``devices4``: one process, 4 forced host devices; the pool placed by
  `alfx.shard_pool` (N = 203 padded to 204). Also the checks of the sharded
  programs: no all-gather of a pool-sized operand (compiled HLO of each row,
  read from an XLA dump) and the checks of `sharded_public` (``--extras``:
  `shard_pool`'s padding and placement, the split scan state of BAIT, the
  kernels, the Flax helpers, two negative controls).
* ``multiprocess``: one of 2 processes on 127.0.0.1 (``--process-id``,
  ``--port`` of the coordinator), 2 forced devices each, CPU collectives
  (gloo). The pool is placed as the README's multi-host recipe does: each
  process holds a contiguous block of the padded rows and builds the global
  arrays with ``jax.make_array_from_process_local_data``, ``in_pool`` False
  on the padding. Everything binds and connects on loopback: the
  coordinator (``coordinator_bind_address``) and gloo's pairs.

Every mode builds the same NumPy inputs (fixed seeds) and calls each row
eagerly (as a user would, outside ``jit``). Process 0 writes, per row,
``OUT_DIR/<row>.npz`` (``indices``, ``valid``, ``scores``) or
``OUT_DIR/<row>.error`` (the exception), and ``<row>.json`` (seconds, the
pool-sized all-gathers found); at the end ``extras.json`` and ``done``. A row
that raises does not stop the others. ``--rows`` and ``--extras`` default
to all; the workers compile with LLVM's cheap pipeline unless
``ALFX_CONFORMANCE_FULL_OPT=1``.

By hand, e.g. the two processes of one row::

  python -m tests.conformance_worker multiprocess /tmp/mp --rows topk_bald \
      --extras '' --process-id 0 --port 12355 &
  python -m tests.conformance_worker multiprocess /tmp/mp --rows topk_bald \
      --extras '' --process-id 1 --port 12355
"""

import argparse
import json
import os
import sys
import time
import traceback


def _parse():
  p = argparse.ArgumentParser()
  p.add_argument("mode", choices=("single", "devices4", "multiprocess"))
  p.add_argument("out")
  p.add_argument(
    "--rows",
    default="all",
    help="comma-separated row names, 'all' or '' (none)",
  )
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument(
    "--extras",
    default="all",
    help="checks of sharded_public.CHECKS: names, 'all' or ''",
  )
  return p.parse_args()


ARGS = _parse()
_DEVICES = {"single": 1, "devices4": 4, "multiprocess": 2}[ARGS.mode]
_HLO_DIR = os.path.join(ARGS.out, "hlo")
_flags = [f"--xla_force_host_platform_device_count={_DEVICES}"]
if os.environ.get("ALFX_CONFORMANCE_FULL_OPT", "0") != "1":
  # Compilation is nearly all of this run's time: LLVM's cheap pipeline cuts
  # it by ~30% (measured). What is compared is the partitioned program and
  # the eager multi-process layer, not the code generator; float semantics
  # stay (no fast math), and ALFX_CONFORMANCE_FULL_OPT=1 restores -O3.
  _flags += [
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
  ]
if ARGS.mode == "devices4":
  # The compiled program of each eager call, to look for pool-sized gathers
  # without compiling anything twice.
  _flags += [
    f"--xla_dump_to={_HLO_DIR}",
    "--xla_dump_hlo_as_text",
    "--xla_dump_hlo_module_re=.*sharded.*",
  ]
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + _flags)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402


def _gloo_on_loopback():
  """Makes gloo's TCP pairs bind to 127.0.0.1.

  By default gloo binds to the address its host name resolves to, which on
  many machines is an external interface. JAX has no public option for it:
  this replaces the CPU backend factory (private API, test-only) by one that
  passes ``hostname='127.0.0.1'``; if that API moved, the default stays (and
  the test still runs, possibly on the host's address).
  """
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top

    def factory():
      return xla_bridge.make_cpu_client(
        collectives=_jax.make_gloo_tcp_collectives(
          distributed_client=distributed.global_state.client,
          hostname="127.0.0.1",
        )
      )

    xla_bridge.register_backend_factory(
      "cpu", factory, priority=0, fail_quietly=False
    )
  except (ImportError, AttributeError, TypeError) as e:
    print(f"gloo stays on its default address: {e!r}", file=sys.stderr)


if ARGS.mode == "multiprocess":
  # CPU collectives across processes: gloo (jax 0.10's default, set here so
  # that a changed default cannot silently run without them). Everything on
  # loopback: the coordinator binds 127.0.0.1 (its default is [::]).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  _gloo_on_loopback()
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{ARGS.port}",
    coordinator_bind_address=f"127.0.0.1:{ARGS.port}",
    num_processes=2,
    process_id=ARGS.process_id,
    initialization_timeout=120,
  )

from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

import alfx  # noqa: E402
from alfx._core import sharding as _sharding  # noqa: E402
from tests import conformance_cases as cases  # noqa: E402

WRITER = jax.process_index() == 0


N, B = cases.N, cases.B  # N = 203 needs padding on 2 and 4 devices


def row_inputs(row):
  """The inputs of test_conformance's in-process eager run of ``row``."""
  return (
    cases.make_inputs(row, cases.seed(row.name, "picks")),
    jax.random.key(cases.seed(row.name, "picks", "key")),
  )


def pad_rows(x, n_pad):
  """The README recipe's padding: False for masks, copies of the last row
  (valid values) otherwise; what `alfx.shard_pool` does."""
  extra = n_pad - x.shape[0]
  if x.dtype == bool:
    return np.concatenate([x, np.zeros((extra,) + x.shape[1:], bool)])
  return np.concatenate([x, np.repeat(x[-1:], extra, 0)])


def place(a, row):
  """Puts the inputs of ``row`` where this mode's user would."""
  if ARGS.mode == "single":
    return {k: jax.numpy.asarray(v) for k, v in a.items()}, N
  # Inputs without a pool axis stay plain arrays (replicated by alfx).
  replicated = {k: jax.numpy.asarray(a.pop(k)) for k in cases.REPLICATED}
  if ARGS.mode == "devices4":
    names = list(a)
    pool = alfx.shard_pool(*(a[k] for k in names))
    placed = dict(zip(names, pool.arrays), **replicated)
    if row.in_pool:
      placed["in_pool"] = pool.in_pool
    return placed, pool.arrays[0].shape[0]
  # multiprocess: each process holds a contiguous block of the padded rows.
  devices = jax.device_count()
  n_pad = -(-N // devices) * devices
  rows = n_pad // jax.process_count()
  mesh = jax.make_mesh((devices,), ("pool",))
  sharding = NamedSharding(mesh, P("pool"))
  lo = jax.process_index() * rows
  host = {k: pad_rows(v, n_pad) for k, v in a.items()}
  if row.in_pool:
    host["in_pool"] = np.arange(n_pad) < N
  return {
    **{
      k: jax.make_array_from_process_local_data(sharding, v[lo : lo + rows])
      for k, v in host.items()
    },
    **replicated,
  }, n_pad


def fetch(x):
  """A host copy of a (replicated, or sharded) result on every process."""
  if ARGS.mode == "multiprocess" and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  if isinstance(x, jax.Array) and x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def _hlo_files():
  if not os.path.isdir(_HLO_DIR):
    return set()
  return {
    f for f in os.listdir(_HLO_DIR) if f.endswith("after_optimizations.txt")
  }


def _new_programs(seen, n_pad):
  """The sharded programs compiled since ``seen``: their number, their
  collectives and their pool-sized all-gathers. Deletes the dump files
  (large, read once)."""
  found, programs, collectives = [], 0, 0
  for f in sorted(_hlo_files() - seen):
    with open(os.path.join(_HLO_DIR, f)) as fh:
      text = fh.read()
    programs += 1
    collectives += sum(
      text.count(op)
      for op in ("all-reduce(", "all-gather(", "collective-permute(")
    )
    found += [f"{f}: {line}" for line in _sharding.pool_gathers(text, n_pad)]
  for f in os.listdir(_HLO_DIR) if os.path.isdir(_HLO_DIR) else ():
    try:
      os.remove(os.path.join(_HLO_DIR, f))
    except OSError:
      pass
  return dict(programs=programs, collectives=collectives, pool_gathers=found)


def run_rows(rows):
  for row in rows:
    meta = {"mode": ARGS.mode}
    start = time.perf_counter()
    try:
      a, key = row_inputs(row)
      a, n_pad = place(a, row)
      meta["n_pad"] = n_pad
      seen = _hlo_files()
      sel = row.call(a, B, key)
      out = {f: fetch(getattr(sel, f)) for f in ("indices", "valid", "scores")}
      if ARGS.mode == "devices4":
        meta.update(_new_programs(seen, n_pad))
      if WRITER:
        np.savez(os.path.join(ARGS.out, f"{row.name}.npz"), **out)
    except Exception as e:  # pylint: disable=broad-except
      # Every process raises the same (same inputs, same program).
      if WRITER:
        with open(os.path.join(ARGS.out, f"{row.name}.error"), "w") as fh:
          fh.write(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
    meta["seconds"] = time.perf_counter() - start
    if WRITER:
      with open(os.path.join(ARGS.out, f"{row.name}.json"), "w") as fh:
        json.dump(meta, fh)
    print(f"{row.name}: {meta['seconds']:.1f}s", file=sys.stderr, flush=True)


def main():
  os.makedirs(ARGS.out, exist_ok=True)
  rows = cases.all_rows()
  if ARGS.rows != "all":
    wanted = set(filter(None, ARGS.rows.split(",")))
    unknown = wanted - {r.name for r in rows}
    if unknown:
      raise SystemExit(f"unknown rows {sorted(unknown)}")
    rows = [r for r in rows if r.name in wanted]
  run_rows(rows)
  from tests import sharded_public  # pylint: disable=g-import-not-at-top

  extras = sharded_public.run(
    ARGS.mode,
    cases.seed("extras"),
    None
    if ARGS.extras == "all"
    else tuple(filter(None, ARGS.extras.split(","))),
  )
  if WRITER:
    with open(os.path.join(ARGS.out, "extras.json"), "w") as fh:
      json.dump(extras, fh)
    with open(os.path.join(ARGS.out, "done"), "w") as fh:
      fh.write("ok\n")


if __name__ == "__main__":
  main()

"""``benchmarks/bait.py``'s FLOP count follows the code that it counts.

`terms` lists one `alfx.bait` call's FLOPs term by term (`count` sums
them). The small solves' counts are checked against the operations of the
traced code; the whole list against XLA's ``cost_analysis`` of the compiled
call at a small shape, where every chunked pass is one chunk and XLA counts
each loop body once (``loops_once=True``).
"""

import functools
import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bait_family import _blocks
from alfx.bait_family import _greedy

ROOT = pathlib.Path(__file__).resolve().parent.parent
_ARITHMETIC = {"add", "sub", "mul", "div", "sqrt", "rsqrt", "neg"}


@functools.cache
def _bench():
  sys.path.insert(0, str(ROOT / "benchmarks"))  # bait.py imports harness
  spec = importlib.util.spec_from_file_location(
    "bait_benchmark", ROOT / "benchmarks" / "bait.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _eqns(jaxpr):
  """The equations of ``jaxpr`` and of the ``jit``s it calls (not the
  solves inside ``custom_linear_solve``, which holds two of them)."""
  for eqn in jaxpr.eqns:
    if "jaxpr" in eqn.params:
      yield from _eqns(eqn.params["jaxpr"].jaxpr)
    else:
      yield eqn


def test_unrolled_solve_count_is_its_arithmetic():
  bench = _bench()
  for r in (2, 5, 10):
    s = jnp.eye(r)[None] * 2.0
    jaxpr = jax.make_jaxpr(_greedy._trace_solve_unrolled)(s, s).jaxpr
    ops = sum(
      e.outvars[0].aval.size
      for e in _eqns(jaxpr)
      if e.primitive.name in _ARITHMETIC
    )
    assert ops == bench._trace_solve(r) - r * r, r  # less S = U + I


def test_blocked_inverse_count_is_its_products_and_leaves():
  bench = _bench()
  for m in (12, 25, 100):
    jaxpr = jax.make_jaxpr(_blocks.spd_inverse)(jnp.eye(m)[None]).jaxpr
    traced = 0
    for e in _eqns(jaxpr):
      if e.primitive.name == "dot_general":
        (contract, _), _ = e.params["dimension_numbers"]
        shape = e.invars[0].aval.shape
        traced += (
          2 * e.outvars[0].aval.size * np.prod([shape[i] for i in contract])
        )
      elif e.primitive.name == "lu":  # a leaf: LU, two triangular solves
        traced += bench._lu(e.invars[0].aval.shape[-1])
    assert traced == pytest.approx(bench._spd_inverse(m)), m


def _inputs(n, dim, c, lab):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  emb = jax.random.normal(k1, (n, dim))
  probs = jax.nn.softmax(2 * jax.random.normal(k2, (n, c)), -1)
  pick = jax.random.choice(k3, n, (lab,), replace=False)
  return emb, probs, jnp.zeros((n,), bool).at[pick].set(True)


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return cost["flops"]


@pytest.mark.parametrize(
  "kind, method, dim, c, cap",
  [("full", "structured", 64, 20, 32), ("full", "dense", 16, 10, None)],
)
def test_count_matches_xla_cost_analysis(kind, method, dim, c, cap):
  """Within 10% of XLA's count, which has every elementwise operation that
  `terms` leaves out and none of the LAPACK calls (measured: 0.95 and 0.92
  of `terms`, pool_fisher 1.01 and 1.07)."""
  n, lab, b = 500, 20, 10
  emb, probs, labeled = _inputs(n, dim, c, lab)
  fisher = functools.partial(alfx.pool_fisher, fisher=kind, method=method)
  stats = jax.jit(fisher)(emb, probs)

  def given(e, p, l, s):
    return alfx.bait(
      e,
      p,
      b,
      labeled=l,
      fisher=kind,
      method=method,
      pool_fisher=s,
      labeled_capacity=cap,
    )

  terms = _bench().terms(
    kind, method, n, dim, c, b=b, lab=lab, cap=cap, loops_once=True
  )
  ours = {"pool_fisher": 0.0, "bait": 0.0}
  for phase, _, flops in terms:
    ours["pool_fisher" if phase == "pool_fisher" else "bait"] += flops
  assert _xla_flops(fisher, emb, probs) == pytest.approx(
    ours["pool_fisher"], rel=0.1
  )
  assert _xla_flops(given, emb, probs, labeled, stats) == pytest.approx(
    ours["bait"], rel=0.1
  )


@pytest.mark.parametrize("once", [False, True], ids=["repeated", "once"])
def test_rows_time_the_call_they_name(once):
  # A tiny topc with three classes kept, timed the way `--once` or the
  # default times it: the row names the options and the path taken, and its
  # floor is that configuration's count.
  bench = _bench()
  run = bench.run_once if once else bench.run_config
  n, dim, c, top_c = 200, 8, 4, 3  # L = 100 of the pool labelled
  row = run("tiny", "topc", n, dim, c, False, top_c, with_eager=False)
  assert row["fisher"] == "topc c=3"
  assert row["method"] == "dense"  # what method='auto' takes here
  assert (row["compiled"] == "-") == once
  flops, _, _ = bench.count("topc", "dense", n, dim, c, top_c)
  assert row["GFLOP"] == f"{flops / 1e9:.0f}"
  assert float(row["ratio"]) > 0
  # Both calls get top_c: bait refuses a PoolFisher made with another one.
  args, _, _, stats_fn, given_fn = bench._calls("topc", n, dim, c, top_c)
  stats = stats_fn(*args[:2])
  assert stats.top_c == top_c
  assert given_fn(*args, stats).valid.all()

"""Benchmark of BAIT and its Fast-Fishing approximations (issue 4).

Shapes: CIFAR-10 (N=50,000, D=384, C=10, L=100 labelled, B=10) for full,
topc (c=2), binary and diagonal; CIFAR-100 (C=100) for topc (c=2 and 5)
and binary, and for full only with ``--only cifar100-full`` (half an hour
on 2 cores); ImageNet (N=1,200,000, D=384, C=1,000) for binary; full and
topc at C=100 with N=5,000. Random embeddings (standard normal) and logits
(2 * standard normal), softmaxed; the labelled set is 100 random points.

Each configuration is timed as a user's jitted active-learning loop runs it:
``jax.jit`` around ``alfx.bait`` with the arrays as arguments (the
concrete-input value checks, one cheap pass over the inputs, are skipped) and
``pool_fisher`` computed inside (column ``compiled``); ``F given`` is the same
call with ``alfx.pool_fisher`` precomputed once per model and passed in (its
own time in ``pool_fisher``). Compiled time is the best of a few runs after a
compiling call; eager time is one call under ``jax.disable_jit()`` (op by op);
peak memory is the resident-set growth during the compiled runs, inputs
excluded (harness.py). The floor is the roofline of the FLOPs and bytes
counted in `count` on this machine's measured peaks. `terms` lists the FLOPs
term by term as the code executes them (``--count`` prints them, no
timing): each names where in ``alfx.bait_family`` it runs. At N=500,
counting each loop body once, their sum is 0.89-1.02 of XLA's
``cost_analysis`` of the compiled call (structured full and topc, dense full
and topc; tests/test_benchmarks_bait.py): XLA counts no LAPACK call (the
dense path's Cholesky of ``M``) but every elementwise operation.

Usage:
  python benchmarks/bait.py            # everything (ImageNet needs ~12 GB)
  python benchmarks/bait.py --quick    # CIFAR-10 shape at N=5,000 only
  python benchmarks/bait.py --only cifar10-full imagenet-binary
  python benchmarks/bait.py --count c100-n5000-full  # FLOPs by term only
  python benchmarks/bait.py --only cifar100-full  # full at C=100, timed once
  python benchmarks/bait.py --once --only cifar100-topc5  # any config once
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

import alfx

F32 = 4
L = 100
B = 10
CAPACITY = 128  # static bound on the labelled set (structured path, jit)
# alfx.bait_family._blocks: the default working set (floats) of a chunk
CHUNK_FLOATS = 1 << 24
RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "results", "bait.md"
)

# name: (fisher, N, D, C, eager?[, top_c])
CONFIGS = {
  "cifar10-full": ("full", 50_000, 384, 10, True),
  "cifar10-topc": ("topc", 50_000, 384, 10, True),
  "cifar10-binary": ("binary", 50_000, 384, 10, True),
  "cifar10-diagonal": ("diagonal", 50_000, 384, 10, True),
  "cifar100-topc": ("topc", 50_000, 384, 100, False),
  "cifar100-topc5": ("topc", 50_000, 384, 100, False, 5),
  "cifar100-binary": ("binary", 50_000, 384, 100, True),
  "c100-n5000-full": ("full", 5_000, 384, 100, False),
  "c100-n5000-topc": ("topc", 5_000, 384, 100, True),
  "imagenet-binary": ("binary", 1_200_000, 384, 1_000, False),
}
# Only by --only: each call takes most of an hour on 2 cores, so it is timed
# once (`run_once`).
LONG = {
  "cifar100-full": ("full", 50_000, 384, 100, False),
}
QUICK = {
  "quick-cifar10-full": ("full", 5_000, 384, 10, True),
  "quick-cifar10-topc": ("topc", 5_000, 384, 10, True),
  "quick-cifar10-binary": ("binary", 5_000, 384, 10, True),
  "quick-cifar10-diagonal": ("diagonal", 5_000, 384, 10, True),
}


def make_inputs(n, dim, c, seed=0):
  """Embeddings [n, dim], probs [n, c] (made in chunks), labelled mask."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  emb = jax.random.normal(k1, (n, dim), jnp.float32)
  rows = max(1, min(n, (1 << 26) // c))

  @jax.jit
  def probs_fn(key):
    def one(i):
      logits = 2.0 * jax.random.normal(jax.random.fold_in(key, i), (rows, c))
      return jax.nn.softmax(logits, axis=-1)

    n_chunks = -(-n // rows)
    return jax.lax.map(one, jnp.arange(n_chunks)).reshape(-1, c)[:n]

  probs = probs_fn(k2)
  labeled = (
    jnp.zeros((n,), bool)
    .at[jax.random.choice(k3, n, (L,), replace=False)]
    .set(True)
  )
  return jax.block_until_ready((emb, probs, labeled))


def _chunks(n, per_row, chunk_size=None, most=None):
  """``(rows per chunk, chunks)`` of a pass over ``n`` rows
  (`_blocks.chunk_rows`: the given size, or chunks filled evenly with at
  most a working set of 2^24 floats).

  Every chunk has the same static size and the last one overlaps its
  predecessor (`alfx._core.pool.chunked_map`): ``rows * chunks >= n`` rows
  are computed.
  """
  if chunk_size is not None:
    rows = max(1, min(chunk_size, n))
  else:  # evenly filled chunks of at most the working set
    rows = max(1, min(n, CHUNK_FLOATS // max(per_row, 1)))
    rows = -(-n // -(-n // rows))
  if most is not None:
    rows = min(rows, most)
  return rows, -(-n // rows)


def _sym_rows(dim):
  """``sum_I b_I (D - e_I)`` over `_blocks`' block rows (~64 wide): the
  entries of a ``D x D`` block that a block-triangular product multiplies,
  ``~ D^2 (nb + 1) / (2 nb)``."""
  nb = max(1, round(dim / 64))
  edges = [int(e) for e in np.linspace(0, dim, nb + 1).round()]
  return sum((e1 - e0) * (dim - e0) for e0, e1 in zip(edges[:-1], edges[1:]))


def _lu(m, rhs=None):
  """``jnp.linalg.inv``/``solve`` of ``m x m``: LU, then two triangular
  solves with ``rhs`` (default ``m``) right-hand sides."""
  return 2 * m**3 / 3 + 2 * m * m * (m if rhs is None else rhs)


def _spd_inverse(m, leaf=12):
  """`_blocks.spd_inverse`: per level, four products of the 2 x 2 blocks
  (``A^-1 B``, ``B^T A^-1 B``, ``A^-1 B S^-1``, that times ``(A^-1 B)^T``:
  ``~ 4 m^3 / 3`` over all levels); LU inverses at the leaves."""
  if m <= leaf:
    return _lu(m)
  h, k = m // 2, m - m // 2
  products = 2 * h * h * k + 2 * k * h * k + 2 * h * k * k + 2 * h * k * h
  return products + _spd_inverse(h, leaf) + _spd_inverse(k, leaf)


def _trace_solve(r, sign=1):
  """`_greedy.trace_solve` of one ``r x r`` pair, by the branch it takes."""
  if r == 1:
    return 2
  if sign < 0:  # S = U - I; LU solve with r right-hand sides, then the trace
    return r * r + _lu(r) + r
  if r > 12:  # S^-1 by `_blocks.spd_inverse` (leaves of 16), sum(S^-1 * W)
    return r * r + _spd_inverse(r, 16) + 2 * r * r
  # `_greedy._trace_solve_unrolled`, operation by operation: S = U + I, the
  # Cholesky (a rsqrt per column), M = L^-1 row by row, sum_k m_k^T W m_k
  # over the upper triangle of W, doubled.
  chol = sum((r - j) * (2 * j + 1) for j in range(r))
  inverse = sum(2 * (k - j) + 1 for k in range(r) for j in range(k))
  quad = sum(4 + 2 * (k - i) for k in range(r) for i in range(k + 1))
  return r * r + chol + inverse + quad + 1


def _update(r):
  """`_greedy.greedy`'s whitened forward update of one ``U_n, W_n``: ``U - a
  a^T``, ``W - x - x^T`` with ``x = a e^T``."""
  return 4 * r**3 + 3 * r * r


def terms(
  kind,
  method,
  n,
  dim,
  c,
  top_c=2,
  oversample=2,
  b=B,
  lab=L,
  cap=CAPACITY,
  chunk_size=None,
  loops_once=False,
):
  """The FLOPs of one `alfx.bait` call, term by term, as the code runs them.

  Returns ``[(phase, what, flops)]``. ``phase``: ``'pool_fisher'`` (what
  `alfx.pool_fisher` computes; skipped when it is passed in), ``'setup'``,
  ``'forward'`` (every forward step) or ``'backward'``. ``what`` names the
  place in ``alfx.bait_family`` that runs it. Products count 2 FLOPs a
  multiply-add, in the order ``jnp.einsum`` contracts them and with no
  symmetry that the code does not use, over the rows that the chunked
  passes compute (their last chunk overlaps). Left out: terms below ``N C
  r`` or ``N D`` (picks, gathers, the rotation of the embeddings, the class
  factors, scaling by ``s``) and the SVD of the ``R x R`` matrix ``T``.

  ``loops_once``: each ``lax.scan``/``fori_loop`` body once (one forward and
  one backward step, one history block each, one chunk of the labelled
  Gram), as XLA's ``cost_analysis`` counts a compiled program; for checking
  against it at shapes where every chunked pass is one chunk.
  """
  out = []

  def add(phase, what, flops):
    out.append((phase, what, float(flops)))

  def rows(per_row, most=None):  # rows a chunked pass computes
    chunk, chunks = _chunks(n, per_row, chunk_size, most)
    return chunk * chunks

  steps = oversample * b  # forward steps; the backward drops (o - 1) b
  n_back = (oversample - 1) * b
  if loops_once:
    steps_run, back_run = 1, min(1, n_back)
  else:
    steps_run, back_run = steps, n_back
  if method == "diagonal":
    fisher = 2 * n * c * dim
    add("pool_fisher", "diag(F)", fisher)
    add("setup", "diag(M)", fisher)
    # x and F/M x/(M + x): mul, mul, add, mul, add
    add("forward", "elementwise gains and updates", steps * 5 * n * c * dim)
    return out
  # dense drops the class null space 1_C of full/topc (C_f = C - 1); r
  # columns per point (full: C, topc: top_c, binary: 1).
  dense = method == "dense"
  c_f = 1 if kind == "binary" else (c - 1 if dense else c)
  r = {"full": c, "topc": top_c, "binary": 1}[kind]
  d = c_f * dim
  t_c = c_f * (c_f + 1) // 2
  sym = _sym_rows(dim)
  # _greedy.greedy: history slots, applied in blocks of ~128 rows, only the
  # blocks already written (a loop bounded by the step).
  per_block = max(1, -(-128 // r))

  def slots(t):
    return (1 if loops_once else -(-t // per_block)) * per_block

  history_slot = (
    4 * r * d  # directions: Z_k^T X_j, Y_k^T X_j (slot . h_j ...)
    + 4 * r * r * c_f  # ... then . a_j
    + 6 * r**3  # s_ztx, W_k s_ztx, y_coef: r x r products
    + 6 * r * r * d  # from_z [2r, r] and from_y [r, r] times the slot
  )
  # commit: Z^T X_j, Y^T X_j, then S^-1 (jnp.linalg.inv)
  commit = 4 * r * d + 4 * r * r * c_f + _lu(r)
  # forward: whiten, S = L L^T, L^-1 [Z^T | Y^T], L^-1 W_j L^-T, W~ L^-1 Z^T
  whiten = r**3 / 3 + 2 * r * r * d + 2 * r**3 + 2 * r * r * d

  if dense:
    # _pool_fisher.pool_fisher_core: A_n A_n^T as packed pairs, then
    # _blocks.pool_gram, the upper block triangle of sum_n w_nt h_n h_n^T.
    add("pool_fisher", "class_outer A_n A_n^T", 2 * n * c_f * c_f * r)
    add(
      "pool_fisher", "pool_gram: blocks of F", 2 * rows(t_c * dim) * t_c * sym
    )
    # _dense.dense_setup
    add("setup", "class_outer A_n A_n^T (every row)", 2 * n * c_f**2 * r)
    lab_rows, _ = _chunks(n, t_c * dim, chunk_size, 256)
    lab_chunks = 1 if loops_once else -(-lab // lab_rows)
    add(
      "setup",
      "labeled_gram: blocks of M (whole chunks)",
      2 * lab_chunks * lab_rows * t_c * sym,
    )
    add("setup", "M^-1: Cholesky and cho_solve(I)", d**3 / 3 + 2 * d**3)
    add("setup", "G = M^-1 (F M^-1)", 4 * d**3)
    q_rows = rows(2 * t_c * dim)
    add(
      "setup",
      "quad_forms: h_n^T (M^-1)_ab h_n, h_n^T G_ab h_n",
      2 * q_rows * 2 * t_c * sym + 2 * q_rows * 2 * t_c * dim,
    )
    add("setup", "U_n, W_n = A_n^T (.) A_n", 4 * n * c_f * r * (c_f + r))
    # apply0: M_0^-1 X_j and G_0 X_j, [d, d] . h_j, then . a_j
    apply0 = 4 * d * d + 4 * d * c_f * r
    contraction = 4 * c_f * r * r  # _greedy._contract_factors: A_n^T proj
  else:
    k_at = 1 if kind == "full" else top_c  # atoms per labelled point
    big_r = cap * k_at  # R: the labelled set's Woodbury rank
    f_rows = rows(2 * c * max(big_r, c))  # f_dense, f_kron: pool sums
    pp_rows = rows(2 * c * big_r + 2 * big_r * r)  # per_point
    if kind == "full":
      # pool_fisher_core: F's block-diagonal part, pool_gram of C weights.
      add("pool_fisher", "pool_gram: F_b blocks", 2 * rows(c * dim) * c * sym)
      # _structured.structured_setup: K_a = lam I + Hl^T W_a Hl and K^-1.
      add("setup", "weighted_gram: K blocks", 2 * cap * c * sym)
      add("setup", "spd_inverse of K (C blocks D x D)", c * _spd_inverse(dim))
      add("setup", "kinv_h(hl)", 2 * cap * c * dim * dim)
      kinv_h = 2 * c * dim * dim  # a row h: einsum aij,...j
      kinv_dense = 2 * c * dim * dim  # a column of V [C, D, q]
    else:
      # pool_fisher_core: _structured.topc_pool_quad, the N^2 term.
      add("pool_fisher", "topc_pool_quad: (h_n . h_m)^2", 2 * n * n * dim)
      add("pool_fisher", "topc_pool_quad: A_n^T A_m", 2 * n * n * c * r * r)
      add("pool_fisher", "topc_pool_quad: contraction", 2 * n * n * r**3)
      kinv_h = dim  # K = lam I: divisions
      kinv_dense = c * dim
    add("setup", "E^T K^-1 E", 2 * cap * k_at * c * dim * big_r)
    add("setup", "T = inv(sign I + E^T K^-1 E)", _lu(big_r))
    add(
      "setup",
      "f_dense(Ek) = F K^-1 E (a pool sum)",
      4 * f_rows * dim * c * big_r  # h_m . Ek, then sum_m h_m (.)
      + 4 * f_rows * c * k_at * big_r  # the atoms u_m
      + (2 * c * dim * dim * big_r if kind == "full" else 0),  # F_b Ek
    )
    add("setup", "Ek^T F Ek", 2 * c * dim * big_r**2)
    add("setup", "K^-1 F Ek", kinv_dense * big_r)
    # per_point: ex = Ek^T X_n, c_n = T ex_n, X_n^T K^-1 X_n, U_n, W_n
    if kind == "full":
      ex = 2 * pp_rows * dim * c * big_r + 2 * pp_rows * c * big_r * r
      # _blocks.quad_forms of the 2C blocks [K_a^-1 | K_a^-1 F_b K_a^-1]
      # (one GEMM per block row), after the C products K^-1 F_b K^-1.
      add("setup", "K_a^-1 F_b K_a^-1 (C blocks D x D)", 4 * c * dim**3)
      q_rows = rows(2 * c * dim)
      kq = 2 * q_rows * 2 * c * sym + 2 * q_rows * 2 * c * dim
      label = "quad forms h_n^T [K_a^-1 | K_a^-1 F_b K_a^-1] h_n"
    else:  # K = lam I: h_n . h_l / lam, then the atoms
      ex = 2 * pp_rows * dim * cap + 2 * pp_rows * cap * k_at * c * r
      kq = 2 * n * dim
      label = "h_n . h_n / lam"
    add("setup", "per_point: Ek^T X_n", ex)
    add("setup", label, kq)
    add("setup", "per_point: c_n = T ex_n", 2 * pp_rows * big_r**2 * r)
    add("setup", "per_point: X_n^T K^-1 X_n", 2 * pp_rows * c * r * r)
    if kind == "full":
      add(
        "setup", "per_point: X_n^T K^-1 F_b K^-1 X_n", 2 * pp_rows * c * r * r
      )
    add("setup", "per_point: U_n", 2 * pp_rows * big_r * r * r)
    add(
      "setup",
      "per_point: X_n^T K^-1 F Ek c_n",
      2 * pp_rows * dim * c * big_r  # h_n . K^-1 F Ek (a GEMM)
      + 2 * pp_rows * c * big_r * r
      + 2 * pp_rows * big_r * r * r,
    )
    add(
      "setup",
      "per_point: c_n^T Ek^T F Ek c_n",
      2 * pp_rows * big_r**2 * r + 2 * pp_rows * big_r * r * r,
    )
    if kind == "full":
      # _full_kfk: coef sum_m v_nm v_nm^T over the pool, h_n^T K_a^-1 h_m by
      # _kernel (Woodbury through the labelled rows) when cap < D.
      k_rows = rows(n * (c + r) + c * dim)
      if cap < dim:
        add("setup", "_kernel: Q_a (C blocks cap x cap)", c * _spd_inverse(cap))
        add("setup", "_kernel: h_n . h_m (N^2)", 2 * k_rows * n * dim)
        add("setup", "_kernel: g_n^T Q_a g_m (N^2)", 2 * k_rows * n * c * cap)
        add(
          "setup",
          "_kernel: g_n = Hl h_n, g_n^T Q_a",
          2 * k_rows * cap * dim + 2 * k_rows * c * cap * cap,
        )
        # Hl h_m of the whole pool: loop-invariant, XLA computes it once
        # (hoisted out of the chunks' loop; seen in the compiled HLO)
        add("setup", "_kernel: Hl h_m (once)", 2 * n * cap * dim)
      else:
        add("setup", "K^-1 h_n . h_m (N^2)", 2 * k_rows * n * c * dim)
      # w_nm = p_m k_nm, its mean over classes, v_nm (and _kernel's difference)
      elementwise = 6 if cap < dim else 5
      add(
        "setup", "w_nm, v_nm: elementwise (N^2)", elementwise * k_rows * n * c
      )
      add("setup", "sum_m v_nm v_nm^T (N^2)", 2 * k_rows * n * r * r)
    # apply0: M_0^-1 X_j and G_0 X_j from Ek, T and F Ek (every step)
    apply0 = (
      kinv_h  # g = K_a^-1 h_j
      + 2 * c * dim * big_r  # Ek^T X_j
      + 8 * c * dim * big_r * r  # Ek c_j, F Ek c_j, Ek^T v, Ek coef
      + 2 * f_rows * dim * c  # f_kron: h_m . g_a over the pool
      + 4 * f_rows * c * k_at * r  # f_kron: the atoms' coefficients
      + 2 * f_rows * dim * c * r  # f_kron: sum_m h_m coef_m (a GEMM)
      + kinv_dense * r  # minv_dense: K^-1 v
      + (2 * c * dim * dim if kind == "full" else 0)  # F_b K^-1 X_j
    )
    # pool_update's A_n^T proj: full's factors give s sqrt(p) (x - p^T x)
    contraction = 8 * c * r + 2 * c if kind == "full" else 4 * c_f * r * r

  # _greedy.greedy's forward steps; the gains once before them and then in
  # each step's pool_update, chunk by chunk.
  gains = (steps_run + 1) * n * _trace_solve(r)
  add("forward", "gains: trace_solve", gains)
  add("forward", "directions: apply0", steps_run * apply0)
  add(
    "forward",
    "directions: history slots",
    sum(slots(t) for t in range(steps_run)) * history_slot,
  )
  add("forward", "commit, whiten", steps_run * (commit + whiten))
  u_rows = rows(4 * c_f * r + 4 * r * r)
  add(
    "forward",
    "pool_update: h_n^T [Z | Y] (a GEMM)",
    steps_run * 4 * u_rows * dim * c_f * r,
  )
  add("forward", "pool_update: A_n^T proj", steps_run * u_rows * contraction)
  add("forward", "pool_update: Woodbury", steps_run * u_rows * _update(r))
  # Backward steps (_drops): the picks' P x P blocks of r x r, formed once
  # from the forward history (V_s^T X_p for V = Z, Y; S_s^-1 and W_s times
  # them; two GEMMs over (s, i)), then one Woodbury update of every block per
  # drop. Unused without drops: XLA removes it.
  p = steps
  if n_back:
    add(
      "backward",
      "pick_blocks: Z_s^T X_p, Y_s^T X_p",
      4 * p * p * r * d + 4 * p * p * c_f * r * r,
    )
    add("backward", "pick_blocks: S_s^-1, W_s products", 4 * p * p * r**3)
    add("backward", "pick_blocks: sums over s (GEMMs)", 6 * p**3 * r**3)
  add("backward", "drop values", back_run * steps * _trace_solve(r, -1))
  add(
    "backward",
    "drop_pick: every pick's blocks",
    back_run * (_lu(r) + 4 * p * r**3 + 4 * p * p * r**3),
  )
  return out


def count(kind, method, n, dim, c, top_c=2, oversample=2, b=B, lab=L):
  """(FLOPs, bytes, divisions) of one `alfx.bait` call with `pool_fisher`
  computed in it (`terms`: the FLOPs term by term)."""
  flops = sum(
    f for _, _, f in terms(kind, method, n, dim, c, top_c, oversample, b, lab)
  )
  steps = oversample * b
  h_bytes = n * dim * F32
  if method == "diagonal":
    bytes_ = 2 * h_bytes + steps * n * (c + dim) * F32
    # One division per element and step, counted at the measured x log x
    # rate (the division runs on the same vector units, at a similar rate).
    return flops, bytes_, steps * n * c * dim
  r = {"full": c, "topc": top_c, "binary": 1}[kind]
  # Per step: h again and U_n, W_n read and written.
  if method == "dense":
    c_f = 1 if kind == "binary" else c - 1
    d = c_f * dim
    bytes_ = (
      3 * h_bytes
      + 4 * d * d * F32  # F, quad pass; M^-1, G
      + steps * (h_bytes + 4 * n * r * r * F32)
    )
  else:
    bytes_ = 4 * h_bytes + steps * (h_bytes + 4 * n * r * r * F32)
  return flops, bytes_, 0


def print_terms(name, kind, n, dim, c, top_c=2):
  """`terms` of a configuration as a table, by phase."""
  emb = jax.ShapeDtypeStruct((n, dim), jnp.float32)
  probs = jax.ShapeDtypeStruct((n, c), jnp.float32)
  method = jax.eval_shape(
    functools.partial(alfx.pool_fisher, fisher=kind, top_c=top_c), emb, probs
  ).method
  rows = terms(kind, method, n, dim, c, top_c)
  total = sum(f for _, _, f in rows)
  shown = f" top_c={top_c}" if kind == "topc" else ""
  print(f"\n{name}: {kind}{shown}, {method}, N={n} D={dim} C={c} L={L} B={B}")
  for phase in ("pool_fisher", "setup", "forward", "backward"):
    part = [(w, f) for p, w, f in rows if p == phase]
    print(f"  {phase}: {sum(f for _, f in part) / 1e9:,.1f} GFLOP")
    for what, flops in part:
      print(f"    {what:50s} {flops / 1e9:12,.1f}")
  print(f"  total: {total / 1e9:,.1f} GFLOP")


def _calls(kind, n, dim, c, top_c):
  """Inputs, path and the three jitted calls of a configuration: `alfx.bait`
  with ``pool_fisher`` computed inside, ``alfx.pool_fisher`` alone, and
  `alfx.bait` with it given."""
  emb, probs, labeled = make_inputs(n, dim, c)
  # The path method='auto' takes: PoolFisher.method (static), read off the
  # traced output types (nothing is computed).
  pool_fisher = functools.partial(alfx.pool_fisher, fisher=kind, top_c=top_c)
  method = jax.eval_shape(pool_fisher, emb, probs).method
  capacity = CAPACITY if method == "structured" else None
  options = dict(fisher=kind, top_c=top_c, labeled_capacity=capacity)
  fn = jax.jit(lambda e, p, l: alfx.bait(e, p, B, labeled=l, **options))
  stats_fn = jax.jit(pool_fisher)
  given_fn = jax.jit(
    lambda e, p, l, s: alfx.bait(e, p, B, labeled=l, pool_fisher=s, **options)
  )
  return (emb, probs, labeled), method, fn, stats_fn, given_fn


def _header(name, kind, n, dim, c, top_c):
  shown = f", top_c={top_c}" if kind == "topc" else ""
  print(
    f"\n== {name}: fisher={kind}{shown}, N={n}, D={dim}, C={c}, L={L}, B={B}",
    flush=True,
  )


def _work(row, kind, method, n, dim, c, top_c, seconds):
  flops, bytes_, divisions = count(kind, method, n, dim, c, top_c)
  floor = harness.floor_seconds(
    flops=flops, transcendentals=divisions, bytes_moved=bytes_
  )
  row.update(
    {
      "GFLOP": f"{flops / 1e9:.0f}",
      "GB": f"{bytes_ / 1e9:.1f}",
      "floor": harness.fmt_seconds(floor),
      "ratio": f"{seconds / floor:.2f}",
    }
  )
  return row


def _report(row, sel):
  print(row, flush=True)
  print(
    "picks",
    np.asarray(sel.indices),
    "valid",
    bool(np.all(sel.valid)),
    flush=True,
  )
  return row


def run_once(name, kind, n, dim, c, eager, top_c=2, *, with_eager):
  """A `LONG` configuration (or any, with ``--once``): ``alfx.pool_fisher``
  and then `alfx.bait` with it given, each compiled ahead of time (compile
  timed apart) and run once.

  ``compiled`` is not measured (``-``); ``F given`` and ``pool_fisher`` are
  the single runs, and ``first call`` is the compiles plus both runs. The
  ratio is their sum against the floor of the whole call (``pool_fisher``
  included), as `run_config`'s ``compiled`` is.
  """
  del eager, with_eager  # never eager: hours op by op
  _header(name, kind, n, dim, c, top_c)
  args, method, _, stats_fn, given_fn = _calls(kind, n, dim, c, top_c)
  t0 = time.perf_counter()
  stats_compiled = stats_fn.lower(*args[:2]).compile()
  t1 = time.perf_counter()
  stats = harness.block(stats_compiled(*args[:2]))
  t2 = time.perf_counter()
  compiled = given_fn.lower(*args, stats).compile()
  t3 = time.perf_counter()
  print(
    f"pool_fisher: compile {t1 - t0:.1f} s, run {t2 - t1:.1f} s;"
    f" bait: compile {t3 - t2:.1f} s",
    flush=True,
  )
  with harness.PeakMemory() as mem:
    sel = harness.block(compiled(*args, stats))
  run = time.perf_counter() - t3
  row = {
    "config": name,
    "fisher": kind if kind != "topc" else f"topc c={top_c}",
    "method": method,
    "N x D x C": f"{n} x {dim} x {c}",
    "compiled": "-",
    "first call": harness.fmt_seconds(t3 - t0 + run),
    "pool_fisher": harness.fmt_seconds(t2 - t1),
    "F given": harness.fmt_seconds(run),
    "eager": "-",
    "peak mem": harness.fmt_bytes(mem.peak_bytes),
  }
  return _report(_work(row, kind, method, n, dim, c, top_c, run + t2 - t1), sel)


def run_config(name, kind, n, dim, c, eager, top_c=2, *, with_eager):
  _header(name, kind, n, dim, c, top_c)
  args, method, fn, stats_fn, given_fn = _calls(kind, n, dim, c, top_c)
  emb, probs, labeled = args
  repeats = 1 if n * c > 20_000_000 or method == "structured" else 3
  best, first, peak = harness.time_compiled(
    fn, emb, probs, labeled, repeats=repeats
  )
  sel = fn(emb, probs, labeled)
  stats_t, _, _ = harness.time_compiled(stats_fn, emb, probs, repeats=repeats)
  stats = stats_fn(emb, probs)
  given_t, _, _ = harness.time_compiled(
    given_fn, emb, probs, labeled, stats, repeats=repeats
  )
  eager_t = None
  if with_eager and eager:
    eager_t = harness.time_eager(fn, emb, probs, labeled)
  row = {
    "config": name,
    "fisher": kind if kind != "topc" else f"topc c={top_c}",
    "method": method,
    "N x D x C": f"{n} x {dim} x {c}",
    "compiled": harness.fmt_seconds(best),
    "first call": harness.fmt_seconds(first),
    "pool_fisher": harness.fmt_seconds(stats_t),
    "F given": harness.fmt_seconds(given_t),
    "eager": harness.fmt_seconds(eager_t)
    if eager_t
    else ("skipped" if with_eager else "-"),
    "peak mem": harness.fmt_bytes(peak),
  }
  return _report(_work(row, kind, method, n, dim, c, top_c, best), sel)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-eager", action="store_true")
  parser.add_argument("--only", nargs="*")
  parser.add_argument("--out", default=None)
  parser.add_argument(
    "--once",
    action="store_true",
    help="time every config as the long ones are (`run_once`)",
  )
  parser.add_argument(
    "--count", nargs="+", metavar="CONFIG", help="print the FLOPs by term"
  )
  args = parser.parse_args()
  if args.count:
    for name in args.count:
      spec = {**CONFIGS, **LONG, **QUICK}[name]
      print_terms(name, *spec[:4], *spec[5:])
    return
  configs = QUICK if args.quick else CONFIGS
  if args.only:
    every = {**CONFIGS, **LONG, **QUICK}
    unknown = sorted(set(args.only) - set(every))
    if unknown:
      parser.error(f"unknown configs {unknown}; known: {sorted(every)}")
    configs = {k: v for k, v in every.items() if k in args.only}
  print(harness.machine_description(), flush=True)
  rows = [
    (run_once if args.once or name in LONG else run_config)(
      name, *spec, with_eager=not args.no_eager
    )
    for name, spec in configs.items()
  ]
  columns = [
    "config",
    "fisher",
    "method",
    "N x D x C",
    "compiled",
    "first call",
    "pool_fisher",
    "F given",
    "eager",
    "peak mem",
    "GFLOP",
    "GB",
    "floor",
    "ratio",
  ]
  table = harness.print_table(rows, columns)
  out = args.out or (None if args.only or args.quick else RESULTS)
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
      f.write(f"Machine: {harness.machine_description()}\n\n{table}\n")


if __name__ == "__main__":
  main()

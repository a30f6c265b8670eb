"""k-EPIG with sampled target labels (``kepig(..., target_label_samples=S)``).

The increment tables keep the ``C**u`` configurations of the conditioning
labels and draw ``S`` target labels per row from ``p(y* | y_V, x*_m)``
(`alfx.bald_family._epig_tables.draw_target_labels`, `labelled_gain_table`).
Checked here, in float64 on fresh random inputs:

* the sampled table's kernel value, averaged over many keys, equals the
  exact ``mean_m I[Y_n; Y*_m | Y_V]`` (brute force from `reference_epig`)
  within a few standard errors, and the same check catches two biased
  estimators (labels from the marginal ``p(y* | x*_m)``, the ``1 / S``
  dropped);
* the stratified draws vary no more than independent ones;
* the sampled greedy's batches reach the exact greedy's objective
  ``mean_m I[Y_S; Y*_m]`` (brute force) within a measured tolerance;
* ``target_label_samples=None`` is the exact k-EPIG, bad values and a
  missing key raise, and the registry's ``kepig-2`` passes the option and
  the key on.

The contract's generic properties (jit = eager, vmap over keys and inputs,
float64 out, no recompilation, 4 devices, 2 processes) run on the
``kepig2_sampled`` row of the conformance suite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alfx
from alfx.bald_family import _batchbald as _bald
from alfx.bald_family import _epig_tables as _tables
from alfx.information import _kernels as _information
from tests import reference_epig as ref
from tests.helpers import seed_for

kepig = alfx.kepig


def _log_probs(rng, shape, scale=2.0):
  """Random normalised log-probabilities, float64 NumPy."""
  logits = scale * rng.standard_normal(shape)
  return logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))


# --------------------------------------------------------------------------
# The increment table.


def _conditional_gain(lp, tlp, cond):
  """``mean_m I[Y_n; Y*_m | Y_V]`` of every pool point by enumeration, with
  ``V`` the points of ``cond`` (appended to the pool of the reference)."""
  n, u = len(lp), len(cond)
  problem = ref.Problem(np.concatenate([lp, cond]), tlp)
  v = list(range(n, n + u))
  return np.array(
    [
      np.mean(
        [
          problem.h(v + [i])
          + problem.h(v, t)
          - problem.h(v)
          - problem.h(v + [i], t)
          for t in range(len(tlp))
        ]
      )
      for i in range(n)
    ]
  )


def _kernel(lp, weights, rho, r=None):
  """The table kernel; with ``r``, plus the control variate of a sampled
  table of ``r`` configurations (as k-EPIG adds it)."""
  probs_t, _, _ = _bald.prepare(lp, 64)
  value = _bald.table_entropy(probs_t, weights, rho, chunk_size=64)
  if r is None:
    return value
  return value + _tables.control_variate(probs_t, weights, rho, r, 64)


def _iid_labels(key, weights, tlp, samples):
  """Independent labels from ``p(y* | y_r, x*_m)`` (the unstratified draw)."""
  probs = jnp.einsum("rk,mkc->rmc", weights, jnp.exp(tlp))
  return jax.random.categorical(
    key, jnp.log(probs), axis=-1, shape=(samples,) + probs.shape[:-1]
  ).transpose(1, 2, 0)


def _sampled_values(
  lp, tlp, cond, samples, keys, variant="unbiased", control=True
):
  """The sampled increment (kernel and control variate) for each key:
  ``[keys, N]``.

  ``variant``: "unbiased" (alfx's), "iid" (independent draws), or the
  negative controls "marginal" (labels from ``p(y* | x*_m)``, ignoring the
  conditioning labels) and "no_1/S" (the second rows' ``1 / S`` dropped).
  ``control=False``: the kernel alone (no control variate).
  """
  log_cond = _information.log_joint_table(cond)
  weights, _ = _bald.posterior_table(log_cond)
  r, k = weights.shape

  def one(key):
    if variant == "iid":
      labels = _iid_labels(key, weights, tlp, samples)
    else:
      w = jnp.full_like(weights, 1 / k) if variant == "marginal" else weights
      labels = _tables.draw_target_labels(key, w, tlp, samples)
    table, rho = _tables.labelled_gain_table(log_cond, tlp, labels)
    if variant == "no_1/S":
      rho = rho.at[r:].multiply(samples)
    return _kernel(lp, table, rho, r if control else None)

  return np.asarray(jax.jit(jax.vmap(one))(keys))


def _z_scores(values, exact):
  """``|mean - exact|`` in standard errors of the mean, per pool point."""
  se = values.std(axis=0, ddof=1) / np.sqrt(len(values))
  return np.abs(values.mean(axis=0) - exact) / se


#: Keys per unbiasedness check; 4.5 standard errors over 8 points x 5 cases
#: fails an unbiased estimator with probability ~3e-4 per seed.
_KEYS, _Z = 2_000, 4.5


@pytest.mark.parametrize("u,samples", [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)])
def test_sampled_table_is_unbiased_and_the_check_catches_bias(u, samples):
  """C = 4, M = 5 targets, 8 candidates, ``u`` conditioning labels: the
  mean of the sampled kernel over 2,000 keys is within 4.5 standard errors
  of the brute-force increment for every candidate; labels drawn from the
  marginal, or the ``1 / S`` dropped, miss it by far more."""
  rng = np.random.default_rng(seed_for(f"kepig_sampled_table{u}{samples}"))
  n, k, c, m = 8, 6, 4, 5
  lp, tlp = _log_probs(rng, (n, k, c)), _log_probs(rng, (m, k, c))
  cond = _log_probs(rng, (u, k, c), scale=3.0)
  exact = _conditional_gain(lp, tlp, cond)
  keys = jax.random.split(
    jax.random.key(seed_for(f"keys{u}{samples}") % 2**31), _KEYS
  )
  with jax.enable_x64(True):
    lp, tlp, cond = map(jnp.asarray, (lp, tlp, cond))
    weights, rho = _tables.gain_table(
      _information.log_joint_table(cond), _tables.target_rows(tlp), m
    )
    assert weights.shape == (c**u * (1 + m * c), k)
    np.testing.assert_allclose(
      _kernel(lp, weights, rho), exact, rtol=1e-9, atol=1e-12
    )
    values = _sampled_values(lp, tlp, cond, samples, keys)
    assert values.dtype == np.float64
    z = _z_scores(values, exact)
    assert z.max() < _Z, (z, values.mean(0), exact)
    # The estimate is not exact (there is something to check).
    assert values.std(axis=0).min() > 1e-6
    # Without the control variate (zero-mean): unbiased too.
    z_plain = _z_scores(
      _sampled_values(lp, tlp, cond, samples, keys, control=False), exact
    )
    assert z_plain.max() < _Z, z_plain
    # Negative controls: the same check must reject biased estimators.
    z_marginal = _z_scores(
      _sampled_values(lp, tlp, cond, samples, keys, "marginal"), exact
    )
    assert z_marginal.max() > _Z, z_marginal
    if samples > 1:
      z_scale = _z_scores(
        _sampled_values(lp, tlp, cond, samples, keys, "no_1/S"), exact
      )
      assert z_scale.max() > _Z, z_scale


def test_stratified_labels_vary_no_more_than_independent_ones(rng):
  """With ``S >= 2`` the stratified draws (one in each ``1 / S`` stratum of
  the CDF) give a kernel value whose variance over keys is at most that of
  independent draws (plus 10% for the noise of the variance estimates),
  summed over the candidates."""
  n, k, c, m = 8, 6, 4, 5
  lp, tlp = _log_probs(rng, (n, k, c)), _log_probs(rng, (m, k, c))
  cond = _log_probs(rng, (1, k, c), scale=3.0)
  keys = jax.random.split(jax.random.key(0), _KEYS)
  with jax.enable_x64(True):
    lp, tlp, cond = map(jnp.asarray, (lp, tlp, cond))
    for samples in (2, 3):
      strat = _sampled_values(lp, tlp, cond, samples, keys).var(0).sum()
      iid = _sampled_values(lp, tlp, cond, samples, keys, "iid").var(0).sum()
      assert strat <= 1.1 * iid, (samples, strat, iid)


def test_control_variate_reduces_the_variance():
  """The control variate (`_epig_tables.control_variate`) removes the
  first-order fluctuation of the sampled rows: over 4 random problems
  (``u = 1``, ``S = 1``) the summed variance of the increments over keys
  drops by at least 25% (measured: 1.5-4x per problem)."""
  n, k, c, m = 8, 6, 4, 5
  keys = jax.random.split(jax.random.key(2), 500)
  with_cv = without = 0.0
  for p in range(4):
    rng = np.random.default_rng(seed_for(f"kepig_control_variate{p}"))
    lp, tlp = _log_probs(rng, (n, k, c)), _log_probs(rng, (m, k, c))
    cond = _log_probs(rng, (1, k, c), scale=3.0)
    with jax.enable_x64(True):
      lp, tlp, cond = map(jnp.asarray, (lp, tlp, cond))
      with_cv += _sampled_values(lp, tlp, cond, 1, keys).var(0).sum()
      without += (
        _sampled_values(lp, tlp, cond, 1, keys, control=False).var(0).sum()
      )
  assert with_cv <= 0.75 * without, (with_cv, without)


def test_draw_target_labels_follows_the_conditional(rng):
  """The stratified draws are distributed as ``p(y* | y_r, x*_m)``: the
  label frequencies over 4,000 keys and the ``S`` draws match it (within 6
  binomial standard deviations per cell); a single stratum does not (the
  check has power)."""
  k, c, m, samples = 5, 4, 3, 3
  tlp = _log_probs(rng, (m, k, c))
  weights = rng.dirichlet(np.ones(k), size=2)  # [R = 2, K]
  keys = jax.random.split(jax.random.key(1), 4_000)
  with jax.enable_x64(True):
    draw = jax.vmap(
      lambda key: _tables.draw_target_labels(
        key, jnp.asarray(weights), jnp.asarray(tlp), samples
      )
    )
    labels = np.asarray(draw(keys))  # [keys, R, M, S]
  assert labels.shape == (4_000, 2, m, samples)
  want = np.einsum("rk,mkc->rmc", weights, np.exp(tlp))
  hits = labels[..., None] == np.arange(c)  # [keys, R, M, S, C]
  freq = hits.mean(axis=(0, 3))  # [R, M, C]
  sd = np.sqrt(want * (1 - want) / (len(keys) * samples))
  assert np.all(np.abs(freq - want) <= 6 * sd + 1e-12), (freq, want)
  first = hits[..., 0, :].mean(axis=0)  # the lowest stratum alone
  assert np.any(np.abs(first - want) > 6 * sd + 1e-12)


# --------------------------------------------------------------------------
# The greedy.


def _objectives(problem, picks):
  return np.array([problem.objective(p) for p in np.asarray(picks)])


#: Largest mean objective gap (sampled vs exact k-EPIG) per (order, S).
#: Measured over 10-12 problems (N = 30, K = 8, C = 4, B = 4, 16 keys
#: each): S = 1 0.3-1.6% (M = 100, 12, 20), S = 3 -0.0-0.6%, order 3 with
#: S = 1 0.1-1.1%, per problem up to 3.4%; top-B EPIG (order 1) misses
#: the exact 2-EPIG's objective by 5% on the same problems, random batches
#: by 20%.
_GAP = {(2, 1): 0.03, (2, 3): 0.015, (3, 1): 0.03}


@pytest.mark.parametrize("order,samples", list(_GAP))
def test_sampled_greedy_reaches_the_exact_objective(order, samples):
  """C = 4, M = 16 targets, N = 30, B = 4 on 8 random problems, 8 keys
  each: the mean objective ``mean_m I[Y_S; Y*_m]`` (brute force) of the
  sampled k-EPIG's batches is within `_GAP` of the exact k-EPIG's, and no
  batch is below 85% of it."""
  n, k, c, m, b = 30, 8, 4, 16, 4

  @jax.jit
  def sampled(lp, tlp, keys):
    return jax.vmap(
      lambda key: kepig(
        lp, tlp, b, key=key, order=order, target_label_samples=samples
      )
    )(keys)

  gaps = []
  for p in range(8):
    rng = np.random.default_rng(seed_for(f"kepig_sampled_greedy{p}"))
    lp, tlp = _log_probs(rng, (n, k, c)), _log_probs(rng, (m, k, c))
    problem = ref.Problem(lp, tlp)
    keys = jax.random.split(jax.random.key(p), 8)
    with jax.enable_x64(True):
      lp64, tlp64 = jnp.asarray(lp), jnp.asarray(tlp)
      exact = kepig(lp64, tlp64, b, order=order)
      sel = sampled(lp64, tlp64, keys)
      assert sel.scores.dtype == jnp.float64
    indices = np.asarray(sel.indices)
    assert np.all(np.asarray(sel.valid))
    assert all(len(set(row)) == b for row in indices.tolist())
    # Step 0 is EPIG, computed exactly.
    np.testing.assert_array_equal(indices[:, 0], exact.indices[0])
    best = problem.objective(np.asarray(exact.indices))
    values = _objectives(problem, indices)
    assert values.min() >= 0.85 * best, (p, values, best)
    gaps.append(1 - values.mean() / best)
  assert np.mean(gaps) <= _GAP[order, samples], gaps


# --------------------------------------------------------------------------
# Exact by default, bad values, the registry.


def test_none_is_the_exact_kepig_and_ignores_the_key(rng):
  lp, tlp = _log_probs(rng, (9, 4, 3)), _log_probs(rng, (3, 4, 3))
  with jax.enable_x64(True):
    plain = kepig(jnp.asarray(lp), jnp.asarray(tlp), 4)
    keyed = kepig(
      jnp.asarray(lp),
      jnp.asarray(tlp),
      4,
      key=jax.random.key(3),
      target_label_samples=None,
    )
  picks, gains = ref.kepig_greedy(lp, tlp, 4, 2)
  for sel in (plain, keyed):
    np.testing.assert_array_equal(sel.indices, picks)
    np.testing.assert_allclose(sel.scores, gains, rtol=1e-9, atol=1e-12)


def test_keys_matter_and_repeat(rng):
  """Equal keys give equal picks and gains; the gains of other keys differ
  (the target labels are drawn from the key)."""
  lp = jnp.asarray(_log_probs(rng, (40, 6, 5)), jnp.float32)
  tlp = jnp.asarray(_log_probs(rng, (10, 6, 5)), jnp.float32)

  def run(seed):
    return kepig(lp, tlp, 5, key=jax.random.key(seed), target_label_samples=1)

  first, again = run(0), run(0)
  np.testing.assert_array_equal(first.indices, again.indices)
  np.testing.assert_array_equal(first.scores, again.scores)
  others = [np.asarray(run(s).scores) for s in range(1, 4)]
  assert any(np.any(o[1:] != np.asarray(first.scores)[1:]) for o in others)
  # Step 0 (EPIG) draws nothing.
  assert all(o[0] == float(first.scores[0]) for o in others)


@pytest.mark.parametrize("bad", [0, -1, 3, 4, 2.5, True, "1", np.float32(1)])
def test_bad_target_label_samples_raise(rng, bad):
  lp, tlp = _log_probs(rng, (8, 3, 3)), _log_probs(rng, (4, 3, 3))
  match = (
    r"target_label_samples=\d+ is not below C=3.*target_label_samples=None"
    if isinstance(bad, int) and not isinstance(bad, bool) and bad >= 3
    else r"target_label_samples must be None .* 1 <= S < C = 3"
  )
  with pytest.raises(ValueError, match=match):
    kepig(lp, tlp, 2, key=jax.random.key(0), target_label_samples=bad)


def test_missing_key_and_large_tables_raise(rng):
  lp, tlp = _log_probs(rng, (8, 3, 3)), _log_probs(rng, (4, 3, 3))
  with pytest.raises(ValueError, match=r"key is required.*jax.random.key"):
    kepig(lp, tlp, 2, target_label_samples=1)
  with pytest.raises(ValueError, match="key must be a PRNG key"):
    kepig(lp, tlp, 2, key=np.zeros(3), target_label_samples=1)
  # order 3, B = 30, C = 10, M = 200: exact tables are far above
  # MAX_CONFIGURATIONS, and so are those of S = 9 (the message names S).
  big, big_t = _log_probs(rng, (40, 2, 10)), _log_probs(rng, (200, 2, 10))
  with pytest.raises(ValueError, match=r"1 \+ M S.*target_label_samples"):
    kepig(
      big, big_t, 30, key=jax.random.key(0), order=3, target_label_samples=9
    )


def test_registry_kepig2_passes_the_option_and_the_key(rng):
  """``get_strategy("kepig-2", target_label_samples=1)``: the targets and
  the labels' key split from the loop's key, as batch-epig does."""
  n = 30
  lp = jnp.asarray(_log_probs(rng, (n, 4, 3)), jnp.float32)
  labeled = jnp.asarray(np.arange(n) < 3)
  mask = jnp.asarray(np.arange(n) % 5 != 4) & ~labeled
  context = alfx.StrategyContext(
    log_probs=lp,
    embeddings=jnp.zeros((n, 2)),
    probs=jnp.exp(lp[:, 0]),
    labeled=labeled,
  )
  key = jax.random.key(11)
  strategy = alfx.get_strategy("kepig-2", num_targets=7, target_label_samples=1)
  got = strategy(context, 4, key=key, mask=mask)
  target_key, label_key = jax.random.split(key)
  targets = alfx.pool_targets(lp, 7, key=target_key, mask=mask)
  want = kepig(lp, targets, 4, key=label_key, mask=mask, target_label_samples=1)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_array_equal(got.scores, want.scores)
  with pytest.raises(ValueError, match="target_label_samples"):
    alfx.get_strategy("kepig-2", target_label_samples=3)(
      context, 4, key=key, mask=mask
    )

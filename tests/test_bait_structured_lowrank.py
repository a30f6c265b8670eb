"""Structured full BAIT's large-``r``, small-capacity branches (issue 18).

The shared shape of reference_bait.py has ``r = C = 4`` and a labelled
capacity above ``D``; these problems take the other branches of the
structured path: ``r > 12`` (the blocked SPD inverse of the gains) and a
capacity below ``D`` (``h_n^T K_a^-1 h_m`` by Woodbury through the labelled
rows). Picks and scores equal the dense float64 reference.
"""

import jax
import jax.numpy as jnp
import numpy as np

from tests import reference_bait as ref

N, D, C, B, CAP = 48, 12, 14, 3, 8


def test_structured_full_small_capacity_large_rank_equals_reference(rng):
  with jax.enable_x64(True):
    for trial in range(3):
      emb, probs, _ = ref.problem(rng, n=N, dim=D, c=C)
      labeled = np.zeros(N, bool)
      labeled[rng.choice(N, (0, 5, CAP)[trial], replace=False)] = True
      lam = float(rng.uniform(0.3, 2.0))
      want = ref.bait(emb, probs, labeled, B, kind="full", lam=lam)
      got = ref.run(
        emb,
        probs,
        labeled,
        B,
        "full",
        "structured",
        jnp.float64,
        lam=lam,
        labeled_capacity=CAP,
      )
      np.testing.assert_array_equal(got.indices, want["indices"])
      np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-9)
      assert got.valid.all()

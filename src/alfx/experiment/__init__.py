"""The main job: an active-learning experiment on real data, reported.

Run ``alfx-experiment`` (or ``python -m alfx.experiment``) with no flags for
the default comparison: scikit-learn's bundled handwritten digits and their
"repeated" variant (each pool image three times with Gaussian noise, the
Repeated-MNIST setting of the BatchBALD paper in miniature), strategies
random, top-k BALD, BatchBALD, 2-BALD, BAIT (full) and BAIT (binary), three
seeds. Every seed runs in the same compiled program (``jax.vmap``), every
round reuses the program compiled for the first. Outputs, in ``--out``:

* ``results.csv``: one row per dataset, strategy, seed and round: labels,
  test accuracy, training loss, acquisition seconds; appended and flushed
  as each round finishes, beside ``run.json`` (the configuration) and
  ``checkpoints/``, so ``--resume`` continues an interrupted run;
* ``learning_curves.png``: test accuracy against labels, mean and spread
  (min to max) over seeds, one line per strategy, one panel per dataset;
* a summary table on stdout: final accuracy, area under the learning curve,
  its paired differences from random and from the best strategy (95%
  bootstrap intervals over seeds), mean acquisition time per round.

Data: ``--data FILE.npz`` runs on your own arrays instead: ``x`` (features
``[N, D]`` or images ``[N, H, W(, C)]``, flattened) and integer ``y``
``[N]``; optional ``x_test``/``y_test`` (else ``--test-fraction`` of the
points is held out). Precomputed embeddings of a frozen backbone with
``--model linear`` is the Fast-Fishing setting (train only the last layer).

Modules (public): `datasets` (the digits and ``.npz`` loaders, also the
examples' data), `models` (the MLP), `run` (every strategy on one dataset),
`report` (CSV, plot, summary table), `durable` (the per-round CSV, the
``run.json`` manifest and the checkpoints behind ``--resume``), `presets`
(the papers' experiments, ``--preset``), `cli` (the flags and `main`).

The scientific libraries the report needs (matplotlib; tqdm for the progress
bar) are imported only here, never by the core library.

May import: `alfx` (the public API), numpy; scikit-learn, Flax, optax,
matplotlib and tqdm only inside the functions that need them.
"""

from alfx.experiment.cli import main

__all__ = ("main",)

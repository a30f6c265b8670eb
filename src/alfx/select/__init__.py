"""``alfx-select``: one acquisition from predictions saved by any framework.

Save the predictions of ``K`` posterior samples (ensemble members, or
MC-dropout passes with consistent masks) for the ``N`` pool points with
NumPy, from PyTorch, TensorFlow or anything else, and pick a batch::

  alfx-select --log-probs preds.npy --labeled labeled.npy \\
      --strategy batchbald --batch-size 10 --out picks.csv

(or ``python -m alfx.select ...``). Predictions are ``--log-probs``,
``--probs`` or ``--logits``, ``[N, K, C]`` (``--layout KNC`` for samples
first) or ``[N, C]`` for one model; BAIT, BADGE, CoreSet and TypiClust also
need ``--embeddings [N, D]``; the EPIG strategies take target inputs'
predictions with ``--targets [M, K, C]`` (default: drawn from the pool).
``--labeled`` and ``--mask`` take a boolean mask or indices. The output is
the valid picks in pick order with their scores, as CSV
(``rank,index,score``), JSON or ``.npy``. ``alfx-select --list`` lists the
strategies, ``--help`` every flag.

Memory: a ``.npy`` file (and an uncompressed ``.npz`` member) is
memory-mapped and read once, in chunks, into the float32 array the
acquisition runs on; the command holds no second copy (see
`alfx.select.arrays`; the acquisition's working memory comes on top).

Modules (public): `inputs` (the files), `arrays` (checked JAX arrays from
them), `strategies` (names, options, EPIG with given targets), `cli` (the
flags and `main`). Needs only alfx's core (jax, numpy).

May import: `alfx` (the public API), numpy, jax; nothing from Flax or optax.
"""

from alfx.select.cli import main

__all__ = ("main",)

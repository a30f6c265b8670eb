"""baal's EPIG on saved predictions: the peer side of `epig.py --baal-python`.

Runs in an interpreter that has baal (and torch) installed, which need not
have jax: ``python peers/baal_epig.py DIR``. Reads ``DIR/log_probs.npy``
``[N, K, C]`` and ``DIR/target_log_probs.npy`` ``[M, K, C]`` (alfx's
layout), converts them to baal's ``[N, C, K]`` probabilities (not timed),
times ``baal.active.heuristics.EPIG().compute_score`` (one warm-up call,
then the best of ``repeats``) and writes ``DIR/baal_scores.npy`` and
``DIR/baal.json`` (seconds, versions, threads).

Imports: numpy, torch, baal only.
"""

import json
import os
import sys
import time

import numpy as np


def main(folder: str, repeats: int = 3) -> None:
  from importlib import metadata

  from baal.active.heuristics import EPIG
  import torch

  lp = np.load(os.path.join(folder, "log_probs.npy"))
  tlp = np.load(os.path.join(folder, "target_log_probs.npy"))
  # baal takes probabilities [N, C, K] (numpy; it wraps them in tensors).
  probs = np.ascontiguousarray(np.exp(lp).transpose(0, 2, 1))
  target = np.ascontiguousarray(np.exp(tlp).transpose(0, 2, 1))
  epig = EPIG()
  scores = epig.compute_score(probs, target)  # warm-up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    scores = epig.compute_score(probs, target)
    best = min(best, time.perf_counter() - start)
  np.save(os.path.join(folder, "baal_scores.npy"), np.asarray(scores))
  with open(os.path.join(folder, "baal.json"), "w") as f:
    json.dump(
      {
        "seconds": best,
        "baal": metadata.version("baal"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
      },
      f,
    )


if __name__ == "__main__":
  main(sys.argv[1])

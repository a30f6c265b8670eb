"""Predictions from PyTorch (or plain NumPy) in, picks as NumPy arrays out.

alfx needs no JAX model: it takes the predictions of any framework as
arrays. An ensemble of K small MLPs (random weights, drawn with NumPy)
predicts a pool of N points twice, once in NumPy and once in PyTorch with
the same weights; each set of predictions goes to the same two acquisitions:

* 2-BALD (``alfx.kbald``) on ``log_probs[N, K, C]``, the members' log-softmax;
* BAIT (``alfx.bait``) on member 0's last-layer inputs ``embeddings[N, D]``
  and class probabilities ``probs[N, C]``;

and the picks come back as NumPy arrays. The two paths must pick the same
points. The NumPy path always runs; without torch the script says so and
exits 0.

Run: python docs/examples/from_torch.py
Output: one line ``numpy picks: {json}``, then ``torch picks: {json}`` and
``torch picks == numpy picks``, or ``skipped: torch not installed``.
"""

import importlib.util
import json
import sys

import numpy as np

import alfx

N, D_IN, HIDDEN, C, K = (
  400,
  16,
  32,
  5,
  8,
)  # pool, inputs, width, classes, members
BATCH_SIZE = 10
NUM_LABELED = 20


def make_problem(seed=0):
  """The pool inputs, the first labelled points and K members' weights."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, D_IN))
  weights = [
    (
      rng.normal(size=(D_IN, HIDDEN)) / np.sqrt(D_IN),
      0.1 * rng.normal(size=HIDDEN),
      rng.normal(size=(HIDDEN, C)) * 2 / np.sqrt(HIDDEN),
      0.1 * rng.normal(size=C),
    )
    for _ in range(K)
  ]
  labeled = np.zeros(N, bool)
  labeled[:NUM_LABELED] = True
  return x, weights, labeled


def numpy_predictions(x, weights):
  """log_probs [N, K, C], member 0's embeddings [N, H] and probs [N, C]."""
  log_probs, hidden = [], []
  for w1, b1, w2, b2 in weights:
    h = np.maximum(x @ w1 + b1, 0.0)  # the input of the last layer
    logits = h @ w2 + b2
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs.append(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))
    hidden.append(h)
  log_probs = np.stack(log_probs, axis=1)  # [N, K, C]: samples on axis 1
  return log_probs, hidden[0], np.exp(log_probs[:, 0])


def torch_predictions(x, weights):
  """The same predictions from torch.nn modules holding the same weights."""
  import torch  # pylint: disable=import-outside-toplevel

  inputs = torch.from_numpy(x)
  log_probs, hidden = [], []
  with torch.no_grad():
    for w1, b1, w2, b2 in weights:
      model = torch.nn.Sequential(
        torch.nn.Linear(D_IN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, C),
      ).double()
      model.load_state_dict(
        {
          "0.weight": torch.from_numpy(w1.T),
          "0.bias": torch.from_numpy(b1),
          "2.weight": torch.from_numpy(w2.T),
          "2.bias": torch.from_numpy(b2),
        }
      )
      model.eval()  # deterministic members (an ensemble), no dropout
      h = model[:2](inputs)  # the input of the last linear layer
      log_probs.append(torch.log_softmax(model[2](h), dim=-1))
      hidden.append(h)
    log_probs = torch.stack(log_probs, dim=1)  # [N, K, C]
    probs = torch.exp(log_probs[:, 0])  # member 0's class probabilities
  # Any framework's arrays go in through NumPy (zero-copy for CPU tensors);
  # on a GPU, jax.numpy.from_dlpack(tensor) avoids the host round trip.
  return log_probs.numpy(), hidden[0].numpy(), probs.numpy()


def select(log_probs, embeddings, probs, labeled):
  """The picks of 2-BALD and BAIT, as NumPy arrays (float32 in, as usual)."""
  log_probs, embeddings, probs = (
    np.asarray(a, np.float32) for a in (log_probs, embeddings, probs)
  )
  kbald = alfx.kbald(log_probs, BATCH_SIZE, order=2, mask=~labeled)
  bait = alfx.bait(
    embeddings, probs, BATCH_SIZE, labeled=labeled, fisher="full"
  )
  assert np.asarray(kbald.valid).all() and np.asarray(bait.valid).all()
  return {
    "kbald": np.asarray(kbald.indices).tolist(),
    "bait": np.asarray(bait.indices).tolist(),
  }


def main():
  x, weights, labeled = make_problem()
  numpy_picks = select(*numpy_predictions(x, weights), labeled)
  print("numpy picks:", json.dumps(numpy_picks))
  if importlib.util.find_spec("torch") is None:
    print("skipped: torch not installed (the NumPy path above ran)")
    return 0
  torch_picks = select(*torch_predictions(x, weights), labeled)
  print("torch picks:", json.dumps(torch_picks))
  if torch_picks != numpy_picks:
    print("torch picks != numpy picks", file=sys.stderr)
    return 1
  print("torch picks == numpy picks")
  return 0


if __name__ == "__main__":
  sys.exit(main())

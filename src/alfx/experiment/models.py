"""The experiment's model: a Flax Linen MLP with a linear head.

May import: Flax (inside `make_model` only: the package imports without it).
"""

from typing import Any


def make_model(
  num_classes: int, hidden: tuple[int, ...], dropout: float
) -> Any:
  """A Linen MLP; ``hidden=()`` is a linear model (a last layer only)."""
  import flax.linen as nn

  class MLP(nn.Module):
    """Dense-ReLU(-Dropout) blocks and a linear head named ``head``."""

    widths: tuple[int, ...]
    classes: int
    rate: float

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = x.reshape(x.shape[0], -1)
      for width in self.widths:
        x = nn.relu(nn.Dense(width)(x))
        if self.rate > 0:
          x = nn.Dropout(self.rate, deterministic=not train)(x)
      return nn.Dense(self.classes, name="head")(x)

  return MLP(tuple(hidden), num_classes, dropout)

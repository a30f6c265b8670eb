"""The experiment's models: an MLP, a linear layer, and CNNs for images.

Every model is a Flax Linen module ``model(x[b, ...], train=False) ->
logits[b, C]`` whose last layer is an ``nn.Dense`` named ``head``, so
`alfx.linen_forward` finds the embeddings (the head's input) without a
``head=`` argument, and whose dropout runs only with ``train=True`` (the
stochastic pass of `alfx.linen_forward`: training and MC dropout).

* ``mlp``: Dense-ReLU(-Dropout) blocks of ``hidden`` widths, then the head.
* ``linear``: the head alone (no dropout, so no MC dropout).
* ``cnn``: the MNIST network of the BatchBALD paper (`make_model`).
* ``cifar-cnn``: a small VGG-style network for 32x32x3 images.

The CNNs take images ``[b, H, W, C]`` (channels last); flat points ``[b, D]``
are reshaped to ``image_shape`` first (scikit-learn's digits are
``[b, 64]`` with ``image_shape=(8, 8, 1)``).

May import: Flax (inside `make_model` only: the package imports without it).
"""

from collections.abc import Sequence
from typing import Any

#: The architectures `make_model` builds.
MODEL_NAMES = ("mlp", "linear", "cnn", "cifar-cnn")
#: The architectures that need images (an ``image_shape``).
IMAGE_MODELS = ("cnn", "cifar-cnn")


def has_dropout(
  architecture: str, hidden: Sequence[int] = (), dropout: float = 0.0
) -> bool:
  """Whether the model has a dropout layer that is on at this rate.

  MC dropout needs one: without it the ``K`` "samples" are one prediction
  repeated (BALD is 0 everywhere and the picks are decided by rounding).

  Example:
    >>> from alfx.experiment import models
    >>> models.has_dropout("cnn", dropout=0.5), models.has_dropout("linear")
    (True, False)
  """
  if dropout <= 0 or architecture == "linear":
    return False
  return architecture in IMAGE_MODELS or len(hidden) > 0


def _as_images(x, image_shape, name):
  if x.ndim == 4:
    return x
  if x.ndim == 3:  # [b, H, W]: one channel
    return x[..., None]
  if image_shape is None:
    raise ValueError(
      f"--model {name} needs images [b, H, W, C]; got points of shape"
      f" {list(x.shape[1:])} and no image_shape to reshape them to (pass"
      " image_shape=(H, W, C) to make_model, or use --model mlp)."
    )
  return x.reshape(x.shape[0], *image_shape)


def make_model(
  num_classes: int,
  hidden: Sequence[int] = (),
  dropout: float = 0.0,
  *,
  architecture: str = "mlp",
  image_shape: Sequence[int] | None = None,
) -> Any:
  """A Linen classifier with a linear head named ``head``.

  ``cnn`` is the MNIST network of Kirsch, van Amersfoort and Gal, "BatchBALD:
  Efficient and Diverse Batch Acquisition for Deep Bayesian Active Learning"
  (NeurIPS 2019, arXiv:1906.08158), as in their reference code: two blocks
  of [5x5 convolution (32, then 64 channels), dropout, 2x2 max-pooling,
  ReLU], then a 128-unit dense layer, dropout, ReLU, and the class layer.
  The convolutions' dropout drops whole channels (``Dropout2d``), the dense
  one single units. The channel dropout is applied after the pooling and
  ReLU: scaling a channel by a factor >= 0 commutes with both, so the
  output is the reference order's exactly, while MC dropout's ``K`` copies
  of the activations start from a 4x smaller map. Convolutions are unpadded (``VALID``) when the image is
  at least 16 pixels on each side (MNIST: 28 -> 24 -> 12 -> 8 -> 4, a 1024
  feature map; CIFAR-10: 32 -> 5, 1600), padded (``SAME``) for smaller ones
  such as the 8x8 digits. It takes any channel count, so it also runs on
  CIFAR-10.

  ``cifar-cnn``: two blocks of [two 3x3 convolutions (32, then 64 channels,
  ``SAME``) with ReLU, 2x2 max-pooling, channel dropout], a 128-unit dense
  layer, dropout, ReLU and the class layer: a small network for 32x32x3
  images (a few minutes of training per round on CPU, not a ResNet).

  Dropout is active only with ``train=True`` (training, and the stochastic
  passes of MC dropout); ``dropout=0`` builds the same network without
  dropout layers (what an ensemble uses). For MC dropout `alfx`'s
  `alfx.mc_dropout_predictions` passes each pool point as its own batch of
  one under ``jax.vmap`` with the sample's key, so every point sees the
  same masks within a sample (consistent dropout): no change to the model
  is needed.

  Args:
    num_classes: ``C``, the head's width.
    hidden: ``mlp``'s hidden widths (ignored by the others).
    dropout: the dropout rate, in ``[0, 1)``.
    architecture: one of `MODEL_NAMES`.
    image_shape: ``(H, W, C)`` that flat inputs are reshaped to (CNNs only;
      `alfx.experiment.datasets.Dataset.image_shape`).

  Returns:
    A ``flax.linen.Module``: ``model.apply(variables, x, train=False)``.

  Raises:
    ValueError: an unknown architecture, a rate outside ``[0, 1)``, or a CNN
      on an image too small for it.

  Example:
    >>> import flax.linen as nn
    >>> from alfx.experiment import models
    >>> model = models.make_model(10, dropout=0.5, architecture="cnn",
    ...                           image_shape=(8, 8, 1))
    >>> x = jnp.zeros((3, 64))  # three flat 8x8 digits
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x).shape
    (3, 10)
    >>> forward = alfx.linen_forward(model, train_kwargs={"train": True})
    >>> forward(variables, x, None)[1].shape  # the 128-unit embedding
    (3, 128)
  """
  import flax.linen as nn

  if architecture not in MODEL_NAMES:
    raise ValueError(
      f"unknown model {architecture!r}; valid: {', '.join(MODEL_NAMES)}."
    )
  if not 0 <= dropout < 1:
    raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
  if image_shape is not None:
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
      raise ValueError(
        f"image_shape must be (H, W, C) with positive sizes, got {image_shape}."
      )

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

  def drop(rate, x, train, channels):
    if rate == 0:
      return x
    # Channel dropout (Dropout2d) shares one mask over the spatial axes.
    dims = (1, 2) if channels else ()
    return nn.Dropout(rate, broadcast_dims=dims, deterministic=not train)(x)

  class BatchBALDCNN(nn.Module):
    """The BatchBALD paper's MNIST CNN (see `make_model`)."""

    classes: int
    rate: float
    shape: tuple[int, ...] | None

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = _as_images(x, self.shape, "cnn")
      small = min(x.shape[1:3]) < 16
      for width in (32, 64):
        x = nn.Conv(width, (5, 5), padding="SAME" if small else "VALID")(x)
        x = nn.relu(nn.max_pool(x, (2, 2), strides=(2, 2)))
        # After pooling: a per-channel scale >= 0 commutes with max-pooling
        # and ReLU, so this is the paper's conv-dropout-pool-ReLU exactly,
        # on a tensor 4x smaller (MC dropout's K copies start here).
        x = drop(self.rate, x, train, channels=True)
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(drop(self.rate, nn.Dense(128)(x), train, channels=False))
      return nn.Dense(self.classes, name="head")(x)

  class CifarCNN(nn.Module):
    """A small VGG-style CNN for 32x32x3 images (see `make_model`)."""

    classes: int
    rate: float
    shape: tuple[int, ...] | None

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = _as_images(x, self.shape, "cifar-cnn")
      for width in (32, 64):
        x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = drop(self.rate, x, train, channels=True)
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(drop(self.rate, nn.Dense(128)(x), train, channels=False))
      return nn.Dense(self.classes, name="head")(x)

  if architecture in IMAGE_MODELS and image_shape is not None:
    if min(image_shape[:2]) < 4:
      raise ValueError(
        f"--model {architecture} pools twice by 2: images must be at least"
        f" 4x4, got {image_shape[0]}x{image_shape[1]}."
      )
  if architecture == "cnn":
    return BatchBALDCNN(num_classes, dropout, image_shape)
  if architecture == "cifar-cnn":
    return CifarCNN(num_classes, dropout, image_shape)
  widths = () if architecture == "linear" else tuple(hidden)
  return MLP(widths, num_classes, dropout)

"""A user's own Flax models, as the tests name them: ``own_models:TinyNet`` and so on.

Not a test file: the tests import these by their import path (``tests/`` is on
``sys.path`` in pytest; the tests' subprocesses get it in ``PYTHONPATH``), the way a
user's package would be found. ``TinyNet`` follows the classifier contract of
``docs/contracts.md`` ("Your models") with PyTorch-style names, so that a PyTorch
definition with the same module names converts onto it (``TorchTinyNet`` in
``test_own_teacher.py``); the other classes each break one part of the contract.
"""

import flax.linen as nn
import jax.numpy as jnp

from dfkd_jax import models


class TinyNet(nn.Module):
  """(conv 3x3 -> BatchNorm -> ReLU) x 2 -> global average pool -> linear, any size."""

  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    moments = []
    h = x
    for i in (1, 2):
      h = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, name=f"conv{i}")(h)
      h, m = models.BatchNorm(name=f"bn{i}")(h, train)
      moments.append(m)
      h = nn.relu(h)
    penultimate = h.mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(penultimate)
    if features:
      return logits, models.ClassifierFeatures(penultimate, tuple(moments))
    return logits


def tiny_net(num_classes: int) -> nn.Module:
  """A factory: the same network, half as wide, built by a function."""
  return TinyNet(num_classes, width=8)


class TinyGenerator(nn.Module):
  """z -> linear -> affine-free BatchNorm: images in the teacher's normalised space."""

  latent_dim: int
  image_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, z, train: bool = True):
    h, w, c = self.image_shape
    x = nn.Dense(h * w * c, name="fc")(z).reshape(-1, h, w, c)
    return models.BatchNorm(use_affine=False, name="bn")(x, train)[0]


class WrongLogits(nn.Module):
  """Returns one logit too many."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    return nn.Dense(self.num_classes + 1)(x.reshape(x.shape[0], -1))


class NoTrainFlag(nn.Module):
  """Has no ``train`` argument."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class NoFeatures(nn.Module):
  """Ignores ``features=True`` (the generator losses need the features)."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class _Flat(nn.Module):
  """A linear classifier on the flat image, ``features=True`` as the contract says."""

  num_classes: int

  def logits_and_features(self, x):
    penultimate = x.reshape(x.shape[0], -1)
    logits = nn.Dense(self.num_classes, name="fc")(penultimate)
    return logits, models.ClassifierFeatures(penultimate, ())


class EvalTuple(_Flat):
  """Returns ``(logits, penultimate)`` in eval mode, logits alone in train mode."""

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    logits, feats = self.logits_and_features(x)
    if features:
      return logits, feats
    return logits if train else (logits, feats.penultimate)


class EvalExtraLogit(_Flat):
  """Adds a "background" logit in eval mode only: ``[N, num_classes + 1]``."""

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    logits, feats = self.logits_and_features(x)
    if features or train:
      return (logits, feats) if features else logits
    return jnp.concatenate([logits, jnp.full_like(logits[:, :1], 1e3)], axis=1)


class FixedBatch(nn.Module):
  """Reshapes to the batch of 2 it was written for (a PyTorch ``x.view(2, -1)``)."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    penultimate = x.reshape(2, -1)
    logits = nn.Dense(self.num_classes, name="fc")(penultimate)
    if features:
      return logits, models.ClassifierFeatures(penultimate, ())
    return logits


class FixedBatchGenerator(nn.Module):
  """Reshapes its images to the batch of 2 it was written for."""

  latent_dim: int
  image_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, z, train: bool = True):
    h, w, c = self.image_shape
    return nn.Dense(h * w * c, name="fc")(z).reshape(2, h, w, c)


class PlainClass:
  """Not a Flax module."""

  def __init__(self, num_classes):
    self.num_classes = num_classes


NOT_CALLABLE = 3

"""The VAE of PRE-DFKD (Binici et al., AAAI 2022) for generative pseudo-replay.

As in ``networks/generator.py`` of kuluhan/PRE-DFKD (also in gaurav104/LRA):

* encoder: L2 normalisation of the image along its height axis (``F.normalize(img,
  dim=2)`` on NCHW), ``conv3x3 C->64 -> BN(eps 0.8) -> LeakyReLU(0.2) -> conv3x3 64->128
  -> BN(eps 0.8) -> LeakyReLU(0.2) -> x0.5 nearest -> conv3x3/2 128->128 -> BN -> x0.5
  nearest``, flattened channel-major and mapped by two linear layers to the mean and
  log-variance of ``q(z|x)``;
* decoder: PRE-DFKD's ``MemoryGenerator``, i.e. the DAFL generator
  (:class:`~dfkd_jax.models.generators.DAFLGenerator`) without spectral normalisation.

Weights start ``U(-0.08, 0.08)`` and biases at zero, as in PRE-DFKD.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dfkd_jax.models import conv
from dfkd_jax.models import generators
from dfkd_jax.models import layers

Array = jax.Array


def _lra_conv(features: int, stride: int, name: str) -> conv.Conv2d:
  # models/conv.py's convolution (nn.Conv's parameters and values): XLA:CPU's own kernel
  # gradient is slow inside a loop body, and the VAE trains inside the scanned steps and
  # the replicas' lax.map (issue 27: 8 digits replicas of pre_dfkd ran at 0.01 it/s).
  return conv.Conv2d(features, 3, stride=stride, padding=1,
                     kernel_init=layers.uniform_init(0.08), bias_init=nn.initializers.zeros,
                     name=name)


def _lra_dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=layers.uniform_init(0.08),
                  bias_init=nn.initializers.zeros, name=name)


class Encoder(nn.Module):
  """PRE-DFKD's convolutional encoder to ``(mean, logvar)``.

  Attributes:
    latent_dim: size of ``z``.
  """

  latent_dim: int = 100

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))
    h = x / jnp.maximum(norm, 1e-12)
    h, _ = layers.BatchNorm(0.8, name="bn0")(_lra_conv(64, 1, "conv0")(h), train)
    h = nn.leaky_relu(h, 0.2)
    h, _ = layers.BatchNorm(0.8, name="bn1")(_lra_conv(128, 1, "conv1")(h), train)
    h = nn.leaky_relu(h, 0.2)
    h = h[:, ::2, ::2]  # interpolate(scale_factor=0.5), nearest.
    h, _ = layers.BatchNorm(name="bn2")(_lra_conv(128, 2, "conv2")(h), train)
    h = h[:, ::2, ::2]
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
    return _lra_dense(self.latent_dim, "fc_mu")(h), _lra_dense(self.latent_dim,
                                                                "fc_var")(h)


class VAE(nn.Module):
  """Encoder + DAFL-style decoder.

  Attributes:
    latent_dim: size of ``z``.
    image_shape: ``(H, W, C)``, ``H`` and ``W`` divisible by 8.
  """

  latent_dim: int = 100
  image_shape: tuple[int, int, int] = (32, 32, 3)

  def setup(self):
    h, w, _ = self.image_shape
    if h % 8 or w % 8:
      raise ValueError(f"VAE image_shape {self.image_shape}: H and W must be divisible "
                       "by 8")
    self.encoder = Encoder(self.latent_dim)
    self.decoder = generators.DAFLGenerator(self.latent_dim, tuple(self.image_shape),
                                            spectral_norm=False, lra_init=True)

  def encode(self, x: Array, train: bool = True) -> tuple[Array, Array]:
    """``[N, H, W, C]`` images -> ``(mean, logvar)``, each ``[N, latent_dim]``."""
    return self.encoder(x, train)

  def decode(self, z: Array, train: bool = True) -> Array:
    """``[N, latent_dim]`` codes -> ``[N, H, W, C]`` images."""
    return self.decoder(z, train)

  def __call__(self, x: Array, rng: jax.Array, train: bool = True
               ) -> tuple[Array, Array, Array]:
    """Reconstructs ``x`` through a reparameterised sample ``z ~ q(z|x)``.

    Args:
      x: ``[N, H, W, C]`` images.
      rng: PRNG key for the reparameterisation noise.
      train: BatchNorm uses and updates batch statistics.

    Returns:
      ``(reconstruction, mean, logvar)``.
    """
    mean, logvar = self.encode(x, train)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decode(z, train), mean, logvar

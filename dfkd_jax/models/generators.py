"""Generators of adversarial DFKD: DAFL/LRA, DFAD, MAD, Fast DFKD and NAYER.

* :class:`DAFLGenerator` (``dafl_generator``): the generator of DAFL (Chen et al., 2019)
  as used by LRA (``src/networks/generator.py`` in gaurav104/LRA): ``Linear(latent ->
  128 (H/4)(W/4)) -> BN(128) -> x2 nearest -> conv3x3 128->128 -> BN(128, eps=0.8) ->
  LeakyReLU(0.2) -> x2 nearest -> conv3x3 128->64 -> BN(64, eps=0.8) -> LeakyReLU(0.2) ->
  conv3x3 64->C -> tanh -> BN(C, affine=False)``. PyTorch's ``BatchNorm2d(128, 0.8)``
  passes ``eps=0.8``. LRA wraps the three convolutions in spectral normalisation, so
  ``spectral_norm=True`` is the default here too; weights start ``U(-0.08, 0.08)``,
  biases at zero, as in LRA. The final affine-free BatchNorm puts the images in the
  teacher's normalised input space. 8,423,939 parameters for latent 1000 and 32x32x3.
* ``dfad_generator``: DFAD's ``GeneratorA`` (``network/gan.py`` in
  VainF/Data-Free-Adversarial-Distillation): the same layout with ``eps=1e-5``, no
  spectral normalisation and PyTorch's default initialisation.
* :class:`MADGenerator` (``mad_generator``): MAD (Do et al., NeurIPS 2022) appendix A.4,
  Table 8, for 32, 64 and 256 pixels, fed ``z + e_y`` with a trainable class embedding
  (MAD eq. 6) and returning ``sigmoid(u)``, optionally with the logits ``u`` (eq. 11).
* :class:`FastGenerator` (``fast_generator``): the CIFAR generator of Fast DFKD (Fang et
  al., AAAI 2022; ``Generator`` in ``datafree/models/generator.py`` of
  zju-vipa/Fast-Datafree, built with ``nz=256, ngf=64`` by ``datafree_kd.py``): ``Linear(
  latent -> 2 ngf (H/4)(W/4)) -> BN -> x2 nearest -> conv3x3 (no bias) -> BN ->
  LeakyReLU(0.2) -> x2 nearest -> conv3x3 2ngf->ngf (no bias) -> BN -> LeakyReLU(0.2) ->
  conv3x3 ngf->C -> sigmoid``, PyTorch's default initialisation and BatchNorm (eps
  1e-5): images in ``(0, 1)``, normalised by the trainer with the teacher's mean/std.
* :class:`NoisyLayerGenerator` (``nayer_generator``): NAYER's (Tran et al., CVPR 2024)
  ``NLGenerator``: a class code per row, BatchNorm1d, a noisy layer re-drawn every
  round, then Fast DFKD's generator.

Generators return ``[N, H, W, C]`` images. Spectral-norm power-iteration state and
BatchNorm statistics live in ``batch_stats``; with ``train=True`` call
``apply(..., mutable=["batch_stats"])``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dfkd_jax.models import layers

Array = jax.Array


class DAFLGenerator(nn.Module):
  """DAFL/LRA (and, with other options, DFAD) generator.

  Attributes:
    latent_dim: size of ``z``.
    image_shape: ``(H, W, C)`` of the output; ``H`` and ``W`` divisible by 4.
    base_width: DFAD's ``ngf``; the widths are ``2 * base_width`` and ``base_width``.
    bn_epsilon: eps of the two BatchNorms after the convolutions (0.8 in DAFL/LRA).
    spectral_norm: wrap the convolutions in spectral normalisation (LRA).
    lra_init: ``U(-0.08, 0.08)`` weights and zero biases (LRA) instead of PyTorch's
      defaults (DFAD).
  """

  latent_dim: int = 100
  image_shape: tuple[int, int, int] = (32, 32, 3)
  base_width: int = 64
  bn_epsilon: float = 0.8
  spectral_norm: bool = True
  lra_init: bool = True

  def _conv(self, features: int, in_features: int, name: str,
            upsample: bool = False) -> nn.Module:
    """A 3x3 convolution, after nearest x2 upsampling when ``upsample``.

    The upsampling convolution is :class:`layers.UpsampleConv3x3` (the same parameters
    and function as ``conv3x3(upsample_nearest(x))``, about 2x fewer FLOPs).
    """
    if self.lra_init:
      kernel_init, bias_init = layers.uniform_init(0.08), nn.initializers.zeros
    else:
      kernel_init = layers.torch_default_kernel_init
      bias_init = layers.torch_default_bias_init(9 * in_features)
    if upsample:
      conv = layers.UpsampleConv3x3(features, kernel_init, bias_init, name=name)
    else:
      conv = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init,
                     bias_init=bias_init, name=name)
    if self.spectral_norm:
      return nn.SpectralNorm(conv, collection_name="batch_stats", name=f"{name}_sn")
    return conv

  def _apply_conv(self, conv: nn.Module, x: Array, train: bool) -> Array:
    if self.spectral_norm:
      return conv(x, update_stats=train)
    return conv(x)

  @nn.compact
  def __call__(self, z: Array, train: bool = True) -> Array:
    """Generates images.

    Args:
      z: ``[N, latent_dim]`` latent codes.
      train: BatchNorm uses batch statistics (and spectral norm does a power step).

    Returns:
      ``[N, H, W, C]`` images.
    """
    h_out, w_out, channels = self.image_shape
    h0, w0 = h_out // 4, w_out // 4
    wide, narrow = 2 * self.base_width, self.base_width
    if self.lra_init:
      dense = nn.Dense(wide * h0 * w0, kernel_init=layers.uniform_init(0.08),
                       bias_init=nn.initializers.zeros, name="l1")
    else:
      dense = layers.torch_linear(wide * h0 * w0, self.latent_dim, name="l1")
    # PyTorch reshapes to [N, 128, h0, w0] (channel-major); keep that order so
    # converted weights would line up, then move channels last.
    h = dense(z.reshape(z.shape[0], -1)).reshape(z.shape[0], wide, h0, w0)
    h = jnp.transpose(h, (0, 2, 3, 1))
    h, _ = layers.BatchNorm(name="bn0")(h, train)
    h = self._apply_conv(self._conv(wide, wide, "conv1", upsample=True), h, train)
    h, _ = layers.BatchNorm(self.bn_epsilon, name="bn1")(h, train)
    h = nn.leaky_relu(h, 0.2)
    h = self._apply_conv(self._conv(narrow, wide, "conv2", upsample=True), h, train)
    h, _ = layers.BatchNorm(self.bn_epsilon, name="bn2")(h, train)
    h = nn.leaky_relu(h, 0.2)
    h = self._apply_conv(self._conv(channels, narrow, "conv3"), h, train)
    h = jnp.tanh(h)
    h, _ = layers.BatchNorm(use_affine=False, name="bn3")(h, train)
    return h


class FastGenerator(nn.Module):
  """Fast DFKD's generator (see the module docstring): a sigmoid image in ``(0, 1)``.

  Attributes:
    latent_dim: ``nz`` (256 in Fast DFKD's CIFAR runs).
    image_shape: ``(H, W, C)``; ``H`` and ``W`` divisible by 4.
    base_width: ``ngf`` (64); the widths are ``2 * ngf`` and ``ngf``.
  """

  latent_dim: int = 256
  image_shape: tuple[int, int, int] = (32, 32, 3)
  base_width: int = 64
  output_range = "unit"

  @nn.compact
  def __call__(self, z: Array, train: bool = True, return_logits: bool = False):
    """Generates ``sigmoid(u)``, with ``u`` too when ``return_logits``."""
    x, u = fast_decoder(z.reshape(z.shape[0], -1), self.latent_dim, self.image_shape,
                        self.base_width, train)
    return (x, u) if return_logits else x


def fast_decoder(h: Array, latent_dim: int, image_shape: tuple[int, int, int],
                 base_width: int, train: bool) -> tuple[Array, Array]:
  """Fast DFKD's generator from its ``[N, latent_dim]`` input to ``(sigmoid(u), u)``.

  Called inside a compact ``__call__``: its layers (``l1``, ``bn0``, ``conv1``,
  ``bn1``, ``conv2``, ``bn2``, ``conv3``) belong to the calling module.
  """
  h_out, w_out, channels = image_shape
  h0, w0 = h_out // 4, w_out // 4
  wide, narrow = 2 * base_width, base_width
  n = h.shape[0]
  h = layers.torch_linear(wide * h0 * w0, latent_dim, name="l1")(h)
  # PyTorch views [N, 2 ngf, h0, w0] (channel-major); channels last after.
  h = jnp.transpose(h.reshape(n, wide, h0, w0), (0, 2, 3, 1))
  h, _ = layers.BatchNorm(name="bn0")(h, train)
  h = layers.UpsampleConv3x3(wide, layers.torch_default_kernel_init, use_bias=False,
                             name="conv1")(h)
  h, _ = layers.BatchNorm(name="bn1")(h, train)
  h = nn.leaky_relu(h, 0.2)
  h = layers.UpsampleConv3x3(narrow, layers.torch_default_kernel_init, use_bias=False,
                             name="conv2")(h)
  h, _ = layers.BatchNorm(name="bn2")(h, train)
  h = nn.leaky_relu(h, 0.2)
  u = layers.torch_conv(channels, 3, narrow, padding=1, name="conv3")(h)
  return jax.nn.sigmoid(u), u


class NoisyLinears(nn.Module):
  """NAYER's noisy layers: ``num_layers`` linear maps ``code_dim -> features``, row
  ``i`` through the layer its one-hot ``which[i]`` selects. Weights ``N(0, 1)``, biases
  zero: the values :func:`dfkd_jax.methods.fast.redraw_noisy_layers` draws every round
  (NAYER's ``re_init_le``)."""

  num_layers: int
  features: int

  @nn.compact
  def __call__(self, codes: Array, which: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.normal(1.0),
                        (self.num_layers, codes.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_layers, self.features),
                      jnp.float32)
    every_layer = jnp.einsum("nd,kdf->nkf", codes, kernel.astype(codes.dtype))
    which = which.astype(codes.dtype)
    return jnp.einsum("nk,nkf->nf", which, every_layer) + which @ bias.astype(codes.dtype)


class NoisyLayerGenerator(nn.Module):
  """NAYER's generator (Tran et al., CVPR 2024; ``NLGenerator`` in
  ``datafree/models/generator.py`` of tmtuan1307/NAYER): a class code per row,
  ``BatchNorm1d``, a *noisy layer* (:class:`NoisyLinears`, re-drawn every synthesis
  round), then Fast DFKD's generator (:func:`fast_decoder`).

  NAYER's rows come in chunks of ``num_classes`` (one of every class), each chunk with
  its own noisy layer, so that rows of the same class differ. The input carries both:
  ``z = [codes, which]``, ``[N, code_dim + num_layers]``, the row's class code (a fixed
  embedding of its target class: NAYER's CLIP text embedding of the class name, or
  another, :func:`dfkd_jax.methods.fast.class_codes`) and the one-hot of its chunk.

  Attributes:
    latent_dim: the noisy layers' output, the decoder's input (NAYER's ``le_emb_size``,
      1000).
    code_dim: the class codes' width.
    num_layers: noisy layers, ``ceil(batch / classes)``.
    image_shape: ``(H, W, C)``; ``H`` and ``W`` divisible by 4.
    base_width: ``ngf`` (64).
  """

  latent_dim: int = 1000
  code_dim: int = 10
  num_layers: int = 1
  image_shape: tuple[int, int, int] = (32, 32, 3)
  base_width: int = 64
  output_range = "unit"

  @nn.compact
  def __call__(self, z: Array, train: bool = True, return_logits: bool = False):
    """Generates ``sigmoid(u)`` from ``z = [codes, which]``, with ``u`` too when
    ``return_logits``."""
    if z.shape[-1] != self.code_dim + self.num_layers:
      raise ValueError(f"NoisyLayerGenerator: input width {z.shape[-1]}, expected "
                       f"code_dim + num_layers = {self.code_dim} + {self.num_layers}")
    codes, which = z[:, :self.code_dim], z[:, self.code_dim:]
    codes, _ = layers.BatchNorm(name="code_bn")(codes, train)
    h = NoisyLinears(self.num_layers, self.latent_dim, name="noisy")(codes, which)
    x, u = fast_decoder(h, self.latent_dim, self.image_shape, self.base_width, train)
    return (x, u) if return_logits else x


class ConvBlock(nn.Module):
  """MAD's ``ConvBlockX(in, out)``: ``conv3x3 -> BN -> ReLU``.

  Table 9 (its definition) is not legible in our copy of the paper; this is our reading,
  consistent with the ``ReLU -> BN`` stem of Table 8.
  """

  features: int

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    h = layers.torch_conv(self.features, 3, x.shape[-1], padding=1, use_bias=False,
                          name="conv")(x)
    h, _ = layers.BatchNorm(name="bn")(h, train)
    return nn.relu(h)


class ResNetBlock(nn.Module):
  """MAD's ``ResNetBlockY(in, out)``: pre-activation residual block.

  ``x + conv(relu(bn(conv(relu(bn(x))))))`` with a 1x1 convolution on the shortcut when
  the widths differ (our reading of Table 9, see :class:`ConvBlock`).
  """

  features: int

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    in_features = x.shape[-1]
    h, _ = layers.BatchNorm(name="bn1")(x, train)
    h = layers.torch_conv(self.features, 3, in_features, padding=1, use_bias=False,
                          name="conv1")(nn.relu(h))
    h, _ = layers.BatchNorm(name="bn2")(h, train)
    h = layers.torch_conv(self.features, 3, self.features, padding=1, use_bias=False,
                          name="conv2")(nn.relu(h))
    shortcut = x
    if in_features != self.features:
      shortcut = layers.torch_conv(self.features, 1, in_features, use_bias=False,
                                   name="shortcut_conv")(x)
    return shortcut + h


# 8 is our addition for the 8x8 digits quick start and tests: Table 8 (a)'s layout with
# a 1x1 stem (S / 8 = 1); MAD itself has 32, 64 and 256.
MAD_IMAGE_SIZES = (8, 32, 64, 256)


class MADGenerator(nn.Module):
  """Class-conditional generator of MAD, Table 8 (a) 32px, (b) 64px, (c) 256px.

  ``image_shape`` 8x8 uses layout (a) with a 1x1 stem (our addition, for digits).

  Attributes:
    num_classes: rows of the class embedding table ``e``.
    latent_dim: size of ``z`` and of each embedding ``e_y``.
    image_shape: ``(S, S, C)`` with ``S`` in ``MAD_IMAGE_SIZES``.
    stem_bn_epsilon: eps of the stem BatchNorm, ``BatchNorm2d(256, 0.1)`` in Table 8
      (PyTorch's second positional argument is eps).
  """

  num_classes: int = 10
  latent_dim: int = 256
  image_shape: tuple[int, int, int] = (32, 32, 3)
  stem_bn_epsilon: float = 0.1

  @nn.compact
  def __call__(self, z: Array, y: Array | None = None, train: bool = True,
               return_logits: bool = False):
    """Generates ``sigmoid(G(z + e_y))``.

    Args:
      z: ``[N, latent_dim]`` latent codes.
      y: ``[N]`` integer class labels, or ``None`` for the unconditional ``G(z)``. The
        embedding table is created either way.
      train: BatchNorm uses and updates batch statistics.
      return_logits: also return the pre-sigmoid output ``u`` (penalised by MAD eq. 11).

    Returns:
      ``[N, S, S, C]`` images in ``(0, 1)``, or ``(images, logits)``.
    """
    size, _, channels = self.image_shape
    if size not in MAD_IMAGE_SIZES or self.image_shape[1] != size:
      raise ValueError(f"MAD generator image_shape {self.image_shape}: size must be one "
                       f"of {MAD_IMAGE_SIZES} (square)")
    embed = nn.Embed(self.num_classes, self.latent_dim,
                     embedding_init=nn.initializers.normal(1.0), name="class_embedding")
    h = z if y is None else z + embed(y)
    if size in (8, 32, 64):
      s0 = size // 8
      h = layers.torch_linear(256 * s0 * s0, self.latent_dim, name="l1")(h)
      h = jnp.transpose(h.reshape(h.shape[0], 256, s0, s0), (0, 2, 3, 1))
      h, _ = layers.BatchNorm(self.stem_bn_epsilon, name="bn0")(nn.relu(h), train)
      for i, width in enumerate((128, 64, 32)):
        h = layers.upsample_bilinear_aligned(h)
        h = ConvBlock(width, name=f"block{i + 1}")(h, train)
      u = layers.torch_conv(channels, 1, 32, name="conv_out")(h)
    else:
      h = layers.torch_linear(512 * 4 * 4, self.latent_dim, name="l1")(h)
      h = jnp.transpose(h.reshape(h.shape[0], 512, 4, 4), (0, 2, 3, 1))
      widths = (512, 256, 128, 64, 32, 16, 16)
      for i, width in enumerate(widths):
        if i > 0:
          h = layers.upsample_bilinear_aligned(h)
        h = ResNetBlock(width, name=f"block{i + 1}")(h, train)
      u = layers.torch_conv(channels, 3, 16, padding=1, name="conv_out")(h)
    x = jax.nn.sigmoid(u)
    if return_logits:
      return x, u
    return x

"""Pre-activation Wide ResNets WRN-depth-k for 32x32 input.

The WRN-16-1/16-2/40-1/40-2 of ZSKT/ABM, CMI (``classifiers/wresnet.py`` in zju-vipa/CMI)
and MAD: a 3x3 stem (16 channels, no bias), three groups of ``(depth - 4) / 6``
pre-activation blocks (``16k``, ``32k``, ``64k`` channels, strides 1/2/2), a final
``BN -> ReLU``, global average pooling and a linear classifier.

In a block whose input and output widths differ, ``relu(bn1(x))`` feeds both the first
convolution and the 1x1 shortcut convolution; otherwise the shortcut is ``x`` itself (as
in the reference implementation). Convolutions use ``normal(0, sqrt(2 / (k*k*out)))``
and the classifier bias starts at zero. Dropout (rate 0 in all peers) is not modelled.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dfkd_jax.models import layers

Array = jax.Array


def _conv(features: int, kernel_size: int, in_features: int, stride: int,
          name: str) -> nn.Conv:
  return layers.torch_conv(features, kernel_size, in_features, stride=stride,
                           padding=kernel_size // 2, use_bias=False,
                           kernel_init=layers.kaiming_normal_fan_out, name=name)


class PreActBlock(nn.Module):
  """Pre-activation basic block of a WRN.

  Attributes:
    features: output channels.
    stride: stride of the first convolution and the shortcut.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool):
    """Returns ``(y, moments)``: block output and its two BN moments."""
    in_features = x.shape[-1]
    equal_in_out = in_features == self.features
    a, m1 = layers.BatchNorm(name="bn1")(x, train)
    a = nn.relu(a)
    h = _conv(self.features, 3, in_features, self.stride, "conv1")(a)
    h, m2 = layers.BatchNorm(name="bn2")(h, train)
    h = _conv(self.features, 3, self.features, 1, "conv2")(nn.relu(h))
    if equal_in_out:
      shortcut = x
    else:
      shortcut = _conv(self.features, 1, in_features, self.stride, "shortcut_conv")(a)
    return shortcut + h, (m1, m2)


class WideResNet(nn.Module):
  """WRN-depth-widen_factor.

  Attributes:
    num_classes: number of logits.
    depth: ``6n + 4`` (16 or 40 in the peers).
    widen_factor: channel multiplier ``k``.
  """

  num_classes: int = 10
  depth: int = 16
  widen_factor: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    """Classifies ``[N, 32, 32, C]`` images.

    Args:
      x: normalised NHWC images.
      train: BatchNorm uses and updates batch statistics.
      features: also return :class:`~dfkd_jax.models.layers.ClassifierFeatures`.

    Returns:
      ``logits [N, num_classes]``, or ``(logits, ClassifierFeatures)``.
    """
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n+4, got {self.depth}")
    layers.check_input(f"wrn{self.depth}_{self.widen_factor}", x, (32, 32, None))
    n = (self.depth - 4) // 6
    widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
    h = _conv(16, 3, x.shape[-1], 1, "conv1")(x)
    moments = []
    for group, width in enumerate(widths):
      for block in range(n):
        stride = 2 if group > 0 and block == 0 else 1
        h, m = PreActBlock(width, stride, name=f"block{group + 1}_{block}")(h, train)
        moments.append(m)
    h, m = layers.BatchNorm(name="bn1")(h, train)
    moments.append((m,))
    penultimate = nn.relu(h).mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=layers.torch_default_kernel_init,
                      bias_init=nn.initializers.zeros, name="fc")(penultimate)
    if features:
      return logits, layers.ClassifierFeatures(penultimate,
                                               layers.collect_moments(moments))
    return logits

"""Small CNNs for the 8x8 greyscale sklearn ``load_digits`` quick start.

Our own design (no peer defines one): two stages of 3x3 ``conv -> BN -> ReLU`` at 8x8,
2x2 max-pooling to 4x4, one more ``conv -> BN -> ReLU``, global average pooling and a
linear classifier. ``digits_cnn`` (widths 32/32/64, about 29k parameters) is the teacher
(>= 97 % test accuracy); ``digits_cnn_half`` (16/16/32, about 7.6k) is the student. The
convolutions have no bias (each is followed by BatchNorm), initialised as CMI's ResNets
(``kaiming_normal_``, fan-out).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dfkd_jax.models import layers

Array = jax.Array


class DigitsCNN(nn.Module):
  """Three-conv BatchNorm CNN for ``[N, 8, 8, 1]`` digits.

  Attributes:
    num_classes: number of output logits.
    widths: output channels of the three convolutions.
  """

  num_classes: int = 10
  widths: tuple[int, int, int] = (32, 32, 64)

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    """Classifies ``[N, 8, 8, 1]`` images.

    Args:
      x: ``[N, 8, 8, 1]`` normalised images.
      train: BatchNorm uses and updates batch statistics.
      features: also return :class:`~dfkd_jax.models.layers.ClassifierFeatures`.

    Returns:
      ``logits [N, num_classes]``, or ``(logits, ClassifierFeatures)``.
    """
    layers.check_input(type(self).__name__, x, (8, 8, 1))
    moments = []
    h = x
    in_channels = 1
    for i, width in enumerate(self.widths):
      if i == 2:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      h = layers.torch_conv(width, 3, in_channels, padding=1, use_bias=False,
                            kernel_init=layers.kaiming_normal_fan_out,
                            name=f"conv{i + 1}")(h)
      h, m = layers.BatchNorm(name=f"bn{i + 1}")(h, train)
      moments.append(m)
      h = nn.relu(h)
      in_channels = width
    penultimate = h.mean(axis=(1, 2))
    logits = layers.torch_linear(self.num_classes, in_channels, name="fc")(penultimate)
    if features:
      return logits, layers.ClassifierFeatures(penultimate, tuple(moments))
    return logits

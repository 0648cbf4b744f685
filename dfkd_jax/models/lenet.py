"""LeNet-5 and LeNet-5-half for 32x32 greyscale input (MNIST padded to 32x32).

The teacher/student pair of DAFL (Chen et al., ICCV 2019) and DFAD (Fang et al., 2019),
``network/lenet.py`` in VainF/Data-Free-Adversarial-Distillation: three 5x5 valid
convolutions with ReLU (the first two followed by 2x2 max-pooling), then two linear
layers. No BatchNorm, so ``bn_moments`` is empty.

``batch_norm=True`` (``lenet5_bn``) puts a BatchNorm between each convolution and its
ReLU, the conv -> BN -> ReLU order of the ResNets. It is not in DAFL or DFAD; it gives the
teacher the BatchNorm statistics that DeepInversion-style priors (``bn_prior``, DFQ,
MAD) match, which the plain LeNet-5 cannot offer.

The ``penultimate`` features are the ReLU outputs of ``fc1`` (84 or 42 wide), the input
of the final linear layer; the DAFL ``out_feature`` output (``conv3``, 120 wide) is one
layer earlier.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dfkd_jax.models import layers

Array = jax.Array


class LeNet5(nn.Module):
  """LeNet-5 (61,706 parameters for 10 classes) or its half-width variant.

  Attributes:
    num_classes: number of output logits.
    width_divisor: 1 for LeNet-5 (6/16/120/84 units), 2 for LeNet-5-half (3/8/60/42).
    batch_norm: BatchNorm after each convolution (before its ReLU).
  """

  num_classes: int = 10
  width_divisor: int = 1
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    """Classifies ``[N, 32, 32, 1]`` images.

    Args:
      x: ``[N, 32, 32, 1]`` normalised images.
      train: BatchNorm (if any) uses and updates batch statistics.
      features: also return :class:`~dfkd_jax.models.layers.ClassifierFeatures`.

    Returns:
      ``logits [N, num_classes]``, or ``(logits, ClassifierFeatures)``.
    """
    layers.check_input(type(self).__name__, x, (32, 32, 1))
    d = self.width_divisor
    moments = []

    def conv_relu(h, width, in_width, index):
      h = layers.torch_conv(width, 5, in_width, name=f"conv{index}")(h)
      if self.batch_norm:
        h, m = layers.BatchNorm(name=f"bn{index}")(h, train)
        moments.append(m)
      return nn.relu(h)

    c1, c2, c3, f1 = 6 // d, 16 // d, 120 // d, 84 // d
    h = nn.max_pool(conv_relu(x, c1, 1, 1), (2, 2), strides=(2, 2))
    h = nn.max_pool(conv_relu(h, c2, c1, 2), (2, 2), strides=(2, 2))
    h = conv_relu(h, c3, c2, 3).reshape(h.shape[0], c3)
    penultimate = nn.relu(layers.torch_linear(f1, c3, name="fc1")(h))
    logits = layers.torch_linear(self.num_classes, f1, name="fc2")(penultimate)
    if features:
      return logits, layers.ClassifierFeatures(penultimate, tuple(moments))
    return logits

"""ResNet-18/34 with BasicBlocks for 32x32 (CIFAR) and 64x64 (Tiny-ImageNet) input.

* ``resnet18`` / ``resnet34``: the CIFAR ResNets of DAFL, DFAD (``resnet_8x.py`` in
  VainF/Data-Free-Adversarial-Distillation), CMI (``classifiers/resnet.py`` in
  zju-vipa/CMI), LRA and MAD: a 3x3 stride-1 stem without bias and without max-pooling,
  four stages of BasicBlocks (64/128/256/512 channels, strides 1/2/2/2), a 1x1-conv+BN
  shortcut where the shape changes, 4x4 average pooling of the final 4x4 map and a
  linear classifier (ResNet-18: 11,173,962 parameters for 10 classes).
* ``resnet18_64`` / ``resnet34_64``: LRA's Tiny-ImageNet teacher/student ``MyResNet34``
  / ``MyResNet18`` (``src/networks/myresnet.py`` in gaurav104/LRA): torchvision's
  ResNet with the stem replaced by a 3x3 stride-1 convolution *with* bias, no max-pool
  and global average pooling (of the final 8x8 map).

Convolutions are initialised as CMI/DFAD (``kaiming_normal_``, fan-out, ReLU gain); the
64x64 stem and the classifier keep PyTorch's defaults.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dfkd_jax.models import layers

Array = jax.Array

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _conv(features: int, kernel_size: int, in_features: int, stride: int,
          name: str) -> nn.Conv:
  return layers.torch_conv(features, kernel_size, in_features, stride=stride,
                           padding=kernel_size // 2, use_bias=False,
                           kernel_init=layers.kaiming_normal_fan_out, name=name)


class BasicBlock(nn.Module):
  """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

  Attributes:
    features: output channels.
    stride: stride of the first convolution and of the shortcut.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool):
    """Returns ``(y, moments)``: the block output and its BN moments (forward order)."""
    in_features = x.shape[-1]
    h = _conv(self.features, 3, in_features, self.stride, "conv1")(x)
    h, m1 = layers.BatchNorm(name="bn1")(h, train)
    h = _conv(self.features, 3, self.features, 1, "conv2")(nn.relu(h))
    h, m2 = layers.BatchNorm(name="bn2")(h, train)
    moments = [m1, m2]
    shortcut = x
    if self.stride != 1 or in_features != self.features:
      shortcut = _conv(self.features, 1, in_features, self.stride, "shortcut_conv")(x)
      shortcut, m3 = layers.BatchNorm(name="shortcut_bn")(shortcut, train)
      moments.append(m3)
    return nn.relu(h + shortcut), tuple(moments)


class ResNet(nn.Module):
  """BasicBlock ResNet for small images.

  Attributes:
    num_classes: number of logits.
    depth: 18 or 34.
    input_size: 32 (CIFAR layout) or 64 (LRA Tiny-ImageNet layout).
  """

  num_classes: int = 10
  depth: int = 18
  input_size: int = 32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    """Classifies ``[N, input_size, input_size, C]`` images.

    Args:
      x: normalised NHWC images.
      train: BatchNorm uses and updates batch statistics.
      features: also return :class:`~dfkd_jax.models.layers.ClassifierFeatures`.

    Returns:
      ``logits [N, num_classes]``, or ``(logits, ClassifierFeatures)``.
    """
    name = f"resnet{self.depth}" + ("" if self.input_size == 32 else "_64")
    layers.check_input(name, x, (self.input_size, self.input_size, None))
    if self.input_size == 32:
      h = _conv(64, 3, x.shape[-1], 1, "conv1")(x)
    else:  # MyResNet: a fresh nn.Conv2d(in, 64, 3, 1, 1) with bias and default init.
      h = layers.torch_conv(64, 3, x.shape[-1], padding=1, name="conv1")(x)
    h, m = layers.BatchNorm(name="bn1")(h, train)
    moments = [(m,)]
    h = nn.relu(h)
    for stage, (width, num_blocks) in enumerate(
        zip(STAGE_WIDTHS, BLOCKS_PER_STAGE[self.depth])):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        h, m = BasicBlock(width, stride, name=f"layer{stage + 1}_{block}")(h, train)
        moments.append(m)
    # 4x4 average pooling of the 4x4 CIFAR map, global pooling of the 8x8 one: both are
    # the spatial mean.
    penultimate = h.mean(axis=(1, 2))
    logits = layers.torch_linear(self.num_classes, STAGE_WIDTHS[-1],
                                 name="linear")(penultimate)
    if features:
      return logits, layers.ClassifierFeatures(penultimate,
                                               layers.collect_moments(moments))
    return logits


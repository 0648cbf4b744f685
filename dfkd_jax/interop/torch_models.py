"""The zoo's classifiers as PyTorch modules, to load a ``--format=torch`` export.

``python -m dfkd_jax.export --format=torch`` writes ``{"state_dict": ..., "student":
card}`` in the peers' key layouts (:mod:`dfkd_jax.interop.torch_layout`); these classes
have exactly those keys, so ``load_state_dict(strict=True)`` takes the file::

  from dfkd_jax.interop import torch_models
  model = torch_models.load("student.pth")        # eval mode; model.card: the card
  logits = model(x)                               # x: normalised NCHW float32

or by hand, ``torch_models.build(card["arch"], card["num_classes"],
card["input_shape"][-1])`` and ``load_state_dict(payload["state_dict"])``. Each class
is written from the architecture it mirrors (the Flax modules of :mod:`dfkd_jax.models`
and the peers' definitions), not copied: ``CifarResNet`` (CMI/DFAD ``resnet18/34``),
``LraResNet`` (LRA's ``MyResNet``, torchvision's ResNet under ``resnet.``),
``WideResNet`` (CMI ``wrn*``), ``LeNet5`` (DAFL/DFAD, and ``lenet5_bn``), ``DigitsCNN``
(ours). Inputs: normalised NCHW images of the card's ``input_shape``, in eval mode.

This module imports torch (the CPU build is enough); nothing in the package imports it
until a PyTorch file is written, so torch stays optional.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError as e:  # One line, how to install it.
  raise ModuleNotFoundError(f"dfkd_jax.interop.torch_models needs torch ({e}): pip "
                            'install -e ".[export]" (the CPU build is enough)') from e

RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
  """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the 1x1 conv + BN shortcut
  (where the shape changes) is ``shortcut.{0,1}`` (CMI) or ``downsample.{0,1}``
  (torchvision)."""

  def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "shortcut"):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    layers = ((nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
              if stride != 1 or cin != cout else ())
    self.shortcut_name = shortcut
    setattr(self, shortcut, nn.Sequential(*layers))  # Empty: the identity, no keys.

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + getattr(self, self.shortcut_name)(x))


def _resnet_stages(module: nn.Module, depth: int, shortcut: str) -> None:
  """Adds ``layer1..layer4`` of BasicBlocks (64/128/256/512 channels, strides 1/2/2/2)."""
  cin = RESNET_WIDTHS[0]
  for stage, (width, blocks) in enumerate(zip(RESNET_WIDTHS, RESNET_BLOCKS[depth])):
    layer = []
    for block in range(blocks):
      layer.append(BasicBlock(cin, width, 2 if stage > 0 and block == 0 else 1, shortcut))
      cin = width
    setattr(module, f"layer{stage + 1}", nn.Sequential(*layer))


class CifarResNet(nn.Module):
  """CMI/DFAD CIFAR ResNet-18/34 (``resnet18``, ``resnet34``): a 3x3 stride-1 stem
  without bias and max-pool, four BasicBlock stages, average pooling, ``linear``."""

  def __init__(self, depth: int = 18, num_classes: int = 10, in_channels: int = 3):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    _resnet_stages(self, depth, "shortcut")
    self.linear = nn.Linear(RESNET_WIDTHS[-1], num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    for stage in range(1, 5):
      out = getattr(self, f"layer{stage}")(out)
    return self.linear(out.mean((2, 3)))


class _TorchvisionResNet(nn.Module):
  """torchvision's BasicBlock ResNet as LRA's ``MyResNet`` changes it: a 3x3 stride-1
  stem *with* bias, no max-pool, global average pooling, ``fc``."""

  def __init__(self, depth: int, num_classes: int, in_channels: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(64)
    _resnet_stages(self, depth, "downsample")
    self.fc = nn.Linear(RESNET_WIDTHS[-1], num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    for stage in range(1, 5):
      out = getattr(self, f"layer{stage}")(out)
    return self.fc(out.mean((2, 3)))


class LraResNet(nn.Module):
  """LRA's 64x64 Tiny-ImageNet ``MyResNet18/34`` (``resnet18_64``, ``resnet34_64``):
  the network is its ``resnet`` attribute, so its keys start with ``resnet.``."""

  def __init__(self, depth: int = 18, num_classes: int = 200, in_channels: int = 3):
    super().__init__()
    self.resnet = _TorchvisionResNet(depth, num_classes, in_channels)

  def forward(self, x):
    return self.resnet(x)


class _WRNBlock(nn.Module):
  """Pre-activation block: ``relu(bn1(x))`` feeds ``conv1`` and, where the width
  changes, the 1x1 ``convShortcut``; otherwise the shortcut is ``x``."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.equal_in_out = cin == cout
    if not self.equal_in_out:
      # CMI's key name.
      self.convShortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)  # pylint: disable=invalid-name

  def forward(self, x):
    a = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(a))))
    return (x if self.equal_in_out else self.convShortcut(a)) + out


class _WRNGroup(nn.Module):
  """CMI's ``NetworkBlock``: ``n`` blocks under ``layer``."""

  def __init__(self, n: int, cin: int, cout: int, stride: int):
    super().__init__()
    self.layer = nn.Sequential(*[_WRNBlock(cin if i == 0 else cout, cout,
                                           stride if i == 0 else 1) for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  """CMI's WRN-depth-k (``wrn16_1``, ``wrn16_2``, ``wrn40_1``, ``wrn40_2``): a 3x3 stem,
  three groups ``block1..3`` of pre-activation blocks, ``bn1``, ReLU, global average
  pooling, ``fc`` (dropout, rate 0 in the peers, is left out)."""

  def __init__(self, depth: int = 16, widen_factor: int = 1, num_classes: int = 10,
               in_channels: int = 3):
    super().__init__()
    if (depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    self.block1 = _WRNGroup(n, 16, widths[0], 1)
    self.block2 = _WRNGroup(n, widths[0], widths[1], 2)
    self.block3 = _WRNGroup(n, widths[1], widths[2], 2)
    self.bn1 = nn.BatchNorm2d(widths[2])
    self.fc = nn.Linear(widths[2], num_classes)

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    return self.fc(F.relu(self.bn1(out)).mean((2, 3)))


class LeNet5(nn.Module):
  """DAFL/DFAD LeNet-5 for 32x32 greyscale input (``lenet5``; ``width_divisor=2``:
  ``lenet5_half``; ``batch_norm=True``: ``lenet5_bn``, ``bn{i}`` after ``conv{i}``)."""

  def __init__(self, num_classes: int = 10, width_divisor: int = 1,
               batch_norm: bool = False, in_channels: int = 1):
    super().__init__()
    d = width_divisor
    widths = (in_channels, 6 // d, 16 // d, 120 // d)
    for i in range(1, 4):
      setattr(self, f"conv{i}", nn.Conv2d(widths[i - 1], widths[i], 5))
      if batch_norm:
        setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
    self.batch_norm = batch_norm
    self.fc1 = nn.Linear(120 // d, 84 // d)
    self.fc2 = nn.Linear(84 // d, num_classes)

  def _conv_relu(self, x, i: int):
    x = getattr(self, f"conv{i}")(x)
    return F.relu(getattr(self, f"bn{i}")(x) if self.batch_norm else x)

  def forward(self, x):
    out = F.max_pool2d(self._conv_relu(x, 1), 2)
    out = F.max_pool2d(self._conv_relu(out, 2), 2)
    out = self._conv_relu(out, 3).flatten(1)  # 1x1: NCHW and NHWC flatten alike.
    return self.fc2(F.relu(self.fc1(out)))


class DigitsCNN(nn.Module):
  """Our 8x8 digits CNN (``digits_cnn``: widths 32/32/64; ``digits_cnn_half``:
  16/16/32): ``conv{i} -> bn{i} -> ReLU`` twice, 2x2 max-pool, once more, global
  average pooling, ``fc``."""

  def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 32, 64),
               in_channels: int = 1):
    super().__init__()
    cin = in_channels
    for i, width in enumerate(widths, start=1):
      setattr(self, f"conv{i}", nn.Conv2d(cin, width, 3, 1, 1, bias=False))
      setattr(self, f"bn{i}", nn.BatchNorm2d(width))
      cin = width
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    for i in range(1, 4):
      if i == 3:
        x = F.max_pool2d(x, 2)
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
    return self.fc(x.mean((2, 3)))


# Every classifier of dfkd_jax.interop.torch_layout.TORCH_LAYOUTS (a test checks it):
# its class and keyword arguments.
ARCHS: dict[str, tuple[type, dict[str, Any]]] = {
    "resnet18": (CifarResNet, {"depth": 18}),
    "resnet34": (CifarResNet, {"depth": 34}),
    "resnet18_64": (LraResNet, {"depth": 18}),
    "resnet34_64": (LraResNet, {"depth": 34}),
    "wrn16_1": (WideResNet, {"depth": 16, "widen_factor": 1}),
    "wrn16_2": (WideResNet, {"depth": 16, "widen_factor": 2}),
    "wrn40_1": (WideResNet, {"depth": 40, "widen_factor": 1}),
    "wrn40_2": (WideResNet, {"depth": 40, "widen_factor": 2}),
    "lenet5": (LeNet5, {}),
    "lenet5_half": (LeNet5, {"width_divisor": 2}),
    "lenet5_bn": (LeNet5, {"batch_norm": True}),
    "digits_cnn": (DigitsCNN, {"widths": (32, 32, 64)}),
    "digits_cnn_half": (DigitsCNN, {"widths": (16, 16, 32)}),
}


def _entry(arch: str) -> tuple[type, dict[str, Any]]:
  """``ARCHS[arch]``, or a one-line ``ValueError`` naming the covered ones."""
  if arch not in ARCHS:
    raise ValueError(f"{arch!r} has no PyTorch class here; dfkd_jax.interop.torch_models "
                     f"covers {', '.join(sorted(ARCHS))} (export your own as ONNX)")
  return ARCHS[arch]


def describe(arch: str, num_classes: int, in_channels: int) -> str:
  """The call that builds ``arch``, e.g.
  ``dfkd_jax.interop.torch_models.WideResNet(depth=16, widen_factor=2, num_classes=10,
  in_channels=3)``."""
  cls, kwargs = _entry(arch)
  args = {**kwargs, "num_classes": num_classes, "in_channels": in_channels}
  return (f"{__name__}.{cls.__name__}("
          + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")")


def build(arch: str, num_classes: int, in_channels: int | None = None) -> nn.Module:
  """A fresh PyTorch ``arch`` whose ``state_dict`` has the keys the export writes.

  Args:
    arch: a zoo classifier (:data:`ARCHS`, the same as
      :data:`dfkd_jax.interop.torch_layout.TORCH_LAYOUTS`).
    num_classes: the number of logits.
    in_channels: input channels (the card's ``input_shape[-1]``); default the class's
      (3 for the ResNets and WRNs, 1 for LeNet-5 and the digits CNNs).

  Raises:
    ValueError: ``arch`` has no class here (naming those that have).
  """
  cls, kwargs = _entry(arch)
  if in_channels is not None:
    kwargs = {**kwargs, "in_channels": int(in_channels)}
  return cls(num_classes=int(num_classes), **kwargs)


def load(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
  """The student of a ``--format=torch`` export: built from its card, its weights
  loaded with ``strict=True``, in eval mode; ``model.card`` is the card (its
  ``normalization`` is the mean/std its inputs need).

  Raises:
    ValueError: the file is not an export of ``python -m dfkd_jax.export
      --format=torch`` (one line).
  """
  payload = torch.load(path, map_location=map_location, weights_only=True)
  if not (isinstance(payload, dict) and {"state_dict", "student"} <= set(payload)):
    raise ValueError(f"{os.fspath(path)} is not a `python -m dfkd_jax.export "
                     "--format=torch` file (no state_dict and student card); load other "
                     "state_dicts with build(arch, num_classes).load_state_dict(...)")
  card = payload["student"]
  model = build(card["arch"], card["num_classes"], card["input_shape"][-1])
  model.load_state_dict(payload["state_dict"], strict=True)
  model.eval()
  model.card = card
  return model


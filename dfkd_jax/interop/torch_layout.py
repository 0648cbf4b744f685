"""The PyTorch names and array layouts of our classifiers' weights, both ways.

``python -m dfkd_jax.convert`` reads a PyTorch ``state_dict`` in these names
(:func:`dfkd_jax.interop.convert.state_dict_to_variables`); ``python -m dfkd_jax.export
--format=torch`` writes one (:func:`variables_to_state_dict`), and converting that back
gives the same arrays exactly. The names per naming scheme:

* ``cifar_resnet`` (CMI / DFAD): ``conv1, bn1, layer{s}.{b}.{conv1,bn1,conv2,bn2},
  layer{s}.{b}.shortcut.{0,1}, linear``;
* ``torchvision_resnet`` (LRA ``MyResNet``, torchvision inside): ``resnet.conv1, ...,
  layer{s}.{b}.downsample.{0,1}, resnet.fc``;
* ``wrn`` (CMI): ``conv1, block{g}.layer.{b}.{bn1,conv1,bn2,conv2,convShortcut}, bn1,
  fc``;
* ``flax``: the Flax module names as they are (DAFL/DFAD LeNet-5 ``conv1..3, fc1,
  fc2``; ``conv{i}, bn{i}, fc`` of ``digits_cnn*``).

Convolution kernels are OIHW in PyTorch and HWIO in Flax; linear weights ``[out, in]``
and ``[in, out]``.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import flax
import numpy as np


class TorchLayout(NamedTuple):
  """How one classifier's weights are named in PyTorch.

  Attributes:
    naming: ``cifar_resnet``, ``torchvision_resnet``, ``wrn`` or ``flax`` (see the
      module docstring).
    source: the PyTorch definition these names come from.
  """

  naming: str
  source: str


# The classifiers with a PyTorch counterpart: the torch export covers these.
TORCH_LAYOUTS: dict[str, TorchLayout] = {
    "resnet18": TorchLayout("cifar_resnet", "CMI/DFAD CIFAR ResNet-18"),
    "resnet34": TorchLayout("cifar_resnet", "CMI/DFAD CIFAR ResNet-34"),
    "resnet18_64": TorchLayout("torchvision_resnet", "LRA MyResNet18"),
    "resnet34_64": TorchLayout("torchvision_resnet", "LRA MyResNet34"),
    "wrn16_1": TorchLayout("wrn", "CMI WideResNet-16-1"),
    "wrn16_2": TorchLayout("wrn", "CMI WideResNet-16-2"),
    "wrn40_1": TorchLayout("wrn", "CMI WideResNet-40-1"),
    "wrn40_2": TorchLayout("wrn", "CMI WideResNet-40-2"),
    "lenet5": TorchLayout("flax", "DAFL/DFAD LeNet-5"),
    "lenet5_half": TorchLayout("flax", "DAFL/DFAD LeNet-5-half"),
    "lenet5_bn": TorchLayout("flax", "LeNet-5 with BatchNorm bn{i} after conv{i} (ours)"),
    "digits_cnn": TorchLayout("flax", "DigitsCNN conv{i}/bn{i}/fc (ours)"),
    "digits_cnn_half": TorchLayout("flax", "DigitsCNN conv{i}/bn{i}/fc (ours)"),
}

# (Flax collection, leaf) -> PyTorch parameter/buffer name.
LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
              ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}


def module_name(arch: str, flax_path: tuple[str, ...]) -> str:
  """PyTorch module name of the Flax module at ``flax_path`` of ``arch``."""
  naming = TORCH_LAYOUTS[arch].naming if arch in TORCH_LAYOUTS else "flax"
  name = flax_path[0]
  if naming in ("cifar_resnet", "torchvision_resnet"):
    torchvision = naming == "torchvision_resnet"
    prefix = "resnet." if torchvision else ""
    if name == "linear":
      return prefix + ("fc" if torchvision else "linear")
    if name.startswith("layer"):
      stage, block = name[len("layer"):].split("_")
      sub = {"shortcut_conv": "downsample.0" if torchvision else "shortcut.0",
             "shortcut_bn": "downsample.1" if torchvision else "shortcut.1"
             }.get(flax_path[1], flax_path[1])
      return f"{prefix}layer{stage}.{block}.{sub}"
    return prefix + name
  if naming == "wrn":
    if name.startswith("block"):
      group, block = name[len("block"):].split("_")
      sub = "convShortcut" if flax_path[1] == "shortcut_conv" else flax_path[1]
      return f"block{group}.layer.{block}.{sub}"
    return name
  return ".".join(flax_path)


def to_flax_layout(array: np.ndarray) -> np.ndarray:
  """OIHW conv weights -> HWIO; ``[out, in]`` linear weights -> ``[in, out]``."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def to_torch_layout(array: np.ndarray) -> np.ndarray:
  """The inverse of :func:`to_flax_layout`: HWIO -> OIHW, ``[in, out]`` -> ``[out, in]``."""
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 2:
    return array.T
  return array


def variables_to_state_dict(variables: Mapping[str, Any], arch: str
                            ) -> dict[str, np.ndarray]:
  """The PyTorch ``state_dict`` of ``arch``'s Flax variables: the inverse of
  :func:`dfkd_jax.interop.convert.state_dict_to_variables`, which gives back the same arrays.

  BatchNorm layers also get PyTorch's ``num_batches_tracked`` counter (0: it is not
  tracked here; PyTorch uses it only with ``momentum=None``), so that
  ``load_state_dict(strict=True)`` takes the result.

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` of the classifier.
    arch: a classifier of :data:`TORCH_LAYOUTS`.

  Returns:
    PyTorch name -> a new, writable, C-contiguous float32 array (int64 for the
    counters), ready for ``torch.from_numpy``.

  Raises:
    ValueError: ``arch`` has no PyTorch layout (naming those that have one).
  """
  if arch not in TORCH_LAYOUTS:
    raise ValueError(f"{arch!r} has no PyTorch layout; the torch format covers "
                     f"{', '.join(sorted(TORCH_LAYOUTS))}")
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(
      {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}))
  state_dict = {}
  for (collection, *module_path, leaf_name), value in flat.items():
    module = module_name(arch, tuple(module_path))
    state_dict[f"{module}.{LEAF_NAMES[(collection, leaf_name)]}"] = (
        np.array(to_torch_layout(np.asarray(value, np.float32)), order="C"))
    if (collection, leaf_name) == ("batch_stats", "mean"):
      state_dict[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
  return state_dict

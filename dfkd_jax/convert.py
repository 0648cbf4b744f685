r"""Import a published PyTorch teacher into the teacher checkpoint format.

Usage::

  python -m dfkd_jax.convert --torch_checkpoint=cifar10_resnet34.pth \
      --arch=resnet34 --num_classes=10 --dataset=cifar10 --out=teachers/cifar10_resnet34

Reads a ``state_dict`` as the peers publish it: CMI/DataFree ``{dataset}_{arch}.pth``
files (``{"state_dict": ...}``), DFAD ``resnet34_8x`` checkpoints or a plain state dict;
``module.`` prefixes of ``DataParallel`` are stripped. Every array of the Flax
architecture must be found with the right shape and every PyTorch array must be used
(``num_batches_tracked`` counters excepted); otherwise a ``ValueError`` names the keys.

PyTorch names understood per architecture:

* ``resnet18/34``: CMI / DFAD ``conv1, bn1, layer{s}.{b}.{conv1,bn1,conv2,bn2},
  layer{s}.{b}.shortcut.{0,1}, linear``;
* ``resnet18_64/34_64``: LRA ``MyResNet`` (torchvision inside): ``resnet.conv1, ...,
  layer{s}.{b}.downsample.{0,1}, resnet.fc``;
* ``wrn*``: CMI ``conv1, block{g}.layer.{b}.{bn1,conv1,bn2,conv2,convShortcut}, bn1,
  fc``;
* ``lenet5*``: DAFL/DFAD ``conv1..3, fc1, fc2``; ``digits_cnn*``: ``conv{i}, bn{i}, fc``.

``torch`` is imported only when a checkpoint is read (it is a test-only dependency).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax import models
from dfkd_jax import teacher as teacher_lib

# Input normalisation the peers use (CMI ``registry.NORMALIZE_DICT``, DAFL/DFAD).
DATASET_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "mnist": ((0.1307,), (0.3081,)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_FLAGS = flags.FLAGS
flags.DEFINE_string("torch_checkpoint", None, "PyTorch .pth/.pt file to convert.")
flags.DEFINE_string("arch", None, "Registered classifier name, e.g. resnet34.")
flags.DEFINE_integer("num_classes", None, "Number of classes.")
flags.DEFINE_string("out", None, "Teacher directory to write.")
flags.DEFINE_string("dataset", "", "Dataset name; sets the default mean/std "
                    f"({', '.join(DATASET_NORMALIZATION)}).")
flags.DEFINE_list("mean", None, "Per-channel input mean (overrides the dataset's).")
flags.DEFINE_list("std", None, "Per-channel input std (overrides the dataset's).")
flags.DEFINE_integer("channels", None, "Input channels (default: 1 for MNIST/LeNet, "
                     "else 3).")
flags.DEFINE_float("test_accuracy", None, "Published test accuracy in percent.")
flags.DEFINE_bool("overwrite", False, "Replace an existing teacher at --out.")
flags.DEFINE_bool("trust_checkpoint", False, "Unpickle arbitrary objects in the "
                  "checkpoint (torch.load weights_only=False). Only for trusted files.")


def _torch_module_name(arch: str, flax_path: tuple[str, ...]) -> str:
  """PyTorch module name of the Flax module at ``flax_path`` (see module docstring)."""
  name = flax_path[0]
  if arch.startswith("resnet"):
    torchvision = arch.endswith("_64")
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
  if arch.startswith("wrn"):
    if name.startswith("block"):
      group, block = name[len("block"):].split("_")
      sub = "convShortcut" if flax_path[1] == "shortcut_conv" else flax_path[1]
      return f"block{group}.layer.{block}.{sub}"
    return name
  return ".".join(flax_path)


_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  """OIHW conv weights -> HWIO; ``[out, in]`` linear weights -> ``[in, out]``."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def state_dict_to_variables(state_dict: Mapping[str, Any], arch: str, num_classes: int,
                            input_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Maps a PyTorch ``state_dict`` onto the Flax variables of ``arch``.

  Args:
    state_dict: name -> tensor/array (``module.`` prefixes already allowed).
    arch: registered classifier name.
    num_classes: number of logits.
    input_shape: ``(H, W, C)`` input of the classifier.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` of float32 arrays.

  Raises:
    ValueError: naming missing, unexpected and mis-shaped PyTorch arrays.
  """
  module = models.get(arch, num_classes=num_classes, input_shape=input_shape)
  abstract = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  source = {}
  for key, value in state_dict.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if key.endswith("num_batches_tracked"):
      continue
    source[key] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach")
                             else value, np.float32)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))
  converted, used, missing, mismatched = {}, set(), [], []
  for path, leaf in flat.items():
    collection, module_path, leaf_name = path[0], path[1:-1], path[-1]
    key = (f"{_torch_module_name(arch, module_path)}."
           f"{_LEAF_NAMES[(collection, leaf_name)]}")
    if key not in source:
      missing.append(key)
      continue
    used.add(key)
    value = _to_flax_layout(source[key])
    if value.shape != tuple(leaf.shape):
      mismatched.append(f"{key}: torch {source[key].shape} -> {value.shape}, "
                        f"{arch} expects {tuple(leaf.shape)}")
      continue
    converted[path] = jnp.asarray(value)
  unexpected = sorted(set(source) - used)
  problems = []
  if missing:
    problems.append(f"missing keys {sorted(missing)}")
  if unexpected:
    problems.append(f"unexpected keys {unexpected}")
  if mismatched:
    problems.append(f"shape mismatches {mismatched}")
  if problems:
    raise ValueError(f"PyTorch state_dict does not match {arch!r} with {num_classes} "
                     "classes: " + "; ".join(problems))
  variables = flax.traverse_util.unflatten_dict(converted)
  return {"params": variables.get("params", {}),
          "batch_stats": variables.get("batch_stats", {})}


def load_torch_state_dict(path: str | os.PathLike,
                          trust_checkpoint: bool = False) -> dict[str, Any]:
  """Reads a PyTorch checkpoint and returns its state dict.

  Args:
    path: ``.pth``/``.pt`` file: a state dict or a dict with ``state_dict``/``model``.
    trust_checkpoint: allow arbitrary pickled objects (``weights_only=False``).

  Returns:
    name -> tensor, ``module.`` prefixes stripped.
  """
  import torch  # pylint: disable=g-import-not-at-top; test-only dependency.

  if not os.path.isfile(path):
    raise FileNotFoundError(f"PyTorch checkpoint {path} not found")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
  except Exception as e:  # pylint: disable=broad-except
    if trust_checkpoint:
      raise
    raise ValueError(f"Could not read {path} with torch.load(weights_only=True): {e}. "
                     "If the file is trusted, pass --trust_checkpoint.") from e
  for wrapper in ("state_dict", "model"):
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
      checkpoint = checkpoint[wrapper]
      break
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
  return {(k[len("module."):] if k.startswith("module.") else k): v
          for k, v in checkpoint.items()}


def convert(torch_checkpoint: str | os.PathLike, arch: str, num_classes: int,
            out: str | os.PathLike, dataset: str = "",
            mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
            channels: int | None = None, test_accuracy: float | None = None,
            overwrite: bool = False, trust_checkpoint: bool = False
            ) -> teacher_lib.TeacherMeta:
  """Converts a PyTorch checkpoint into a teacher directory.

  Args:
    torch_checkpoint: the PyTorch file.
    arch: registered classifier name.
    num_classes: number of logits.
    out: teacher directory to write (via :func:`dfkd_jax.teacher.save_teacher`).
    dataset: dataset name, used for default ``mean``/``std``.
    mean: per-channel input mean; default from ``dataset``.
    std: per-channel input std; default from ``dataset``.
    channels: input channels; default from the architecture / ``mean``.
    test_accuracy: published accuracy (percent) to record.
    overwrite: replace an existing teacher.
    trust_checkpoint: see :func:`load_torch_state_dict`.

  Returns:
    The metadata written.
  """
  if not models.is_classifier(arch):
    raise ValueError(f"--arch {arch!r} is not a classifier")
  if mean is None or std is None:
    if dataset not in DATASET_NORMALIZATION:
      raise ValueError(f"No mean/std given and no defaults for dataset {dataset!r}; "
                       f"known datasets: {', '.join(DATASET_NORMALIZATION)}")
    default_mean, default_std = DATASET_NORMALIZATION[dataset]
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
  if channels is None:
    channels = len(mean)
  input_shape = models.input_shape(arch, channels)
  state_dict = load_torch_state_dict(torch_checkpoint, trust_checkpoint)
  variables = state_dict_to_variables(state_dict, arch, num_classes, input_shape)
  meta = teacher_lib.TeacherMeta(
      arch=arch, num_classes=num_classes, input_shape=input_shape, mean=tuple(mean),
      std=tuple(std), dataset=dataset, test_accuracy=test_accuracy,
      source=f"converted from PyTorch {os.path.basename(torch_checkpoint)}")
  teacher_lib.save_teacher(out, variables, meta, overwrite=overwrite)
  return meta


def main(argv: list[str]) -> None:
  del argv
  for name in ("torch_checkpoint", "arch", "num_classes", "out"):
    if getattr(_FLAGS, name) is None:
      raise app.UsageError(f"--{name} is required")
  meta = convert(
      _FLAGS.torch_checkpoint, _FLAGS.arch, _FLAGS.num_classes, _FLAGS.out,
      dataset=_FLAGS.dataset,
      mean=None if _FLAGS.mean is None else tuple(float(m) for m in _FLAGS.mean),
      std=None if _FLAGS.std is None else tuple(float(s) for s in _FLAGS.std),
      channels=_FLAGS.channels, test_accuracy=_FLAGS.test_accuracy,
      overwrite=_FLAGS.overwrite, trust_checkpoint=_FLAGS.trust_checkpoint)
  print(f"Wrote teacher {meta.arch} ({meta.num_classes} classes, input "
        f"{meta.input_shape}) to {_FLAGS.out}")


if __name__ == "__main__":
  app.run(main)

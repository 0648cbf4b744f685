"""Import a published PyTorch teacher into the teacher checkpoint format.

The logic of ``python -m dfkd_jax.convert``; its usage, flags and outputs are in
:mod:`dfkd_jax.convert` (what ``--help`` shows).
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax import models
from dfkd_jax.data import datasets as data
from dfkd_jax.interop import torch_layout
from dfkd_jax.models import teacher as teacher_lib

# Input normalisation the peers' published teachers were trained with (CMI
# ``registry.NORMALIZE_DICT``, DAFL/DFAD), per `dfkd_jax.data.datasets` source; the other sources
# default to the constants of `dfkd_jax.data.datasets.SPECS`.
DATASET_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn_cropped": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "mnist": ((0.1307,), (0.3081,)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
INSTALL_TORCH = 'pip install -e ".[convert]"'
# Largest |logit difference| / max |PyTorch logit| the check accepts. Exact weights give
# ~1e-6; PIL's uint8 rounding of a bilinear resize ~2e-3; resize instead of pad ~0.3.
DEFAULT_CHECK_TOLERANCE = 1e-2


def default_normalization(dataset_id: str
                          ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """``(mean, std)`` a converted teacher of ``dataset_id`` gets unless told otherwise.

  The peers' constants (:data:`DATASET_NORMALIZATION`) for their datasets, else the
  dataset's own (:data:`dfkd_jax.data.datasets.SPECS`); every variant (``mnist:pad``) takes the
  constants of its source.

  Raises:
    ValueError: unknown dataset id, naming the valid ones, or a ``folder:``/``npz:``
      dataset (which has no standard normalisation).
  """
  spec = data.get_dataset(dataset_id).spec
  if not spec.mean and spec.name not in DATASET_NORMALIZATION:
    raise ValueError(f"--dataset={spec.name} has no standard normalisation; pass --mean "
                     "and --std (the Normalize() the PyTorch teacher was trained with)")
  return DATASET_NORMALIZATION.get(spec.name, (spec.mean, spec.std))


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
  module = models.get(arch, num_classes=num_classes, input_shape=input_shape,
                      label="--arch")
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
    key = (f"{torch_layout.module_name(arch, module_path)}."
           f"{torch_layout.LEAF_NAMES[(collection, leaf_name)]}")
    if key not in source:
      missing.append(key)
      continue
    used.add(key)
    value = torch_layout.to_flax_layout(source[key])
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


def _import_torch():
  """``torch``, or a one-line ``ModuleNotFoundError`` saying how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top; optional dependency.
  except ImportError as e:
    raise ModuleNotFoundError(
        f"reading a PyTorch checkpoint needs torch, which is not installed ({e}): "
        f"{INSTALL_TORCH} (the CPU build is enough)") from e
  return torch


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def load_torch_state_dict(path: str | os.PathLike,
                          trust_checkpoint: bool = False) -> dict[str, Any]:
  """Reads a PyTorch checkpoint and returns its state dict.

  Args:
    path: ``.pth``/``.pt`` file: a state dict or a dict with ``state_dict``/``model``.
    trust_checkpoint: allow arbitrary pickled objects (``weights_only=False``).

  Returns:
    name -> tensor, ``module.`` prefixes stripped.

  Raises:
    FileNotFoundError: no such file.
    ModuleNotFoundError: torch is not installed (the message says how to install it).
    ValueError: not a PyTorch checkpoint, one that needs ``trust_checkpoint``, or one
      that holds no state dict.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PyTorch checkpoint {path} not found")
  torch = _import_torch()
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
  except pickle.UnpicklingError as e:
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if unsupported and not trust_checkpoint:
      raise ValueError(f"{path} pickles {unsupported.group(1)} besides tensors, which "
                       "torch.load(weights_only=True) refuses; if the file is trusted, "
                       "pass --trust_checkpoint") from e
    raise ValueError(f"{path} is not a PyTorch checkpoint (torch.load: "
                     f"{_first_line(e)})") from e
  except (EOFError, RuntimeError, ValueError, IndexError, KeyError, TypeError,
          AttributeError, ImportError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a PyTorch checkpoint (torch.load: "
                     f"{_first_line(e)})") from e
  for wrapper in ("state_dict", "model"):
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
      checkpoint = checkpoint[wrapper]
      break
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
  return {(k[len("module."):] if k.startswith("module.") else k): v
          for k, v in checkpoint.items()}


# ---------------------------------------------------------------------------
# --check_inputs: the converted teacher against the logits PyTorch gave.
# ---------------------------------------------------------------------------


class CheckInputs(NamedTuple):
  """A ``--check_inputs`` file: ``kind`` is ``"images"`` (as stored) or ``"inputs"``."""

  path: str
  kind: str
  x: np.ndarray  # NHWC.
  logits: np.ndarray  # float32 [N, classes].


class LogitCheck(NamedTuple):
  """How the converted teacher's logits compare with PyTorch's."""

  examples: int
  max_abs_diff: float
  relative_diff: float  # max_abs_diff / max |PyTorch logit|.
  top1_agreement: float  # Percent of examples with the same argmax.


def _as_nhwc(array: np.ndarray, hwc: tuple[int, int, int], what: str) -> np.ndarray:
  """``[N, H, W, C]`` from NHWC, NCHW (PyTorch) or, for one channel, ``[N, H, W]``."""
  h, w, c = hwc
  if array.ndim == 3 and c == 1 and array.shape[1:] == (h, w):
    return array[..., None]
  if array.ndim == 4 and array.shape[1:] == (h, w, c):
    return array
  if array.ndim == 4 and array.shape[1:] == (c, h, w):
    return array.transpose(0, 2, 3, 1)
  raise ValueError(f"{what} has shape {array.shape}; expected [N, {c}, {h}, {w}] "
                   f"(PyTorch) or [N, {h}, {w}, {c}]")


def load_check_inputs(path: str | os.PathLike, meta: teacher_lib.TeacherMeta
                      ) -> CheckInputs:
  """Reads and validates a ``--check_inputs`` file for a teacher with ``meta``.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not an ``.npz``, missing/extra arrays or shapes that do not fit.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--check_inputs file {path} not found")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"--check_inputs {path} is not an .npz of arrays "
                     f"({_first_line(e)}); write it with np.savez") from e
  kinds = [k for k in ("images", "inputs") if k in arrays]
  if "logits" not in arrays or len(kinds) != 1:
    raise ValueError(f"--check_inputs {path} holds {sorted(arrays)}; it needs `logits` "
                     "and one of `images` (as the dataset stores them) or `inputs` (as "
                     "the PyTorch network got them)")
  kind, logits = kinds[0], np.asarray(arrays["logits"], np.float32)
  spec = data.get_dataset(meta.dataset).spec
  hwc = spec.image_shape if kind == "images" else meta.input_shape
  x = _as_nhwc(arrays[kind], hwc, f"--check_inputs {path} `{kind}`")
  if logits.shape != (len(x), meta.num_classes):
    raise ValueError(f"--check_inputs {path} `logits` has shape {logits.shape}; "
                     f"expected [{len(x)}, {meta.num_classes}] (one row per `{kind}`)")
  return CheckInputs(path, kind, x, logits)


def check_logits(module, variables: Mapping[str, Any], meta: teacher_lib.TeacherMeta,
                 check: CheckInputs, tolerance: float = DEFAULT_CHECK_TOLERANCE,
                 batch_size: int = 256) -> LogitCheck:
  """Runs the converted teacher on ``check`` and compares with PyTorch's logits.

  ``images`` go through the preprocessing evaluation applies to the teacher's dataset
  (:func:`dfkd_jax.data.datasets.eval_rows`: ``meta.dataset``, ``meta.input_shape``,
  ``meta.mean``/``std``); ``inputs`` are fed as they are. Float32 matmuls at full
  precision.

  Raises:
    ValueError: ``max |difference| > tolerance * max |PyTorch logit|``, with the
      numbers and what to check.
  """
  dataset = data.get_dataset(meta.dataset)
  apply = jax.jit(functools.partial(module.apply, train=False))
  logits = []
  with jax.default_matmul_precision("highest"):
    for start in range(0, len(check.x), batch_size):
      x = check.x[start:start + batch_size]
      if check.kind == "images":
        x = data.preprocess(x, dataset, pixel_max=dataset.spec.pixel_max,
                            image_shape=meta.input_shape,
                            normalization=(meta.mean, meta.std))
      logits.append(np.asarray(apply(variables, jnp.asarray(x, jnp.float32))))
  logits = np.concatenate(logits)
  diff = float(np.max(np.abs(logits - check.logits)))
  result = LogitCheck(len(logits), diff,
                      diff / max(float(np.max(np.abs(check.logits))), 1e-12),
                      100.0 * float(np.mean(logits.argmax(-1) ==
                                            check.logits.argmax(-1))))
  if not result.relative_diff <= tolerance:
    hint = ("the weights differ from the ones that gave these logits" if
            check.kind == "inputs" else
            f"check the preprocessing: --dataset={dataset.id} evaluates with "
            f"{_pipeline(dataset, meta)}; is that how PyTorch preprocessed `images`? "
            "(or the weights differ: `inputs` checks them alone)")
    raise ValueError(
        f"the converted teacher disagrees with --check_inputs {check.path}: max |logit "
        f"difference| {result.max_abs_diff:.3g} = {result.relative_diff:.3g} of the "
        f"largest |PyTorch logit| > --check_tolerance={tolerance:g} on "
        f"{result.examples} `{check.kind}` (top-1 agreement {result.top1_agreement:.2f}%)"
        f"; {hint}; nothing written")
  return result


def _pipeline(dataset: data.Dataset, meta: teacher_lib.TeacherMeta) -> str:
  """The evaluation preprocessing of a teacher, in words."""
  h, w, _ = dataset.spec.image_shape
  steps = [f"/ {dataset.spec.pixel_max:g}"]
  if tuple(meta.input_shape[:2]) != (h, w):
    steps.append(f"{'zero-pad' if dataset.upscale == 'pad' else 'bilinear resize'} "
                 f"{h}x{w} -> {meta.input_shape[0]}x{meta.input_shape[1]}")
  steps.append(f"normalise mean {list(meta.mean)} std {list(meta.std)}")
  return ", ".join(steps)


# ---------------------------------------------------------------------------
# The conversion.
# ---------------------------------------------------------------------------


def convert(torch_checkpoint: str | os.PathLike, arch: str, num_classes: int,
            out: str | os.PathLike, dataset: str,
            mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
            channels: int | None = None, test_accuracy: float | None = None,
            overwrite: bool = False, trust_checkpoint: bool = False,
            check_inputs: str | os.PathLike | None = None,
            check_tolerance: float = DEFAULT_CHECK_TOLERANCE,
            log: Callable[[str], None] = lambda message: None,
            class_names: Sequence[str] | None = None
            ) -> teacher_lib.TeacherMeta:
  """Converts a PyTorch checkpoint into a teacher directory.

  Every argument is checked before the checkpoint is read; nothing is written unless
  the conversion (and the optional logit check) succeeds.

  Args:
    torch_checkpoint: the PyTorch file.
    arch: registered classifier name.
    num_classes: number of logits.
    out: teacher directory to write (via :func:`dfkd_jax.models.teacher.save_teacher`).
    dataset: dataset id (:func:`dfkd_jax.data.datasets.get_dataset`) the teacher was trained on,
      recorded for evaluation; sets the default ``mean``/``std``.
    mean: per-channel input mean; default :func:`default_normalization`.
    std: per-channel input std; default :func:`default_normalization`.
    channels: input channels; default: the dataset's.
    test_accuracy: published accuracy (percent) to record.
    overwrite: replace an existing teacher.
    trust_checkpoint: see :func:`load_torch_state_dict`.
    check_inputs: optional ``.npz`` for :func:`check_logits` (see the module doc).
    check_tolerance: the largest relative logit difference the check accepts.
    log: receives a line with the check's result.
    class_names: the teacher's class names by output; default the dataset's (when it
      names ``num_classes`` classes). Recorded in the teacher.

  Returns:
    The metadata written.

  Raises:
    ValueError: bad arguments, a checkpoint that does not fit ``arch`` or a failed
      check, each naming the values.
    FileExistsError: ``out`` exists and ``overwrite`` is false.
    FileNotFoundError: missing checkpoint or check file.
    ModuleNotFoundError: torch is not installed.
  """
  models.resolve(arch, "classifier", "--arch")
  _check_numbers(test_accuracy, channels, check_tolerance)
  parsed = data.get_dataset(dataset)
  dataset_spec, dataset_id = parsed.spec, parsed.id
  if mean is None or std is None:
    default_mean, default_std = default_normalization(dataset_id)
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
  channels = dataset_spec.image_shape[2] if channels is None else channels
  try:
    input_shape = models.input_shape(arch, channels, data_shape=dataset_spec.image_shape)
  except ValueError as e:
    raise ValueError(f"--arch={arch} does not fit --dataset={dataset_id} ({channels} "
                     f"channels): {e}") from None
  meta = teacher_lib.TeacherMeta(
      arch=arch, num_classes=num_classes, input_shape=input_shape, mean=tuple(mean),
      std=tuple(std), dataset=dataset_id, test_accuracy=test_accuracy,
      source=f"converted from PyTorch {os.path.basename(torch_checkpoint)}",
      class_names=_class_names(class_names, num_classes, dataset_spec))
  _check_fits(meta)
  teacher_lib.check_destination(out, "--out", overwrite)
  check = None if check_inputs is None else load_check_inputs(check_inputs, meta)
  state_dict = load_torch_state_dict(torch_checkpoint, trust_checkpoint)
  variables = state_dict_to_variables(state_dict, arch, num_classes, input_shape)
  if check is not None:
    module = models.get(arch, num_classes=num_classes, input_shape=input_shape)
    result = check_logits(module, variables, meta, check, check_tolerance)
    log(f"check: max |logit difference| {result.max_abs_diff:.3g} = "
        f"{result.relative_diff:.3g} of the largest |PyTorch logit| <= "
        f"{check_tolerance:g} on "
        f"{result.examples} `{check.kind}` of {check.path}, top-1 agreement "
        f"{result.top1_agreement:.2f}%")
  teacher_lib.save_teacher(out, variables, meta, overwrite=overwrite, flag="--out")
  return meta


def _check_numbers(test_accuracy: float | None, channels: int | None,
                   check_tolerance: float) -> None:
  """Raises ``ValueError`` for a number flag no teacher can have, naming it."""
  if test_accuracy is not None and not 0.0 <= test_accuracy <= 100.0:
    raise ValueError(f"--test_accuracy={test_accuracy:g} must be a percentage in [0, "
                     "100] (the published test accuracy), or leave it out")
  if channels is not None and channels < 1:
    raise ValueError(f"--channels={channels} must be at least 1 (1 for grayscale, 3 "
                     "for RGB), or leave it out for the dataset's")
  if not 0.0 < check_tolerance < float("inf"):
    raise ValueError(f"--check_tolerance={check_tolerance:g} must be a finite number > "
                     f"0 (default {DEFAULT_CHECK_TOLERANCE:g})")


def _class_names(given: Sequence[str] | None, num_classes: int,
                 spec: data.DatasetSpec) -> tuple[str, ...]:
  """``--class_names``, else the dataset's names when it has ``num_classes``."""
  if given:
    if len(given) != num_classes:
      raise ValueError(f"--class_names has {len(given)} names but --num_classes="
                       f"{num_classes}; give one name per class, in output order")
    return tuple(given)
  names = tuple(getattr(spec, "class_names", ()))
  return names if len(names) == num_classes else ()


def _check_fits(meta: teacher_lib.TeacherMeta) -> None:
  """Raises ``ValueError`` if classes or input shape do not fit ``meta.dataset``."""
  dataset = data.get_dataset(meta.dataset)
  data.check_class_names(meta, dataset.id)
  if meta.num_classes != dataset.spec.num_classes:
    raise ValueError(f"--num_classes={meta.num_classes} but --dataset={dataset.id} has "
                     f"{dataset.spec.num_classes} classes")
  valid = {dataset.spec.image_shape, data.model_input_shape(dataset.id, to_32x32=True)}
  if meta.input_shape not in valid:
    raise ValueError(f"--arch={meta.arch} takes {meta.input_shape} inputs but "
                     f"--dataset={dataset.id} gives "
                     f"{' or '.join(map(str, sorted(valid)))}")

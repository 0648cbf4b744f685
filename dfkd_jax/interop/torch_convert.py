"""``convert --torch_module``: a PyTorch ``nn.Module`` and its weights, kept as they are.

The teacher directory records the module's import path and keyword arguments, its
``state_dict`` and the preprocessing (:func:`dfkd_jax.models.teacher.save_torch_teacher`);
``train`` then runs the module itself through torchax
(:mod:`dfkd_jax.models.torch_module`): no Flax port.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from dfkd_jax.data import datasets as data
from dfkd_jax.interop import convert as convert_lib
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.models import torch_module


def convert(torch_module_path: str, torch_checkpoint: str | os.PathLike,
            out: str | os.PathLike, dataset: str,
            torch_kwargs: str | Mapping[str, Any] | None = None,
            num_classes: int | None = None,
            mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
            test_accuracy: float | None = None, overwrite: bool = False,
            trust_checkpoint: bool = False,
            check_inputs: str | os.PathLike | None = None,
            check_tolerance: float = convert_lib.DEFAULT_CHECK_TOLERANCE,
            log: Callable[[str], None] = lambda message: None
            ) -> teacher_lib.TeacherMeta:
  """Writes a teacher directory that runs ``torch_module_path`` through torchax.

  Every argument is checked before anything is written: the module imports and builds,
  the checkpoint's ``state_dict`` fits it (keys and shapes), the module runs on the
  dataset's input shape (abstractly: no compile) and gives ``[N, num_classes]`` logits,
  and, with ``check_inputs``, it reproduces PyTorch's logits
  (:func:`dfkd_jax.interop.convert.check_logits`).

  Args:
    torch_module_path: ``package.module:NAME``, an ``nn.Module`` class or factory.
    torch_checkpoint: the ``.pth``/``.pt`` file of its ``state_dict``
      (:func:`dfkd_jax.interop.convert.load_torch_state_dict`).
    out: the teacher directory.
    dataset: dataset id the teacher was trained on (sets the preprocessing).
    torch_kwargs: keyword arguments of ``NAME``, a JSON object (text) or a dict.
    num_classes: number of logits; default the dataset's.
    mean: per-channel input mean; default the dataset's.
    std: per-channel input std; default the dataset's.
    test_accuracy: published accuracy (percent) to record.
    overwrite: replace an existing teacher.
    trust_checkpoint: unpickle arbitrary objects in the checkpoint.
    check_inputs: optional ``.npz`` of PyTorch's logits (see ``convert --help``).
    check_tolerance: the largest relative logit difference the check accepts.
    log: receives the check's result.

  Returns:
    The metadata written.

  Raises:
    ValueError: each failure in one line naming the value and the fix.
    FileExistsError, FileNotFoundError: as :func:`dfkd_jax.interop.convert.convert`.
    ModuleNotFoundError: torch or torchax is not installed.
  """
  kwargs = torch_module.parse_kwargs(torch_kwargs, "--torch_kwargs")
  parsed = data.get_dataset(dataset)
  num_classes = parsed.spec.num_classes if num_classes is None else num_classes
  if mean is None or std is None:
    default_mean, default_std = convert_lib.default_normalization(parsed.id)
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
  meta = teacher_lib.TeacherMeta(
      arch=f"torch:{torch_module_path}", num_classes=num_classes,
      input_shape=parsed.spec.image_shape, mean=tuple(mean), std=tuple(std),
      dataset=parsed.id, test_accuracy=test_accuracy,
      source=f"PyTorch module {torch_module_path}, weights "
             f"{os.path.basename(torch_checkpoint)}",
      torch={"module": torch_module_path, "kwargs": kwargs})
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"teacher directory {out} already exists; pass --overwrite "
                          "(overwrite=True) to replace it")
  teacher = torch_module.teacher_of(meta.torch, "--torch_module")
  check = (None if check_inputs is None else
           convert_lib.load_check_inputs(check_inputs, meta))
  state_dict = convert_lib.load_torch_state_dict(torch_checkpoint, trust_checkpoint)
  variables = torch_module.variables_from_state_dict(state_dict, teacher)
  torch_module.check_runs(teacher, variables, meta.input_shape, meta.num_classes,
                          f"--torch_module={torch_module_path}",
                          "pass --num_classes or --torch_kwargs that fit --dataset")
  if check is not None:
    result = convert_lib.check_logits(teacher, variables, meta, check, check_tolerance)
    log(f"check: max |logit difference| {result.max_abs_diff:.3g} = "
        f"{result.relative_diff:.3g} of the largest |PyTorch logit| <= "
        f"{check_tolerance:g} on {result.examples} `{check.kind}` of {check.path}, "
        f"top-1 agreement {result.top1_agreement:.2f}%")
  teacher_lib.save_torch_teacher(out, state_dict, meta, overwrite=overwrite)
  return meta

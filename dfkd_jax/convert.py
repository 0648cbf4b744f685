r"""Import a PyTorch teacher into the teacher checkpoint format.

Your own ``nn.Module`` as it is, run through torchax (no Flax code;
``pip install -e ".[torch_module]"``)::

  python -m dfkd_jax.convert --torch_module=my_nets:Net --torch_checkpoint=net.pth \
      [--torch_kwargs='{"num_classes": 10}'] --dataset=DATASET --out=teachers/mine \
      [--check_inputs=check.npz]

``my_nets`` must import wherever the teacher is read (``PYTHONPATH``); the teacher
directory records the import path, the keyword arguments, the ``state_dict`` and the
preprocessing. A Flax port of the architecture (a registered ``--arch`` or your own
``--arch=package.module:Name``) needs neither torch nor torchax at run time; usage::

  python -m dfkd_jax.convert --torch_checkpoint=cifar10_resnet34.pth \
      --arch=resnet34 --num_classes=10 --dataset=cifar10 --out=teachers/cifar10_resnet34 \
      [--check_inputs=check.npz]

Reading the checkpoint needs PyTorch (the CPU build is enough):
``pip install -e ".[convert]"``.

Reads a ``state_dict`` as the peers publish it: CMI/DataFree ``{dataset}_{arch}.pth``
files (``{"state_dict": ...}``), DFAD ``resnet34_8x`` checkpoints or a plain state dict;
``module.`` prefixes of ``DataParallel`` are stripped. Every array of the Flax
architecture must be found with the right shape and every PyTorch array must be used
(``num_batches_tracked`` counters excepted); otherwise a ``ValueError`` names the keys.

``--dataset`` is a :func:`dfkd_jax.data.datasets.get_dataset` id and is recorded in the teacher:
evaluation preprocesses the test set the way it names. Your own data is
``--dataset=folder:PATH`` (torchvision's ImageFolder layout: ``PATH/test/<class>/*.png``,
JPEG and the other image types too) or ``--dataset=npz:FILE`` (arrays ``x_test``,
``y_test``, optionally ``classes``); neither has a standard normalisation, so pass the
teacher's ``--mean``/``--std`` (docs/data.md). For a 28x28 source and a 32x32
network (LeNet-5) ``mnist`` means bilinear resizing (torchvision ``Resize((32, 32))``, as
DAFL trains) and ``mnist:pad`` zero-padding by 2 pixels (``Pad(2)``); the mean/std
default to the dataset's (:func:`default_normalization`), ``--mean``/``--std`` override.
The teacher records its class names: ``--class_names`` (the teacher's classes in the
order of its outputs, e.g. PyTorch ``ImageFolder``'s ``dataset.classes``), which must
equal the ``folder:``/``npz:`` dataset's, or else the dataset's names; distillation and
export then refuse a dataset whose names differ (:func:`dfkd_jax.data.datasets.check_class_names`).

``--check_inputs=FILE.npz`` runs the converted teacher on inputs PyTorch saw and compares
its logits with the ones PyTorch gave, before anything is written: ``logits`` ``[N,
classes]`` and either ``images``, the test images as the dataset stores them (uint8
``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``; preprocessed here as evaluation
will, so this checks ``--dataset``/``--mean``/``--std`` too), or ``inputs``, the
preprocessed tensors the PyTorch network got (``[N, C, H, W]`` or ``[N, H, W, C]``;
checks the weights only). See the README for the one-liner that writes it.

PyTorch names understood per architecture (:mod:`dfkd_jax.interop.torch_layout`):

* ``resnet18/34``: CMI / DFAD ``conv1, bn1, layer{s}.{b}.{conv1,bn1,conv2,bn2},
  layer{s}.{b}.shortcut.{0,1}, linear``;
* ``resnet18_64/34_64``: LRA ``MyResNet`` (torchvision inside): ``resnet.conv1, ...,
  layer{s}.{b}.downsample.{0,1}, resnet.fc``;
* ``wrn*``: CMI ``conv1, block{g}.layer.{b}.{bn1,conv1,bn2,conv2,convShortcut}, bn1,
  fc``;
* ``lenet5*``: DAFL/DFAD ``conv1..3, fc1, fc2``; ``digits_cnn*``: ``conv{i}, bn{i}, fc``;
* your own classifier (``--arch=package.module:Name``, ``docs/contracts.md``): the Flax
  module path joined with dots (a submodule ``fc`` is PyTorch's ``fc``, ``block1`` >
  ``conv`` is ``block1.conv``), ``kernel``/``scale`` as ``weight``, BatchNorm ``mean``/
  ``var`` as ``running_mean``/``running_var``.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from dfkd_jax.data import datasets as data
from dfkd_jax.interop import convert
from dfkd_jax.interop import torch_convert


_FLAGS = flags.FLAGS
flags.DEFINE_string("torch_module", None, "Your PyTorch classifier as package.module:NAME "
                    "(an nn.Module class or a function returning one), run as it is "
                    "through torchax: no Flax port. Instead of --arch.")
flags.DEFINE_string("torch_kwargs", None, "JSON object of keyword arguments for "
                    "--torch_module's NAME, e.g. '{\"num_classes\": 10}'.")
flags.DEFINE_string("torch_checkpoint", None, "PyTorch .pth/.pt file to convert.")
flags.DEFINE_string("arch", None, "Registered classifier name, e.g. resnet34, or your "
                    "own Flax classifier as package.module:Name (its submodule names "
                    "are the PyTorch module names).")
flags.DEFINE_integer("num_classes", None, "Number of classes.")
flags.DEFINE_string("out", None, "Teacher directory to write.")
flags.DEFINE_string("dataset", None, "Dataset the teacher was trained on; sets the "
                    "evaluation preprocessing and the default mean/std. One of "
                    f"{', '.join(data.dataset_ids())} (':pad' zero-pads 28x28 to 32x32 "
                    "instead of resizing), or your own data: folder:PATH (ImageFolder "
                    "layout, PATH/test/<class>/*.png) or npz:FILE (arrays x_test, "
                    "y_test); these have no standard mean/std: pass --mean and --std.")
flags.DEFINE_list("mean", None, "Per-channel input mean (overrides the dataset's).")
flags.DEFINE_list("std", None, "Per-channel input std (overrides the dataset's).")
flags.DEFINE_integer("channels", None, "Input channels (default: the dataset's).")
flags.DEFINE_float("test_accuracy", None, "Published test accuracy in percent.")
flags.DEFINE_list("class_names", None, "The teacher's class names in the order of its "
                  "outputs (PyTorch ImageFolder's dataset.classes), comma separated; "
                  "checked against --dataset's and recorded. Default: --dataset's names.")
flags.DEFINE_bool("overwrite", False, "Replace an existing teacher at --out.")
flags.DEFINE_bool("trust_checkpoint", False, "Unpickle arbitrary objects in the "
                  "checkpoint (torch.load weights_only=False). Only for trusted files.")
flags.DEFINE_string("check_inputs", None, ".npz with `logits` PyTorch gave on `images` "
                    "(as stored) or `inputs` (preprocessed); the teacher is written only "
                    "if the converted one agrees.")
flags.DEFINE_float("check_tolerance", convert.DEFAULT_CHECK_TOLERANCE, "Largest max |logit "
                   "difference| / max |PyTorch logit| --check_inputs accepts.")


def _floats(values: list[str] | None, flag: str) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)} must be comma-separated numbers, "
                     "one per channel") from None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _FLAGS.torch_module and _FLAGS.arch:
    raise app.UsageError("pass --torch_module (the PyTorch module as it is) or --arch "
                         "(a Flax port), not both")
  required = ("torch_checkpoint", "out", "dataset") + (
      () if _FLAGS.torch_module else ("arch", "num_classes"))
  for name in required:
    if getattr(_FLAGS, name) is None:
      raise app.UsageError(f"--{name} is required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of the save at INFO.
  try:
    meta = _convert_torch_module() if _FLAGS.torch_module else convert.convert(
        _FLAGS.torch_checkpoint, _FLAGS.arch, _FLAGS.num_classes, _FLAGS.out,
        dataset=_FLAGS.dataset, mean=_floats(_FLAGS.mean, "mean"),
        std=_floats(_FLAGS.std, "std"), channels=_FLAGS.channels,
        test_accuracy=_FLAGS.test_accuracy, overwrite=_FLAGS.overwrite,
        trust_checkpoint=_FLAGS.trust_checkpoint, check_inputs=_FLAGS.check_inputs,
        check_tolerance=_FLAGS.check_tolerance, log=print,
        class_names=_FLAGS.class_names)
  except (ValueError, KeyError, FileExistsError, FileNotFoundError,
          ImportError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise SystemExit("error: " + " ".join(str(message).split())) from None
  print(f"Wrote teacher {meta.arch} ({meta.num_classes} classes, input "
        f"{meta.input_shape}, dataset {meta.dataset}, mean {list(meta.mean)}, std "
        f"{list(meta.std)}) to {_FLAGS.out}")


def _convert_torch_module():
  """``--torch_module``: :func:`dfkd_jax.interop.torch_convert.convert`."""
  return torch_convert.convert(
      _FLAGS.torch_module, _FLAGS.torch_checkpoint, _FLAGS.out, dataset=_FLAGS.dataset,
      torch_kwargs=_FLAGS.torch_kwargs, num_classes=_FLAGS.num_classes,
      mean=_floats(_FLAGS.mean, "mean"), std=_floats(_FLAGS.std, "std"),
      test_accuracy=_FLAGS.test_accuracy, overwrite=_FLAGS.overwrite,
      trust_checkpoint=_FLAGS.trust_checkpoint, check_inputs=_FLAGS.check_inputs,
      check_tolerance=_FLAGS.check_tolerance, log=print)


if __name__ == "__main__":
  app.run(main)

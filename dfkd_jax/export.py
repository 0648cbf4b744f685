r"""Export a run's distilled student: ONNX, a PyTorch state_dict or a Flax folder.

Usage::

  python -m dfkd_jax.export --workdir=W --format=onnx|torch|flax --out=PATH \
      [--seed=K] [--checkpoint=STEP] [--overwrite]

* ``onnx`` (jax2onnx; ``pip install -e ".[export]"``): one ``.onnx`` file, input
  ``images`` ``[batch, C, H, W]`` normalised with the card's mean/std, output
  ``logits`` ``[batch, classes]``; the card is in the model's metadata
  (``dfkd_jax.student``). Before it is written the file is run in onnxruntime on the
  run's test set (its ``config.dataset``: a built-in id, or its own ``folder:PATH`` /
  ``npz:FILE`` data, read again from the path the run recorded); the command prints
  the largest logit difference to the JAX student and both accuracies, and refuses a
  model whose logits differ by more than :data:`ONNX_TOLERANCE` of the largest logit.
* ``torch``: a ``.pth`` of ``{"state_dict": ..., "student": card}`` (the CMI layout
  ``convert`` reads, :data:`dfkd_jax.interop.torch_layout.TORCH_LAYOUTS`); ``python -m
  dfkd_jax.convert`` of it gives back the exported arrays exactly. The PyTorch classes
  are shipped: ``dfkd_jax.interop.torch_models.load(PATH)`` builds the student's (the
  last line names it, e.g. ``WideResNet(depth=16, widen_factor=2, ...)``) and loads the
  file with ``strict=True``. Input: normalised NCHW, as the PyTorch networks of the
  peers take it.
* ``flax``: a folder with ``student.json`` (the card) and ``variables/``;
  ``dfkd_jax.load_student(PATH)`` returns its predict function
  (:mod:`dfkd_jax.models.student_card`).

The run is read from its files alone: ``run_config.json`` (the student's architecture,
the teacher's classes, input shape and normalisation, the seeds) and the student's
``params``/``batch_stats`` of one orbax checkpoint (the rest of the training state is
not read; nothing is compiled but the student). ``--checkpoint`` defaults to the
student the run's data-free selection kept, as its ``summary.json`` records it
(``selected_epoch``: the criterion of the last train command, which may differ from
``run_config.json``'s; :mod:`dfkd_jax.metrics.selection`), and to the newest for ``last`` and
runs made before selection; a newest checkpoint that does not restore falls back to the
one before it, with a line, as training does. A run of replicas (``config.num_seeds >
1``) exports one seed per call (``--seed``). Bad input (no run or no checkpoint yet, a
damaged record or checkpoint, an unknown seed or step, an architecture the torch format
does not cover, an existing ``--out`` without ``--overwrite``, a moved test set) is one
line, before anything is written and before the conversion; ``--overwrite`` replaces
only an earlier export of the same format, never a run directory, a folder holding or
inside one, the current directory or an empty ``--out``
(:func:`dfkd_jax.core.workdir.check_output`). The output is written into a temporary sibling
and renamed into place.
"""

from __future__ import annotations

import pathlib
import time

from absl import app
from absl import flags
from absl import logging

from dfkd_jax.core import workdir as workdir_lib
from dfkd_jax.interop import export


_FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, defined only when it runs: the library (and a test
  process importing it beside `dfkd_jax.convert`, whose --out differs) defines none."""
  flags.DEFINE_string("workdir", None, "The run directory (python -m dfkd_jax.train).")
  flags.DEFINE_enum("format", None, export.FORMATS, "onnx: one .onnx file (checked in "
                    "onnxruntime on the test set); torch: a .pth state_dict in the layout "
                    "python -m dfkd_jax.convert reads; flax: a folder for "
                    "dfkd_jax.load_student.")
  flags.DEFINE_string("out", None, "The file (onnx, torch) or folder (flax) to write.")
  flags.DEFINE_integer("seed", None, "The replica to export (runs with num_seeds > 1).")
  flags.DEFINE_integer("checkpoint", None, "The checkpoint (step) to export; default "
                       "the one the run's selection criterion kept (the newest for "
                       "criterion last).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("workdir", "format", "out"):
    if getattr(_FLAGS, name) is None:
      raise app.UsageError(f"--{name} is required")
  # Orbax logs every step of a restore at INFO, and warns that the state folder of a
  # checkpoint has no metadata file of its own (the step folder has it).
  logging.set_verbosity(logging.ERROR)
  start = time.time()
  try:
    card = export.export(_FLAGS.workdir, _FLAGS.format, _FLAGS.out, seed=_FLAGS.seed,
                         checkpoint=_FLAGS.checkpoint, overwrite=_FLAGS.overwrite, log=print)
  except (export.ExportError, workdir_lib.OutputError, FileExistsError,
          ModuleNotFoundError) as e:
    raise SystemExit("error: " + " ".join(str(e).split())) from None
  accuracy = ("not evaluated at this step" if card.test_accuracy is None
              else f"{card.test_accuracy:.2f}%")
  out = pathlib.Path(_FLAGS.out).absolute()
  print(f"Wrote the {card.arch} student ({card.method}, seed {card.seed}, step "
        f"{card.step}, test accuracy {accuracy}) as {_FLAGS.format} to {out} in "
        f"{time.time() - start:.1f} s")
  if _FLAGS.format == "torch":
    print(_torch_usage(card, out))


def _torch_usage(card, out: pathlib.Path) -> str:
  """The line naming the PyTorch class that loads a torch export, and how."""
  from dfkd_jax.interop import torch_models  # pylint: disable=g-import-not-at-top  # torch.
  built = torch_models.describe(card.arch, card.num_classes, card.input_shape[-1])
  return (f"In PyTorch: dfkd_jax.interop.torch_models.load({str(out)!r}) builds {built}, "
          "loads the state_dict (strict) and returns it in eval mode; inputs: NCHW "
          f"normalised with mean {list(card.mean)} std {list(card.std)}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

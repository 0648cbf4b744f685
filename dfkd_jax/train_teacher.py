"""Trains a teacher classifier on real data and saves it as a teacher checkpoint.

Usage::

  python -m dfkd_jax.train_teacher --config=configs/teacher/mnist.py \\
      --workdir=/path/to/teacher [--config.num_epochs=3] [--config.overwrite=True]

The workdir *is* the teacher directory written by :func:`dfkd_jax.models.teacher.save_teacher`
(``teacher.json`` + ``variables/``); an existing teacher there is never replaced unless
``--config.overwrite=True``, and the check happens before training starts.

``--config=configs/teacher/NAME.py`` works from any folder (a ``configs/...`` path not
in the working directory is the repository's). ``--config.dataset`` is a built-in id
or your own data: ``folder:PATH`` (ImageFolder layout, ``PATH/train/<class>/*.png`` and
``PATH/test/<class>/*.png``) or ``npz:FILE`` (arrays ``x_train``, ``y_train``,
``x_test``, ``y_test``); see docs/data.md.

Training follows the peers' recipes: cross-entropy, SGD with momentum and coupled
(PyTorch-style) weight decay or Adam, a per-step cosine or step learning-rate schedule,
the dataset's standard augmentation. Batches are NumPy arrays from
:mod:`dfkd_jax.data.datasets`, sharded over all local devices along the batch axis.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dfkd_jax.run import run_config
from dfkd_jax.run import train_teacher


def main(argv: Sequence[str]) -> None:
  workdir = flags.FLAGS.workdir
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = run_config.loaded_config(
      flags.FLAGS.config,
      f"the teacher configs are in {run_config.CONFIGS_DIR / 'teacher'}")
  if config is None or not workdir:
    raise app.UsageError("--config and --workdir are required")
  logging.set_verbosity(logging.WARNING)  # As train: orbax logs every save at INFO.
  sys.stdout.reconfigure(line_buffering=True)  # Progress lines reach a log file at once.
  try:
    train_teacher.train_and_save(config, workdir)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    raise SystemExit(f"error: {e}") from None
  except KeyboardInterrupt:  # The teacher is written at the end, atomically: no half.
    print(f"Ctrl-C: stopped; no new teacher was written to {workdir}: rerun the same command "
          "to train it", file=sys.stderr)
    raise SystemExit(130) from None


if __name__ == "__main__":
  # Flags are defined only when run as a program, so that importing this module (the
  # distillation trainer trains missing teachers with it) defines no global flags.
  config_flags.DEFINE_config_file(
      "config", None, "Teacher config file, e.g. configs/teacher/mnist.py (a configs/ "
      "path not in the working directory is the repository's).",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Teacher directory to create.")
  app.run(main, flags_parser=train_teacher.parse_flags)

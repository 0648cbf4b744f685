"""Distils a frozen teacher into a student, data-free.

Usage::

  python -m dfkd_jax.train --config=configs/cifar10.py:method=lra_mb --workdir=runs/c10
  python -m dfkd_jax.train --config=configs/digits.py --workdir=runs/digits \\
      --config.num_epochs=3 --config.seed=1

Running the same command again resumes from the latest checkpoint in ``--workdir``.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dfkd_jax import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cifar10.py[:method].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and summaries go.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  try:
    result = trainer.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FileExistsError,
          trainer.NonFiniteLossError) as e:
    raise SystemExit(f"error: {e}") from None
  print(f"done: acc_max {result['acc_max']:.2f}%, summary in "
        f"{_WORKDIR.value}/{trainer.SUMMARY_FILE}")


if __name__ == "__main__":
  app.run(main)

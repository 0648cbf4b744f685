"""``python -m dfkd_jax.data ...``: the command line of :mod:`dfkd_jax.data.datasets`."""

from __future__ import annotations

from typing import Sequence

from dfkd_jax.data import datasets as data


def _cli_main(argv: Sequence[str]) -> None:
  """``python -m dfkd_jax.data prepare --dataset=... --archives=DIR --data_dir=DIR``."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if list(argv[1:]) != ["prepare"]:
    raise app.UsageError("usage: python -m dfkd_jax.data prepare --dataset=NAME "
                         "--archives=DIR --data_dir=DIR")
  try:
    path = data.prepare(flags.FLAGS.dataset, flags.FLAGS.archives, flags.FLAGS.data_dir)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(f"prepared {flags.FLAGS.dataset} in {path}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("dataset", None, "TFDS-backed dataset to prepare.", required=True)
  flags.DEFINE_string("archives", None, "Folder with the original archives.",
                      required=True)
  flags.DEFINE_string("data_dir", data.DEFAULT_DATA_DIR, "TFDS data directory.")
  app.run(_cli_main)

r"""Digits teacher: ``digits_cnn`` on scikit-learn's bundled 8x8 digits (no download).

  python -m dfkd_jax.train_teacher --config=configs/teacher/digits.py \
      --workdir=/tmp/teachers/digits

Reaches ~98% test accuracy in well under a minute on a CPU.
"""

from dfkd_jax.run import train_teacher


def get_config():
  """Returns the digits teacher config."""
  config = train_teacher.adam_config(train_teacher.default_config(), 3e-3)
  config.dataset = "digits"
  config.data_dir = ""  # Unused: digits ships with scikit-learn.
  config.model = "digits_cnn"
  config.num_epochs = 15
  config.batch_size = 64
  config.eval_batch_size = 512
  return config

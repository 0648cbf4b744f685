r"""Digits teacher: ``digits_cnn`` on scikit-learn's bundled 8x8 digits (no download).

  python -m dfkd_jax.train_teacher --config=configs/teacher/digits.py \
      --workdir=/tmp/teachers/digits

Reaches ~98% test accuracy in well under a minute on a CPU.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the digits teacher config."""
  config = ml_collections.ConfigDict()
  config.dataset = "digits"
  config.data_dir = ""  # Unused: digits ships with scikit-learn.
  config.model = "digits_cnn"
  config.num_epochs = 15
  config.batch_size = 64
  config.eval_batch_size = 512
  config.optimizer = "adam"
  config.learning_rate = 3e-3
  config.momentum = 0.0
  config.nesterov = False
  config.weight_decay = 0.0
  config.lr_schedule = "cosine"
  config.lr_decay_epochs = ()
  config.lr_decay_factor = 0.1
  config.augment = False
  config.seed = 0
  config.overwrite = False
  return config

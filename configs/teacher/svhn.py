r"""SVHN teacher: ResNet-34 on SVHN (cropped digits, train split only).

  python -m dfkd_jax.data prepare --dataset=svhn_cropped --archives=DIR \
      --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/svhn.py \
      --workdir=/tmp/teachers/svhn_resnet34 --config.data_dir=DATA_DIR

The CIFAR recipe (SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine decay)
with random 4-pixel-padded crops and no flips (digits are not mirror-symmetric), for 50
epochs (SVHN's train split is 73k images). ``svhn.py:wrn40_2`` selects WRN-40-2.
"""

import ml_collections

_MODELS = ("resnet34", "resnet18", "wrn40_2", "wrn16_2", "wrn40_1", "wrn16_1")


def get_config(model: str | None = None) -> ml_collections.ConfigDict:
  """Returns the SVHN teacher config; ``model`` picks the architecture."""
  model = model or "resnet34"
  if model not in _MODELS:
    raise ValueError(f"unknown model {model!r} for svhn.py; valid: {', '.join(_MODELS)}")
  config = ml_collections.ConfigDict()
  config.dataset = "svhn_cropped"
  config.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.model = model
  config.num_epochs = 50
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.optimizer = "sgd"
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.lr_schedule = "cosine"
  config.lr_decay_epochs = ()
  config.lr_decay_factor = 0.1
  config.augment = True
  config.seed = 0
  config.overwrite = False
  return config

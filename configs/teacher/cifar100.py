r"""CIFAR-100 teacher: ResNet-34 (default) or WRN-40-2, the peers' recipe.

  python -m dfkd_jax.data prepare --dataset=cifar100 --archives=DIR --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/cifar100.py \
      --workdir=/tmp/teachers/cifar100_resnet34 --config.data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/cifar100.py:wrn40_2 \
      --workdir=/tmp/teachers/cifar100_wrn40_2 --config.data_dir=DATA_DIR

SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, 200 epochs, random crop with
4-pixel padding + horizontal flip. Cosine decay as CMI / Fast-DFKD train their teachers;
DAFL's step schedule (x0.1 at epochs 80 and 120) is
``--config.lr_schedule=step --config.lr_decay_epochs="(80, 120)"``.
"""

import ml_collections

_MODELS = ("resnet34", "resnet18", "wrn40_2", "wrn16_2", "wrn40_1", "wrn16_1")


def get_config(model: str | None = None) -> ml_collections.ConfigDict:
  """Returns the CIFAR-100 teacher config; ``model`` picks the architecture."""
  model = model or "resnet34"
  if model not in _MODELS:
    raise ValueError(f"unknown model {model!r} for cifar100.py; valid: "
                     f"{', '.join(_MODELS)}")
  config = ml_collections.ConfigDict()
  config.dataset = "cifar100"
  config.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.model = model
  config.num_epochs = 200
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.optimizer = "sgd"
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.lr_schedule = "cosine"
  config.lr_decay_epochs = (80, 120)  # Used by lr_schedule="step" only.
  config.lr_decay_factor = 0.1
  config.augment = True
  config.seed = 0
  config.overwrite = False
  return config

r"""MNIST teacher: LeNet-5 on 32x32 MNIST, as DAFL's ``teacher-train.py`` trains it.

  python -m dfkd_jax.data prepare --dataset=mnist --archives=DIR --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/mnist.py \
      --workdir=/tmp/teachers/mnist_lenet5 --config.data_dir=DATA_DIR

DAFL: Adam (lr 1e-3), batch 256, images resized to 32x32 (bilinear), no augmentation,
~10 epochs, 98.8-98.9% test accuracy. Here the learning rate is cosine-decayed over 20
epochs. ``--config.dataset=mnist:pad`` zero-pads 28x28 to 32x32 instead of resizing.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the MNIST LeNet-5 teacher config."""
  config = ml_collections.ConfigDict()
  config.dataset = "mnist"
  config.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.model = "lenet5"
  config.num_epochs = 20
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.optimizer = "adam"
  config.learning_rate = 1e-3
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

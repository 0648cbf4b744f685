r"""Fashion-MNIST teacher: LeNet-5 on 32x32 Fashion-MNIST, with the MNIST recipe.

  python -m dfkd_jax.data prepare --dataset=fashion_mnist --archives=DIR \
      --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/fashion_mnist.py \
      --workdir=/tmp/teachers/fashion_mnist_lenet5 --config.data_dir=DATA_DIR

Adam (lr 1e-3, cosine-decayed over 20 epochs), batch 256, 28x28 images resized to 32x32
(bilinear, as DAFL does for MNIST); ``--config.dataset=fashion_mnist:pad`` zero-pads
instead.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the Fashion-MNIST LeNet-5 teacher config."""
  config = ml_collections.ConfigDict()
  config.dataset = "fashion_mnist"
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

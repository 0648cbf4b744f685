r"""MNIST teacher: LeNet-5 on 32x32 MNIST, as DAFL's ``teacher-train.py`` trains it.

  python -m dfkd_jax.data prepare --dataset=mnist --archives=DIR --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/mnist.py \
      --workdir=/tmp/teachers/mnist_lenet5 --config.data_dir=DATA_DIR

DAFL: Adam (lr 1e-3), batch 256, images resized to 32x32 (bilinear), no augmentation,
~10 epochs, 98.8-98.9% test accuracy. Here the learning rate is cosine-decayed over 20
epochs. ``--config.dataset=mnist:pad`` zero-pads 28x28 to 32x32 instead of resizing.
"""

from dfkd_jax import train_teacher


def get_config():
  """Returns the MNIST LeNet-5 teacher config."""
  config = train_teacher.adam_config(train_teacher.default_config(), 1e-3)
  config.dataset = "mnist"
  config.model = "lenet5"
  config.num_epochs = 20
  config.batch_size = 256
  return config

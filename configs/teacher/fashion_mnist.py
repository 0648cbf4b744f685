r"""Fashion-MNIST teacher: LeNet-5 on 32x32 Fashion-MNIST, with the MNIST recipe.

  python -m dfkd_jax.data prepare --dataset=fashion_mnist --archives=DIR \
      --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/fashion_mnist.py \
      --workdir=/tmp/teachers/fashion_mnist_lenet5 --config.data_dir=DATA_DIR

Adam (lr 1e-3, cosine-decayed over 20 epochs), batch 256, 28x28 images resized to 32x32
(bilinear, as DAFL does for MNIST); ``--config.dataset=fashion_mnist:pad`` zero-pads
instead.
"""

from dfkd_jax.run import train_teacher


def get_config():
  """Returns the Fashion-MNIST LeNet-5 teacher config."""
  config = train_teacher.adam_config(train_teacher.default_config(), 1e-3)
  config.dataset = "fashion_mnist"
  config.model = "lenet5"
  config.num_epochs = 20
  config.batch_size = 256
  return config

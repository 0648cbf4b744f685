r"""MNIST teacher: LeNet-5 on 32x32 MNIST, as DAFL's ``teacher-train.py`` trains it.

  python -m dfkd_jax.data prepare --dataset=mnist --archives=DIR --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/mnist.py \
      --workdir=/tmp/teachers/mnist_lenet5 --config.data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/mnist.py:lenet5_bn \
      --workdir=/tmp/teachers/mnist_lenet5_bn --config.data_dir=DATA_DIR

DAFL: Adam (lr 1e-3), batch 256, images resized to 32x32 (bilinear), no augmentation,
~10 epochs, 98.8-98.9% test accuracy. Here the learning rate is cosine-decayed over 20
epochs. ``--config.dataset=mnist:pad`` zero-pads 28x28 to 32x32 instead of resizing.
``:lenet5_bn`` adds a BatchNorm after each convolution, which the BatchNorm priors
(``generator_loss.bn_prior``, DFQ, MAD) need.
"""

from dfkd_jax.run import train_teacher


def get_config(model: str | None = None):
  """Returns the MNIST teacher config; ``model`` is ``lenet5`` (default) or ``lenet5_bn``."""
  config = train_teacher.adam_config(train_teacher.default_config(), 1e-3)
  config.dataset = "mnist"
  config.model = train_teacher.model_from_arg(model, "mnist.py", "lenet5",
                                              train_teacher.GREY_MODELS)
  config.num_epochs = 20
  config.batch_size = 256
  return config

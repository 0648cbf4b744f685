r"""Fashion-MNIST, LeNet-5 teacher -> LeNet-5-half student, 32x32 inputs.

  python -m dfkd_jax.data prepare --dataset=fashion_mnist --archives=DIR \
      --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/fashion_mnist.py \
      --workdir=teachers/fashion_mnist_lenet5 --config.data_dir=DATA_DIR
  python -m dfkd_jax.train --config=configs/fashion_mnist.py:lra_mb --workdir=runs/fashion_mnist \
      --config.teacher_dir=teachers/fashion_mnist_lenet5 --config.data_dir=DATA_DIR

A reduced epoch budget (LeNets learn fast) and the meta step ``meta.alpha`` at the
student's learning rate (0.1; the paper's 0.9 cost ~8 points on digits, see
configs/cifar10.py); the rest as in the paper. Not yet measured on Fashion-MNIST.
"""

from dfkd_jax import run_config


def get_config(arg: str | None = None):
  config = run_config.default_config()
  config.method = run_config.method_from_arg(arg)
  config.dataset = "fashion_mnist"
  config.teacher_dir = "teachers/fashion_mnist_lenet5"
  config.student = "lenet5_half"
  config.latent_dim = 100
  config.batch_size = 512
  config.num_epochs = 40
  config.iterations_per_epoch = 72
  config.generator_optimizer.learning_rate = 1e-3
  config.meta.alpha = config.student_optimizer.learning_rate
  config.memory.push_every_epochs = 2
  config.eval_batch_size = 1000
  return config

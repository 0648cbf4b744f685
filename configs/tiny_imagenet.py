r"""Tiny-ImageNet (64x64), ResNet-34 teacher -> ResNet-18 student, 500 epochs.

  python -m dfkd_jax.train --config=configs/tiny_imagenet.py:lra_mb --workdir=runs/tin \
      --config.teacher_dir=teachers/tiny_imagenet_resnet34 --config.data_dir=DIR

DIR holds the extracted official archive ``tiny-imagenet-200/``.

The meta step ``meta.alpha = 0.1`` is the student's learning rate, not the official
``lr_S_in = 0.9`` (see configs/cifar10.py: alpha at 9-10x the learning rate cost ~8
points on digits and ~47 on MNIST with the exact meta-gradient).
Measured: none of these values on Tiny-ImageNet yet; alpha's rule comes from digits and
MNIST.
"""

from dfkd_jax.run import run_config


def get_config(arg: str | None = None):
  config = run_config.default_config()
  config.method = run_config.method_from_arg(arg)
  config.dataset = "tiny_imagenet"
  config.teacher_dir = "teachers/tiny_imagenet_resnet34"
  config.student = "resnet18_64"
  config.latent_dim = 1000
  config.generator_options.base_width = 64  # DAFL's ngf (dafl_generator's default).
  config.batch_size = 512
  config.num_epochs = 500
  config.generator_optimizer.learning_rate = 0.02
  config.meta.alpha = config.student_optimizer.learning_rate
  return config

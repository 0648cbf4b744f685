r"""CIFAR-100, ResNet-34 teacher -> ResNet-18 student, the paper's settings (400 epochs).

  python -m dfkd_jax.train --config=configs/cifar100.py:lra_mb --workdir=runs/c100 \
      --config.teacher_dir=teachers/cifar100_resnet34
"""

from dfkd_jax import experiment


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.method = experiment.method_from_arg(arg)
  config.dataset = "cifar100"
  config.teacher_dir = "teachers/cifar100_resnet34"
  config.student = "resnet18"
  config.latent_dim = 1000
  config.batch_size = 512
  config.num_epochs = 400
  config.generator_optimizer.learning_rate = 0.02
  return config

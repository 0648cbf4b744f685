r"""SVHN, ResNet-34 teacher -> ResNet-18 student, the paper's settings (200 epochs).

  python -m dfkd_jax.train --config=configs/svhn.py:lra_mb --workdir=runs/svhn \
      --config.teacher_dir=teachers/svhn_resnet34
"""

from dfkd_jax import experiment


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.method = experiment.method_from_arg(arg)
  config.dataset = "svhn_cropped"
  config.teacher_dir = "teachers/svhn_resnet34"
  config.student = "resnet18"
  config.latent_dim = 1000
  config.batch_size = 512
  config.num_epochs = 200
  config.generator_optimizer.learning_rate = 0.02
  return config

r"""CIFAR-10, ResNet-34 teacher -> ResNet-18 student, the paper's settings (LRA Sec. 4.1).

  python -m dfkd_jax.train_teacher --config=configs/teacher/cifar10.py \
      --workdir=teachers/cifar10_resnet34     # or: python -m dfkd_jax.convert ...
  python -m dfkd_jax.train --config=configs/cifar10.py:lra_mb --workdir=runs/c10_lra_mb \
      --config.teacher_dir=teachers/cifar10_resnet34

Epoch = 72 iterations of 1 generator + 10 student steps at batch 512; 200 epochs;
student SGD 0.1 (momentum 0.9, wd 5e-4, cosine), generator Adam 0.02 (the official
Ours-1 config); memory of 10 batches of 64 samples, written every 5 epochs.
"""

from dfkd_jax import experiment


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.method = experiment.method_from_arg(arg)
  config.dataset = "cifar10"
  config.teacher_dir = "teachers/cifar10_resnet34"
  config.student = "resnet18"
  config.generator = "dafl_generator"
  config.latent_dim = 1000
  config.batch_size = 512
  config.num_epochs = 200
  config.generator_optimizer.learning_rate = 0.02
  config.compute_dtype = "float32"
  return config

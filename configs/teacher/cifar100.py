r"""CIFAR-100 teacher: ResNet-34 (default) or WRN-40-2, the peers' recipe.

  python -m dfkd_jax.data prepare --dataset=cifar100 --archives=DIR --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/cifar100.py \
      --workdir=/tmp/teachers/cifar100_resnet34 --config.data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/cifar100.py:wrn40_2 \
      --workdir=/tmp/teachers/cifar100_wrn40_2 --config.data_dir=DATA_DIR

SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, 200 epochs, random crop with
4-pixel padding + horizontal flip. Cosine decay as CMI / Fast-DFKD train their teachers;
DAFL's step schedule (x0.1 at epochs 80 and 120) is
``--config.lr_schedule=step --config.lr_decay_epochs="(80, 120)"``.
"""

from dfkd_jax.run import train_teacher


def get_config(model: str | None = None):
  """Returns the CIFAR-100 teacher config; ``model`` picks the architecture."""
  config = train_teacher.default_config()
  config.dataset = "cifar100"
  config.model = train_teacher.model_from_arg(model, "cifar100.py")
  return config

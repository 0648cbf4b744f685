r"""SVHN teacher: ResNet-34 on SVHN (cropped digits, train split only).

  python -m dfkd_jax.data prepare --dataset=svhn_cropped --archives=DIR \
      --data_dir=DATA_DIR
  python -m dfkd_jax.train_teacher --config=configs/teacher/svhn.py \
      --workdir=/tmp/teachers/svhn_resnet34 --config.data_dir=DATA_DIR

The CIFAR recipe (SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine decay)
with random 4-pixel-padded crops and no flips (digits are not mirror-symmetric), for 50
epochs (SVHN's train split is 73k images). ``svhn.py:wrn40_2`` selects WRN-40-2.
"""

from dfkd_jax.run import train_teacher


def get_config(model: str | None = None):
  """Returns the SVHN teacher config; ``model`` picks the architecture."""
  config = train_teacher.default_config()
  config.dataset = "svhn_cropped"
  config.model = train_teacher.model_from_arg(model, "svhn.py")
  config.num_epochs = 50
  config.lr_decay_epochs = ()
  return config

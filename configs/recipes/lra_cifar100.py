r"""LRA's official setting on CIFAR-100, the dataset its JSON configs are written for.

  python -m dfkd_jax.train --config=configs/recipes/lra_cifar100.py:lra_mb \
      --workdir=runs/lra_c100 --config.teacher_dir=teachers/cifar100_resnet34

Published Acc_max (LRA Table 1, CIFAR-100, ResNet-34 teacher 77.94% -> ResNet-18, 400
epochs): Ours-1 (``lra_mb``) 77.11%, Ours-2 (``lra_pre``) 77.21%, MB-DFKD (``mb_dfkd``)
76.14%, PRE-DFKD (``pre_dfkd``) 76.93%, DFKD* (``dfkd``) 76.51%.

``src/configs/Ours-1.json`` as it is (``max_epoch`` 400); everything else and every
caveat as in ``configs/recipes/lra_cifar10.py``. Not yet run here.
"""

import pathlib

from dfkd_jax.run import run_config


def get_config(arg: str | None = None):
  cifar10 = pathlib.Path(__file__).with_name("lra_cifar10.py")
  config = run_config.load_config_file(f"{cifar10}:{arg}" if arg else str(cifar10))
  config.dataset = "cifar100"
  config.teacher_dir = "teachers/cifar100_resnet34"
  config.num_epochs = 400
  return config

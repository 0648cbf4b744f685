r"""LRA's official setting on SVHN: ``lra_cifar10.py`` with the dataset switched.

  python -m dfkd_jax.train --config=configs/recipes/lra_svhn.py:lra_mb \
      --workdir=runs/lra_svhn --config.teacher_dir=teachers/svhn_resnet34

Published Acc_max (LRA Table 1, SVHN, ResNet-34 teacher 97.45% -> ResNet-18, 200 epochs):
Ours-1 (``lra_mb``) 95.88%, Ours-2 (``lra_pre``) 96.15%, MB-DFKD (``mb_dfkd``) 94.11%,
PRE-DFKD (``pre_dfkd``) 96.10%, DFKD* (``dfkd``) 95.97%.

The official code runs every dataset from the same JSON values (its ``dataset`` field
picks the data and the teacher), so every setting and every caveat of
``configs/recipes/lra_cifar10.py`` applies. LRA trained its SVHN teacher itself
(``configs/teacher/svhn.py`` trains one). Not yet run here.
"""

import pathlib

from dfkd_jax.run import run_config


def get_config(arg: str | None = None):
  cifar10 = pathlib.Path(__file__).with_name("lra_cifar10.py")
  config = run_config.load_config_file(f"{cifar10}:{arg}" if arg else str(cifar10))
  config.dataset = "svhn_cropped"
  config.teacher_dir = "teachers/svhn_resnet34"
  return config

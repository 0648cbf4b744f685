r"""DFAD's MNIST teacher: LeNet-5 as DFAD's run_mnist.sh trains it.

  python -m dfkd_jax.train_teacher --config=configs/recipes/dfad_mnist_teacher.py \
      --workdir=teachers/mnist_lenet5_dfad --config.data_dir=DATA_DIR

VainF/Data-Free-Adversarial-Distillation's ``train_teacher.py --batch_size 256 --epochs 10
--lr 0.01 --dataset mnist --model lenet5 --weight_decay 1e-4``: SGD (momentum 0.9),
constant learning rate, 32x32 resized MNIST without augmentation. DFAD reports 98.9%
for its teacher (README, Table 2); this config gave 98.93% (seed 0, 12.8 min on the
2-core development machine shared with other jobs, commit e56771f).
"""

from dfkd_jax.run import train_teacher


def get_config():
  config = train_teacher.default_config()
  config.dataset = "mnist"
  config.model = "lenet5"
  config.num_epochs = 10
  config.batch_size = 256
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.lr_schedule = "constant"
  config.augment = False
  return config

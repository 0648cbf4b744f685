r"""CIFAR-10 teacher for the CPU: WRN-16-2 from the image folder in about 90 minutes.

  mkdir -p DATA && tar -xzf ../shared/data/cifar10_jpeg/cifar10_jpeg.tar.gz -C DATA
  python -m dfkd_jax.train_teacher --config=configs/teacher/cifar10_cpu.py \
      --config.dataset=folder:DATA --workdir=teachers/cifar10_wrn16_2

The teacher of ``configs/cifar10_cpu.py`` (the CPU distillation protocol). A short
version of the peers' recipe (``configs/teacher/cifar10.py``): WRN-16-2 (0.69M
parameters), SGD with Nesterov momentum 0.9, coupled weight decay 5e-4, batch 128, one
epoch of linear warm-up to lr 0.1, then cosine to 0 over 18 epochs in all; random crops
of 4-pixel-padded images and horizontal flips, on device. No label smoothing: smoothed
teachers distil worse (Mueller et al., NeurIPS 2019). Normalisation: the folder's
per-channel mean/std, recorded in the teacher.

Measured on CIFAR-10 (JPEG q75 folder), 2-core AMD EPYC, jax 0.10.2: see
docs/results/cifar10_cpu.md (test accuracy per epoch, time, load). The trained teacher
is committed as ``teachers/cifar10_wrn16_2`` (its command, commit and sha256 there), so
nothing retrains it.
"""

from dfkd_jax.run import train_teacher


def get_config():
  """Returns the CPU CIFAR-10 teacher config (``--config.dataset=folder:DATA``)."""
  config = train_teacher.default_config()
  config.dataset = ""  # folder:DATA, the unpacked CIFAR-10 JPEG folder (required).
  config.model = "wrn16_2"
  config.num_epochs = 18
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  config.nesterov = True
  config.warmup_epochs = 1.0
  config.crop_padding = 4
  config.hflip = "on"
  return config

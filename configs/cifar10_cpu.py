r"""CIFAR-10 on a CPU: WRN-16-2 teacher -> WRN-16-1 student, sized for one core.

  mkdir -p DATA && tar -xzf ../shared/data/cifar10_jpeg/cifar10_jpeg.tar.gz -C DATA
  python -m dfkd_jax.train --config=configs/cifar10_cpu.py:ema_dfkd \
      --config.dataset=folder:DATA --workdir=runs/c10_ema_dfkd

The teacher is the committed ``assets/teachers/cifar10_wrn16_2`` (trained from the JPEG
folder by ``configs/teacher/cifar10_cpu.py``; its README gives the command, commit,
accuracy and sha256), so nothing is retrained; ``--config.teacher_dir`` takes your own.
``DATA`` is the test set the student is scored on (the folder's ``test/``).

Every method (``:METHOD``) runs with the same generator, student and budget: batch 64,
one generator step and 5 student steps per iteration, 40 iterations per epoch, 20
epochs (800 iterations); generator ``dafl_generator`` (base width 32, latent 256,
spectral norm), Adam 1e-3; student SGD 0.1 (momentum 0.9, wd 5e-4, cosine per epoch);
the BatchNorm-moment prior on (``bn_prior = 1``: the teacher has BatchNorm, and on
digits the student stalls without it); the meta step at the student's learning rate
(``meta.alpha = 0.1``); a memory of 10 batches of 64 samples written every 2 epochs.

The fast methods (``fast``, ``fast_reptile``, ``fast_exact``; Fast DFKD) keep the
budget (40 rounds of one synthesis round and 5 student steps per epoch, batch 64) and
the official CIFAR values otherwise (Fast-2: 2 inner steps, the ResNet-34 runs' loss
weights of ``configs/cifar10.py``), scaled to 20 epochs: their own generator
(``fast_generator``, base width 32), 2 epochs of warm-up (the official 20 of 220), the
stem re-initialised at epoch 13 (the official 140 of 220) and a bank that holds every
round (800 x 64 samples, 630 MB per seed).

Measured on CIFAR-10 (JPEG q75 folder), 3 seeds as replicas of one program on one core
of a 2-core AMD EPYC host, process CPU time per seed (docs/results/cifar10_cpu.md gives
the commands, commit, host and load; "expected" means what these seeds got):

  method     core-s / iteration / seed   20 epochs         student (seeds 0-2)
  dfkd       1.79                        23.9 core-min     59.29% +- 1.04
  ema_dfkd   3.01                        40.1 core-min     71.22% +- 0.78
  fast       2.18                        29.0 core-min     76.36% +- 0.87
  mb_dfkd    2.58                        34.4 core-min     53.05% +- 0.24
  fast_exact 3.76                        50.1 core-min     66.09% +- 2.74

On a 2-core Intel Xeon host, one seed per program (core-s per iteration are about 1.6-1.9x
the AMD host's): lra_mb 8.05 (107 core-min, 50.40% +- 3.40), dfad 3.16 (42 core-min,
17.44% +- 5.82 at the last epoch after a collapse; Acc_max 46.80%). For a longer budget,
``fast`` for 40 epochs (``--config.num_epochs=40 --config.fast.warmup_epochs=4
--config.fast.reset_epoch=26 --config.bank.num_slots=1600``), seed 0 on the Intel host:
72.42% at 60 core-min, 80.42% after 89.5.

The other methods are not measured here yet. ``nayer`` (NAYER) keeps the student's
budget (200 KD steps an epoch, 20 epochs) in NAYER's shape: 4 rounds an epoch of 30
synthesis steps and 50 KD steps each, its generator (width 32) created anew every 2
epochs (not measured).
"""

import pathlib

import ml_collections

from dfkd_jax.methods import presets as methods
from dfkd_jax.run import run_config

# The committed teacher, found from any working directory.
TEACHER = pathlib.Path(__file__).resolve().parents[1] / "assets/teachers/cifar10_wrn16_2"


def get_config(arg: str | None = None):
  config = run_config.default_config()
  config.method = run_config.method_from_arg(arg)
  config.dataset = ""  # folder:DATA, the unpacked CIFAR-10 JPEG folder (required).
  config.teacher_dir = str(TEACHER)
  config.student = "wrn16_1"
  config.generator = "dafl_generator"
  config.generator_options.base_width = 32
  config.latent_dim = 256
  config.generator_loss.bn_prior = 1.0
  config.batch_size = 64
  config.num_epochs = 20
  config.iterations_per_epoch = 40
  config.generator_steps = 1
  config.student_steps = 5
  config.generator_optimizer.learning_rate = 1e-3
  config.student_optimizer.learning_rate = 0.1
  config.meta.alpha = 0.1
  config.memory.num_slots = 10
  config.memory.samples_per_slot = 64
  config.memory.push_every_epochs = 2
  if methods.get(config.method).synthesis_rounds:  # Fast DFKD (see the docstring).
    config.generator = "fast_generator"
    config.generator_options = ml_collections.ConfigDict({"base_width": 32})
    config.fast.adversarial = 1.33
    config.fast.one_hot = 0.5
    config.fast.warmup_epochs = 2
    config.fast.reset_epoch = 13
    if config.method == "nayer":  # NAYER's rounds: 30 steps, then many KD steps.
      run_config.nayer_values(config)
      config.generator_options.base_width = 32
      config.fast.warmup_epochs = 2
      config.iterations_per_epoch = 4      # 4 rounds of 50 KD steps: the same 200 an epoch.
      config.student_steps = 50
      config.fast.generator_life_epochs = 2
    config.bank.num_slots = config.num_epochs * config.iterations_per_epoch
  config.eval_batch_size = 1000
  return config

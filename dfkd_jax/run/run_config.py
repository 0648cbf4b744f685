"""A distillation run's configuration: its fields, their rules, and how it is read.

:func:`default_config` holds every field with the papers' defaults (configs in
``configs/`` start from it), :func:`load_config_file` reads ``configs/NAME.py[:arg]``
(:func:`parse_arg` is the one parser of ``:arg``; :func:`resolve_config_file` finds the
repository's ``configs/NAME.py`` from any folder) and :func:`validate` checks values
before anything is built (errors name the value and the fix) and returns the resolved
:class:`~dfkd_jax.methods.presets.Method`. :func:`dfkd_jax.run.experiment.build` assembles a
validated config into a :class:`~dfkd_jax.run.run_setup.Setup`; nothing below that reads the
config.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from typing import Callable, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from dfkd_jax import models
from dfkd_jax.core import config_checks as checks
from dfkd_jax.data import datasets as data
from dfkd_jax.math import losses
from dfkd_jax.math import meta_init
from dfkd_jax.math import objectives
from dfkd_jax.math import optimizers
from dfkd_jax.methods import generator_objectives
from dfkd_jax.methods import presets as methods
from dfkd_jax.metrics import selection
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import distributed
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.replay import sources as replay_sources

ALPHA_SCHEDULES = ("constant", "student")
INNER_STEPS = tuple(s.value for s in objectives.InnerStep)
COMPUTE_DTYPES = ("float32", "bfloat16")
STEP_LOOPS = ("auto", "scan", "unroll")
REPLICA_LOOPS = ("auto", "map", "vmap")
# The repository this package was installed from (``pip install -e``): its configs/
# folder holds the shipped config files.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"


def default_config() -> ml_collections.ConfigDict:
  """Defaults of every field (the paper's settings where it gives them)."""
  c = ml_collections.ConfigDict()
  c.method = "lra_mb"
  c.student_update = ""          # Override of the method's update; "" = the preset's.
  # Test set the student is evaluated on every epoch: a built-in id, or your own data
  # as folder:PATH (ImageFolder layout) or npz:FILE (x_test, y_test), docs/data.md.
  c.dataset = "digits"
  c.data_dir = ""                # TFDS data dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.image_size = 0               # folder:/npz: data: resize images to SxS (PIL bilinear); 0 = native.
  c.teacher_dir = ""             # Teacher checkpoint (train_teacher or convert).
  c.teacher_config = ""          # If set and teacher_dir has no teacher: train it first.
  c.student = "digits_cnn_half"
  c.generator = "dafl_generator"
  c.generator_options = ml_collections.ConfigDict({"spectral_norm": True})
  c.latent_dim = 1000
  c.batch_size = 512             # Global batch of z per generator and student step.
  c.num_epochs = 200
  c.iterations_per_epoch = 72    # I in LRA Section 4.1.
  c.generator_steps = 1          # g.
  c.student_steps = 10           # s.
  c.seed = 0
  # Independent runs in one program (dfkd_jax.run.iteration, vmapped): seeds seed, seed+1,
  # ..., each with WORKDIR/seed_<seed>/summary.json. 1 = one run, no replica axis.
  c.num_seeds = 1

  c.student_optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
      # The cosine's floor (PyTorch's CosineAnnealingLR eta_min): the learning rate of
      # the last epoch's end. Fast DFKD: 2e-4.
      min_learning_rate=0.0))
  c.generator_optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, b1=0.9, b2=0.999))
  c.generator_loss = ml_collections.ConfigDict(dict(
      adversarial=1.0,           # weight of -JS (eq. 15).
      js_temperature=1.0,
      js_form="exact",           # "exact" (eq. 10) | "lra_reference" (official clamped code).
      one_hot=1.0,               # eq. 11 weights (official code: oh=1, a=0.1, ie=5).
      activation=0.1,
      entropy=5.0,
      entropy_log_base=0.0,      # 0 = natural log (eq. 14); 10 = the official code.
      # lra and dafl: weight of BatchNorm-moment matching (DeepInversion's unsquared
      # form) added to the priors of eq. 11. Not in LRA (0 = the paper); needs a
      # teacher with BatchNorm. The digits quickstart uses it.
      bn_prior=0.0,
      # dfq and mad (dfkd_jax.methods.generator_objectives); BN moments only if T has BatchNorm.
      bn_moments=1.0,            # MAD lambda_5 (eq. 9); DFQ's BN weight.
      class_nll=0.1,             # MAD lambda_3 (eq. 7), conditional generator only.
      embedding_norm=0.1,        # MAD lambda_4 (eq. 8), conditional generator only.
      embedding_gamma=1.1,       # MAD gamma (eq. 8).
      teacher_logit_bound=0.0,   # MAD zeta_1 (eq. 11): max(|T(x)| - delta, 0).
      logit_bound=20.0,          # MAD delta (eqs. 10-11).
      output_bound=0.0,          # MAD zeta_2 (eq. 11): max(|u| - nu, 0), mad_generator.
      output_bound_value=20.0))  # MAD nu (eq. 11).
  # Class-conditional generator G(z + e_y) of MAD Sec. 3.2 (needs mad_generator).
  c.conditional_generator = False
  c.student_logit_bound = 0.0    # MAD zeta_0 (eq. 10), bound generator_loss.logit_bound.
  # Weight w of the retention term: eq. 5 / eq. 6 (w = 1), MAD's lambda_1 / lambda_0.
  c.retention_weight = 1.0
  c.meta = ml_collections.ConfigDict(dict(
      alpha=0.9,                 # Inner step size (official code: lr_S_in = 0.9).
      inner_step="sgd_weight_decay",  # "sgd" (eq. 6) | "sgd_weight_decay" (official).
      weight_decay=5e-4,
      # "constant": alpha at every step; "student": alpha times the student's learning
      # rate over its initial one (the cosine schedule), so the inner step of eq. 6
      # keeps its ratio to the student's real step (issue 40's control).
      alpha_schedule="constant",
      # Log cos(grad L_acq, grad L_ret) (Section 3.4) on the last student step of each
      # iteration: one more forward/backward on the replayed batch per iteration.
      with_alignment=True))
  c.memory = ml_collections.ConfigDict(dict(
      num_slots=10,              # Batches kept (official: 10).
      samples_per_slot=64,       # Samples per batch (paper: 64 drawn from x_hat).
      push_every_epochs=5,       # Official: at the end of every 5th epoch (0, 5, 10, ..).
      dtype="float32"))
  c.vae = ml_collections.ConfigDict(dict(  # Generative replay (PRE-DFKD).
      samples=0,                 # Replayed samples per student step; 0 = batch_size // 8.
      train_steps=4,             # VAE updates on the first student steps of an iteration.
      learning_rate=2.5e-5,      # PRE-DFKD: the generator's learning rate / 40.
      kl_weight=1e-5,
      latent_refinement=True,    # PRE-DFKD's one Adam step on z before decoding.
      refine_learning_rate=1e-3))  # PRE-DFKD: the generator's learning rate.
  c.ema = ml_collections.ConfigDict(dict(  # EMA generator (MAD).
      decay=0.95,                # alpha of MAD eq. 5.
      samples=0))                # G~(z') samples per student step; 0 = batch_size.
  # Fast DFKD (fast, fast_reptile, fast_exact; Fang et al., AAAI 2022): one iteration is
  # one synthesis round (a copy of the meta-learned generator and fresh z take
  # inner_steps Adam steps, the best batch joins the data bank, the initialisation
  # moves by the method's meta-gradient), then student_steps KD steps on batches drawn
  # from the whole bank. Defaults: the official CIFAR scripts (scripts/fast_cifar.sh,
  # Fast-2 of its README).
  c.fast = ml_collections.ConfigDict(dict(
      inner_steps=2,             # g of Fast-g (--g_steps; the paper has 2, 5, 10).
      learning_rate=5e-3,        # lr_g, the generator copy's Adam (Fast-2; 3e-3 Fast-5, 2e-3 Fast-10).
      z_learning_rate=0.015,     # lr_z, the latent codes' Adam (Fast-2; 0.01 Fast-5, Fast-10).
      b1=0.5,                    # Adam beta1 of the inner and the meta optimiser (official 0.5).
      b2=0.999,                  # Adam beta2 of both (official).
      # The meta optimiser's (Adam) learning rate; 0 = learning_rate * inner_steps (the
      # official lr_g * g_steps).
      meta_learning_rate=0.0,
      # fast_exact's meta-objective: "final" = the loss of the adapted copy after the
      # inner steps (MAML's), "sum" = the sum of the inner steps' losses (whose
      # first-order approximation is what fast computes).
      exact_objective="final",
      bn=10.0,                   # Weight of the teacher's BatchNorm-moment term (--bn).
      one_hot=0.4,               # Weight of the cross-entropy to the random targets (--oh).
      adversarial=1.1,           # Weight of the masked adversarial KL (--adv).
      bn_momentum=0.9,           # Running BatchNorm moments of the synthesised data (--bn_mmt); 0 = off.
      # Epochs of synthesis only before the student's first step (--warmup); the
      # adversarial term starts one round earlier, as in the official code.
      warmup_epochs=20,
      # At the start of this epoch (1-based) the generator's linear stem and first
      # BatchNorm are re-initialised (--reset_l0: at ep == 120 + warmup, ep counting
      # the rounds from 1); 0 = never.
      reset_epoch=140,
      temperature=20.0,          # T of the student's KL (--T; the loss is scaled by T^2).
      crop_padding=4,            # Random-crop padding of the augmentation (official 4 on 32x32).
      flip=True,                 # Random horizontal flips in the augmentation.
      # Augment the student's bank batches too (the dataset's training transform:
      # CIFAR crop + flip, MNIST none).
      augment_bank=True,
      # nayer_generator's class codes (NAYER: CLIP text embeddings of the class names):
      # "one_hot", or "npy:FILE", a [classes, d] table computed elsewhere.
      class_codes="one_hot",
      # The generator is created anew every this many epochs (NAYER's g_life); 0 = never.
      generator_life_epochs=0))
  c.bank = ml_collections.ConfigDict(dict(  # The data bank of the fast methods.
      # Rounds kept (one best batch of batch_size each), the oldest overwritten once
      # full; the official code keeps every round (220 epochs of 1 round).
      num_slots=220,
      dtype="float32"))          # dtype the bank stores its samples in.
  c.compute_dtype = "float32"    # "bfloat16" on accelerators; parameters stay float32.
  # How the g generator and s student steps are looped inside the one jitted iteration:
  # "scan" (lax.scan), "unroll" (a Python loop traced into one program) or "auto" =
  # scan, except on CPU above batch 128 (experiment.CPU_SCAN_MAX_BATCH). Scanned steps
  # compile 2-3x faster; on CPU they run at 0.94-1.05x the unrolled steps' time up to
  # batch 128 and 1.12-1.17x at 256-512 (benchmarks/step_loop_speed.py, issue 27).
  c.step_loop = "auto"
  # How the replicas of a many-seed program (num_seeds > 1) share it: "vmap" (batched
  # operations over the replica axis), "map" (lax.map: one replica after another, each
  # with the single run's operations) or "auto" = map on CPU, where the batched
  # operations cost 1.5-1.8x more per replica (per-replica kernels become grouped
  # convolutions and batched products), vmap on accelerators.
  c.replica_loop = "auto"
  c.eval_batch_size = 1000
  c.checkpoints_to_keep = 3
  c.tensorboard = True           # TensorBoard event files (tensorboardX), per iteration.
  c.progress_seconds = 8.0       # Progress/heartbeat line at most this often; 0 = off.
  # Data-free model selection (dfkd_jax.metrics.selection): criteria recorded every epoch end,
  # on the device, from no real data; the one in force chooses the kept student.
  c.selection = ml_collections.ConfigDict(dict(
      # Chooses the epoch whose student is kept, exported and reported: last (no criterion
      # beat it in docs/results.md's selection study), agreement, js (probe set),
      # replay_agreement, replay_js (methods with replay).
      criterion="last",
      probe_size=256,            # Generated samples held out for the criteria; 0 = none.
      probe_epochs=8,            # The probe holds the last N epochs' generator samples.
      # This many consecutive faulty epochs (diverged student, collapsed probe, chance
      # agreement) up to the latest = collapsed (a healthy epoch after them: recovered),
      # as is a diverged student or a finished run that keeps a faulty epoch; 0 = off.
      collapse_epochs=3))
  return c


# Every numeric and boolean field whatever the method; each replay kind checks its own
# section (dfkd_jax.replay.sources), the meta updates check `meta`.
FIELD_RULES: tuple[tuple[str, checks.Rule], ...] = (
    ("batch_size", checks.POSITIVE_INT),
    ("num_epochs", checks.POSITIVE_INT),
    ("iterations_per_epoch", checks.POSITIVE_INT),
    ("generator_steps", checks.POSITIVE_INT),
    ("student_steps", checks.POSITIVE_INT),
    ("latent_dim", checks.POSITIVE_INT),
    ("eval_batch_size", checks.POSITIVE_INT),
    ("seed", checks.NON_NEGATIVE_INT),
    ("num_seeds", checks.POSITIVE_INT),
    # orbax's max_to_keep=0 keeps nothing: every checkpoint would be deleted.
    ("checkpoints_to_keep", checks.POSITIVE_INT),
    ("student_optimizer.learning_rate", checks.POSITIVE),
    ("student_optimizer.momentum", checks.UNIT_INTERVAL),
    ("student_optimizer.weight_decay", checks.NON_NEGATIVE),
    ("student_optimizer.schedule", checks.one_of(optimizers.STUDENT_SCHEDULES)),
    ("student_optimizer.min_learning_rate", checks.NON_NEGATIVE),
    ("generator_optimizer.learning_rate", checks.POSITIVE),
    ("generator_optimizer.b1", checks.UNIT_INTERVAL),
    ("generator_optimizer.b2", checks.UNIT_INTERVAL),
    ("generator_loss.js_temperature", checks.POSITIVE),
    ("generator_loss.js_form", checks.one_of(generator_objectives.JS_FORMS)),
    ("generator_loss.entropy_log_base", checks.NON_NEGATIVE),
    ("generator_loss.embedding_gamma", checks.NON_NEGATIVE),
    ("generator_loss.logit_bound", checks.NON_NEGATIVE),
    ("generator_loss.output_bound_value", checks.NON_NEGATIVE),
    *((f"generator_loss.{name}", checks.NON_NEGATIVE)
      for name in ("adversarial", "one_hot", "activation", "entropy", "bn_moments",
                   "bn_prior", "class_nll", "embedding_norm", "teacher_logit_bound",
                   "output_bound")),
    ("conditional_generator", checks.BOOL),
    ("student_logit_bound", checks.NON_NEGATIVE),
    ("retention_weight", checks.NON_NEGATIVE),
    ("compute_dtype", checks.one_of(COMPUTE_DTYPES)),
    ("step_loop", checks.one_of(STEP_LOOPS)),
    ("replica_loop", checks.one_of(REPLICA_LOOPS)),
    ("tensorboard", checks.BOOL),
    ("progress_seconds", checks.NON_NEGATIVE),
    ("selection.probe_size", checks.NON_NEGATIVE_INT),
    ("selection.probe_epochs", checks.POSITIVE_INT),
    ("selection.collapse_epochs", checks.NON_NEGATIVE_INT),
)
FAST_RULES: tuple[tuple[str, checks.Rule], ...] = (
    ("fast.inner_steps", checks.POSITIVE_INT),
    ("fast.learning_rate", checks.POSITIVE),
    ("fast.z_learning_rate", checks.NON_NEGATIVE),
    ("fast.b1", checks.UNIT_INTERVAL),
    ("fast.b2", checks.UNIT_INTERVAL),
    ("fast.meta_learning_rate", checks.NON_NEGATIVE),
    ("fast.exact_objective", checks.one_of(meta_init.EXACT_OBJECTIVES)),
    ("fast.bn", checks.NON_NEGATIVE),
    ("fast.one_hot", checks.NON_NEGATIVE),
    ("fast.adversarial", checks.NON_NEGATIVE),
    ("fast.bn_momentum", checks.UNIT_INTERVAL),
    ("fast.warmup_epochs", checks.NON_NEGATIVE_INT),
    ("fast.reset_epoch", checks.NON_NEGATIVE_INT),
    ("fast.temperature", checks.POSITIVE),
    ("fast.crop_padding", checks.NON_NEGATIVE_INT),
    ("fast.flip", checks.BOOL),
    ("fast.augment_bank", checks.BOOL),
    ("fast.generator_life_epochs", checks.NON_NEGATIVE_INT),
)
META_RULES: tuple[tuple[str, checks.Rule], ...] = (
    ("meta.alpha", checks.POSITIVE),
    ("meta.inner_step", checks.one_of(INNER_STEPS)),
    ("meta.alpha_schedule", checks.one_of(ALPHA_SCHEDULES)),
    ("meta.weight_decay", checks.NON_NEGATIVE),
    ("meta.with_alignment", checks.BOOL),
)


def validate(config: ml_collections.ConfigDict, mesh) -> methods.Method:
  """Checks config values before anything is built; errors name the value and the fix."""
  method = methods.resolve(config.method, config.student_update)
  checks.check(config, FIELD_RULES)
  if objectives.UPDATE_RULES.get(method.student_update).is_meta:
    checks.check(config, META_RULES)
  if method.synthesis_rounds:
    _check_fast(config)
  replay = replay_sources.REPLAYS.get(method.replay)
  checks.check(config, replay.rules)
  if replay.section:
    replay.check(config[replay.section].to_dict(), config.batch_size, mesh)
  checks.check_finite(config)  # Also the sections this method does not use.
  generator_objectives.GENERATOR_LOSSES.get(method.generator_loss)
  losses.STUDENT_LOSSES.get(method.student_loss)
  models.resolve(config.student, "classifier", "config.student")
  name = generator_name(config, method)
  generator = models.resolve(name, "generator", "config.generator")
  if config.conditional_generator and not generator.conditional:
    raise ValueError(f"config.conditional_generator=True needs a class-conditional "
                     f"generator, but the generator is {name!r}; use "
                     "mad_generator (G(z + e_y), MAD Sec. 3.2)")
  if config.generator_loss.output_bound and generator.output_range != "unit":
    raise ValueError(f"config.generator_loss.output_bound="
                     f"{config.generator_loss.output_bound} bounds the pre-sigmoid output "
                     f"of mad_generator, but the generator is {name!r}; set "
                     "it to 0 or use mad_generator")
  if generator.class_coded and not method.synthesis_rounds:
    raise ValueError(f"config.generator={name!r} takes class codes that a fast method's "
                     f"rounds build, but config.method={config.method!r}; use nayer, or "
                     "another generator")
  parallel.check_divisible(config.batch_size, "config.batch_size", mesh)
  selection.check(config.selection.to_dict(), replay.provides_retention,
                  config.batch_size, mesh.devices.size)
  parallel.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
  if not config.dataset:
    raise ValueError("config.dataset is empty; set --config.dataset=NAME (a built-in "
                     "dataset) or folder:PATH / npz:FILE: the labelled test set the "
                     "student is scored on")
  data.get_dataset(config.dataset)
  return method


def _check_fast(config) -> None:
  """The fast methods' section and how it fits the run."""
  checks.check(config, FAST_RULES)
  if config.generator_steps != 1:
    raise ValueError(f"config.generator_steps={config.generator_steps}: a fast method "
                     "runs one synthesis round per iteration; its inner steps are "
                     "config.fast.inner_steps (set generator_steps to 1)")
  if config.fast.warmup_epochs >= config.num_epochs:
    raise ValueError(f"config.fast.warmup_epochs={config.fast.warmup_epochs} leaves no "
                     f"epoch of distillation in config.num_epochs={config.num_epochs}; "
                     "lower it")
  probe = config.selection.probe_size // config.selection.probe_epochs
  if probe and config.batch_size % probe:
    raise ValueError(f"config.selection.probe_size / probe_epochs = {probe} must divide "
                     f"config.batch_size={config.batch_size} for a fast method (its "
                     "probe samples are every k-th row of a synthesised batch)")
  if config.conditional_generator:
    raise ValueError("config.conditional_generator=True: the fast methods synthesise "
                     "with an unconditional generator (their targets enter the loss "
                     "only); set it to False")


def generator_name(config, method: methods.Method) -> str:
  """The generator the run synthesises with: the method's own (NAYER's), else
  ``config.generator``."""
  return method.generator or config.generator


def nayer_values(config: ml_collections.ConfigDict) -> None:
  """Sets NAYER's published CIFAR values (``scripts/nayer_100.sh`` of
  tmtuan1307/NAYER, WRN-40-2 -> WRN-16-1 on CIFAR-10) in ``config``: its generator
  (``le_emb_size`` 1000), 30 inner steps at ``lr_g`` 4e-3, the loss weights, and the
  generator created anew every 10 epochs. A protocol rescales the epochs after;
  without this, ``nayer`` runs at the config's ``config.fast`` values (Fast DFKD's)."""
  config.generator = "nayer_generator"
  config.generator_options = ml_collections.ConfigDict({"base_width": 64})
  config.latent_dim = 1000
  config.fast.inner_steps = 30
  config.fast.learning_rate = 4e-3
  config.fast.z_learning_rate = 0.0
  config.fast.adversarial = 1.33
  config.fast.bn = 10.0
  config.fast.one_hot = 0.5
  config.fast.generator_life_epochs = 10
  config.fast.reset_epoch = 0  # NAYER has no reset_l0.


def teacher_dir(config) -> pathlib.Path:
  """The absolute teacher directory of ``config`` (relative paths: to the current one)."""
  if not config.teacher_dir:
    raise ValueError("config.teacher_dir is empty; point it at a teacher made by "
                     "`python -m dfkd_jax.train_teacher` or `python -m dfkd_jax.convert`")
  path = distributed.filesystem_path(config.teacher_dir, "config.teacher_dir")
  return path.expanduser().absolute()


def has_teacher(config) -> bool:
  """Whether ``config.teacher_dir`` holds a teacher checkpoint."""
  return holds_teacher(teacher_dir(config))


def holds_teacher(path: pathlib.Path) -> bool:
  """Whether the directory ``path`` holds a teacher checkpoint."""
  return (path / teacher_lib.META_FILE).is_file()


def parse_arg(arg: str | None, *, key: str, default: str,
              valid: Sequence[str] | None = None, config_file: str = "") -> str:
  """The value named by a config file's argument: ``""``, ``NAME`` or ``KEY=NAME``.

  ``--config=configs/cifar10.py:method=mb_dfkd`` and ``...:mb_dfkd`` are the same run;
  distillation configs name a method (checked by :func:`validate`), teacher configs a
  model (checked against ``valid``).

  Raises:
    ValueError: a ``KEY=...`` with another key, or a name not in ``valid``.
  """
  name, sep, value = (arg or "").partition("=")
  if sep and (name != key or not value):
    raise ValueError(f"config argument {arg!r}: the accepted forms are :{key.upper()} "
                     f"and :{key}={key.upper()} (e.g. {config_file or 'configs/cifar10.py'}"
                     f":{key}={default}); set other fields with --config.FIELD=VALUE")
  value = (value if sep else arg) or default
  if valid is not None and value not in valid:
    raise ValueError(f"unknown {key} {value!r} for {config_file or 'this config'}; "
                     f"valid: {', '.join(valid)}")
  return value


def method_from_arg(arg: str | None, default: str = "lra_mb") -> str:
  """The method of a distillation config's argument (see :func:`parse_arg`)."""
  return parse_arg(arg, key="method", default=default)


def resolve_config_file(value: str, name: str = "--config",
                        log: Callable[[str], None] | None = None) -> str:
  """``value`` (``PATH[:ARG]``), with a shipped config found from any folder.

  A ``PATH`` that exists relative to the working directory (or is absolute) is used as
  it is. Otherwise a ``configs/...`` path is looked up in the repository the package
  was installed from (:data:`CONFIGS_DIR`), so the README's and the guides' commands
  work from your own folder; ``log`` gets one line naming the file used.

  Args:
    value: the config file's path, with its ``:ARG`` if any.
    name: the flag or field that gave it, for the messages.
    log: receives the line saying which file was used (``None``: nothing said).

  Returns:
    ``value``, or the repository file's absolute path with the same ``:ARG``.

  Raises:
    FileNotFoundError: no such file in either place (one line naming the value and the
      fix).
  """
  path, sep, arg = str(value).partition(":")
  if pathlib.Path(path).is_file():
    return value
  cwd = pathlib.Path.cwd()
  shipped = REPO_ROOT / path
  in_configs = pathlib.PurePath(path).parts[:1] == ("configs",)  # Relative, configs/.
  if in_configs and shipped.is_file():
    if log is not None:
      log(f"{name}={path}: not in {cwd}, using the repository's {shipped}")
    return f"{shipped}{sep}{arg}"
  where = f"in {cwd}" + (f" nor in the repository ({REPO_ROOT})"
                         if in_configs and cwd.resolve() != REPO_ROOT else "")
  shipped_configs = (f"the shipped configs are in {CONFIGS_DIR}" if CONFIGS_DIR.is_dir()
                     else "the shipped configs/ folder is in the repository (clone it "
                     "and pip install -e it to use them by their configs/ path)")
  raise FileNotFoundError(f"{name}={path}: no such file {where}; pass a config file's "
                          f"path: {shipped_configs}")


def load_config_file(path: str, log: Callable[[str], None] | None = None,
                     name: str = "config file") -> ml_collections.ConfigDict:
  """``get_config()`` of the config file ``path`` (``path:arg`` passes ``arg``); a
  ``configs/...`` path not in the working directory is the repository's
  (:func:`resolve_config_file`, which says so in ``log``).

  Raises:
    FileNotFoundError: no such file (one line).
  """
  path, _, arg = resolve_config_file(str(path), name, log).partition(":")
  spec = importlib.util.spec_from_file_location("_dfkd_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _resolve_config_flag(argv: Sequence[str],
                         log: Callable[[str], None]) -> list[str]:
  """``argv`` with the value of ``--config`` resolved by :func:`resolve_config_file`
  (``--config=V``, ``-config=V`` or ``--config V``; not after ``--``)."""
  argv = list(argv)
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    flag, sep, value = arg.partition("=")
    if flag in ("--config", "-config") and sep:
      argv[i] = f"{flag}={resolve_config_file(value, '--config', log)}"
    elif flag in ("--config", "-config") and i + 1 < len(argv):
      argv[i + 1] = resolve_config_file(argv[i + 1], "--config", log)
  return argv


def parse_flags(argv: Sequence[str], fields: str,
                log: Callable[[str], None] = print) -> Sequence[str]:
  """absl's flag parsing, with a one-line error for a bad config file or field.

  ml_collections loads the ``--config`` file and applies ``--config.FIELD=VALUE`` while
  the flags are parsed, before ``main`` runs; its errors would otherwise end in a
  traceback. A ``--config=configs/...`` path that is not in the working directory is
  the repository's (:func:`resolve_config_file`; one line in ``log`` says so). ``train``
  and ``train_teacher`` parse their flags with this.

  Args:
    argv: the command line.
    fields: where the config's fields are listed, for the error of a misspelt field.
    log: receives the line naming a config file found in the repository.

  Raises:
    SystemExit: one line, ``error: ...``.
  """
  try:
    argv = _resolve_config_flag(argv, log)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"error: {_config_file_error(str(e)) or e}; see --help") from None
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    lines = [l.strip() for l in str(e).replace("\\n", "\n").splitlines() if l.strip()]
    message = _unquote(" ".join(lines[-1:] if isinstance(e, OSError) else lines))
    raise SystemExit(f"error: in --config: {message.replace(chr(92), '')} "
                     f"({fields})") from None


def loaded_config(config: ml_collections.ConfigDict | None,
                  configs: str) -> ml_collections.ConfigDict | None:
  """``config`` as ``--config`` loaded it (``None``: the flag was not given).

  ml_collections gives a file that failed to load as a stand-in that raises
  ``IOError`` on first use; this turns that into one line.

  Args:
    config: the ``--config`` flag's value.
    configs: where the shipped configs are, for a path that does not exist.

  Raises:
    SystemExit: one line, ``error: ...``.
  """
  try:
    if config is not None:
      config.keys()
  except OSError as e:
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    if not os.path.isfile(path):
      raise SystemExit(f"error: --config={path}: no such file (from {os.getcwd()}); "
                       f"{configs}") from None
    raise SystemExit(f"error: {' '.join(str(e).split())}") from None
  return config


def _unquote(text: str) -> str:
  """``text`` without the quotes ``repr`` puts around a whole message (a KeyError's)."""
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    return text[1:-1]
  return text


def _config_file_error(message: str) -> str | None:
  """The last line of the traceback ml_collections puts in a config file's load error.

  ``--config=FILE:ARG`` runs ``get_config(ARG)`` while the flags are parsed; its
  exception arrives as a flag error holding the whole traceback. The line kept names
  the flag and the exception (a bad ``:ARG``: the accepted forms, from
  :func:`parse_arg`).
  """
  head, sep, rest = message.partition(": Error whilst parsing config file")
  lines = [l.strip() for l in rest.splitlines() if l.strip()]
  if not sep or not lines:
    return None
  last = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1])
  if "get_config() takes 0 positional arguments" in last:
    last = "this config file takes no ':ARG' (only --config.FIELD=VALUE overrides)"
  return f"{head.removeprefix('flag ')}: {last}"

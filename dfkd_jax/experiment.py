"""A distillation run's configuration and setup, resolved before anything compiles.

:func:`default_config` holds every field with the papers' defaults (configs in
``configs/`` start from it), :func:`load_config_file` reads ``configs/NAME.py[:method]``,
:func:`validate` checks values (errors name the value and the fix) and :func:`build`
loads the frozen teacher (training it first if the config says how) and builds the
models into a :class:`Setup`. :mod:`dfkd_jax.iteration` compiles the training iteration
from a :class:`Setup`; :mod:`dfkd_jax.trainer` runs it.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from dfkd_jax import data
from dfkd_jax import distributed
from dfkd_jax import generator_objectives
from dfkd_jax import methods
from dfkd_jax import models
from dfkd_jax import objectives
from dfkd_jax import parallel
from dfkd_jax import teacher as teacher_lib


AXIS = parallel.DATA_AXIS
INNER_STEPS = tuple(s.value for s in objectives.InnerStep)
COMPUTE_DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
  """Defaults of every field (the paper's settings where it gives them)."""
  c = ml_collections.ConfigDict()
  c.method = "lra_mb"
  c.student_update = ""          # Override of the method's update; "" = the preset's.
  c.dataset = "digits"           # Test set the student is evaluated on every epoch.
  c.data_dir = ""                # TFDS data dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets).
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

  c.student_optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine"))
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
      # dfq and mad (dfkd_jax.generator_objectives); BN moments only if T has BatchNorm.
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
  c.compute_dtype = "float32"    # "bfloat16" on accelerators; parameters stay float32.
  # How the g generator and s student steps are looped inside the one jitted iteration:
  # "scan" (lax.scan), "unroll" (a Python loop traced into one program) or "auto" =
  # scan on accelerators, unroll on CPU, where XLA runs the convolution weight-gradient
  # ~90x slower inside a loop body (measured: 10.8 s vs 120 ms, jax 0.10.2).
  c.step_loop = "auto"
  c.eval_batch_size = 1000
  c.checkpoints_to_keep = 3
  c.tensorboard = True           # Event files when TensorFlow's summary writer imports.
  return c


class Setup(NamedTuple):
  """Everything fixed for a run, resolved from the config before any compilation."""

  config: ml_collections.ConfigDict
  method: methods.Method
  teacher: Any                     # flax module
  teacher_variables: Any
  teacher_meta: teacher_lib.TeacherMeta
  student: Any
  generator: Any
  input_shape: tuple[int, int, int]
  num_classes: int
  mesh: Any
  vae: Any = None                  # The VAE of generative replay (flax module) or None.


def _positive(config, *names):
  for name in names:
    value = config
    for part in name.split("."):
      value = value[part]
    if not value > 0:
      raise ValueError(f"config.{name}={value!r} must be > 0")


def validate(config: ml_collections.ConfigDict, mesh) -> methods.Method:
  """Checks config values before anything is built; errors name the value and the fix."""
  method = methods.resolve(config.method, config.student_update)
  _positive(config, "batch_size", "num_epochs", "iterations_per_epoch",
            "generator_loss.js_temperature",
            "generator_steps", "student_steps", "latent_dim", "eval_batch_size",
            "student_optimizer.learning_rate", "generator_optimizer.learning_rate")
  if method.student_update in ("meta", "meta_first_order"):
    _positive(config, "meta.alpha")
    if config.meta.inner_step not in INNER_STEPS:
      raise ValueError(f"config.meta.inner_step={config.meta.inner_step!r}; valid: "
                       f"{', '.join(INNER_STEPS)}")
  if method.replay == "memory":
    _positive(config, "memory.num_slots", "memory.samples_per_slot",
              "memory.push_every_epochs")
    if config.memory.samples_per_slot > config.batch_size:
      raise ValueError(f"config.memory.samples_per_slot={config.memory.samples_per_slot}"
                       f" must be <= config.batch_size={config.batch_size} (slots are "
                       "filled from one generated batch)")
    parallel.check_divisible(config.memory.samples_per_slot,
                             "config.memory.samples_per_slot", mesh)
    if config.batch_size % config.memory.samples_per_slot:
      raise ValueError(f"config.memory.samples_per_slot={config.memory.samples_per_slot}"
                       f" must divide config.batch_size={config.batch_size}")
  for name in ("adversarial", "one_hot", "activation", "entropy", "bn_moments",
               "bn_prior", "class_nll", "embedding_norm"):
    if not config.generator_loss[name] >= 0:
      raise ValueError(f"config.generator_loss.{name}={config.generator_loss[name]!r} must "
                       "be >= 0 (it weighs a term of the generator's loss; 0 drops it)")
  if method.replay == "generative":
    _positive(config, "vae.learning_rate", "vae.refine_learning_rate")
    samples = vae_samples(config)
    if samples < 1:
      raise ValueError(f"config.vae.samples={config.vae.samples}: batch_size // 8 = 0; "
                       "set config.vae.samples > 0")
    parallel.check_divisible(samples, "config.vae.samples (replayed samples per step)",
                             mesh)
    if (config.batch_size // mesh.devices.size) % 2:
      raise ValueError(f"config.batch_size={config.batch_size} must be an even multiple of "
                       f"the device count ({mesh.devices.size}): the VAE trains on half "
                       "of each device's fresh batch")
    if config.vae.train_steps < 0:
      raise ValueError(f"config.vae.train_steps={config.vae.train_steps} must be >= 0")
  if method.replay == "ema":
    if not 0.0 <= config.ema.decay <= 1.0:
      raise ValueError(f"config.ema.decay={config.ema.decay} must be in [0, 1] (MAD: 0.95)")
    parallel.check_divisible(ema_samples(config), "config.ema.samples (G~ samples per "
                             "step)", mesh)
  if method.generator_loss not in generator_objectives.KINDS:
    raise ValueError(f"method {config.method!r}: unknown generator loss "
                     f"{method.generator_loss!r}; valid: "
                     f"{', '.join(generator_objectives.KINDS)}")
  if config.conditional_generator and config.generator != "mad_generator":
    raise ValueError(f"config.conditional_generator=True needs a class-conditional "
                     f"generator, but config.generator={config.generator!r}; use "
                     "mad_generator (G(z + e_y), MAD Sec. 3.2)")
  if config.generator_loss.output_bound and config.generator != "mad_generator":
    raise ValueError(f"config.generator_loss.output_bound="
                     f"{config.generator_loss.output_bound} bounds the pre-sigmoid output "
                     f"of mad_generator, but config.generator={config.generator!r}; set "
                     "it to 0 or use mad_generator")
  if config.step_loop not in ("auto", "scan", "unroll"):
    raise ValueError(f"config.step_loop={config.step_loop!r}; valid: auto, scan, unroll")
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.compute_dtype={config.compute_dtype!r}; valid: "
                     f"{', '.join(COMPUTE_DTYPES)}")
  if config.generator_loss.js_form not in ("exact", "lra_reference"):
    raise ValueError(f"config.generator_loss.js_form={config.generator_loss.js_form!r}; "
                     "valid: exact, lra_reference")
  if config.student_optimizer.schedule not in ("cosine", "constant"):
    raise ValueError(f"config.student_optimizer.schedule="
                     f"{config.student_optimizer.schedule!r}; valid: cosine, constant")
  parallel.check_divisible(config.batch_size, "config.batch_size", mesh)
  parallel.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
  data.get_dataset(config.dataset)
  for name in (config.student, config.generator):
    if name not in models.names():
      raise ValueError(f"unknown model {name!r}; valid: {', '.join(models.names())}")
  return method


def vae_samples(config) -> int:
  """Global VAE replay samples per student step (``config.vae.samples`` or B // 8)."""
  return config.vae.samples or config.batch_size // 8


def ema_samples(config) -> int:
  """Global EMA-generator samples per student step (``config.ema.samples`` or B)."""
  return config.ema.samples or config.batch_size


def _load_or_train_teacher(config, log) -> tuple[Any, Any, teacher_lib.TeacherMeta]:
  if not config.teacher_dir:
    raise ValueError("config.teacher_dir is empty; point it at a teacher made by "
                     "`python -m dfkd_jax.train_teacher` or `python -m dfkd_jax.convert`")
  teacher_dir = distributed.filesystem_path(config.teacher_dir,
                                            "config.teacher_dir").expanduser()
  if not (teacher_dir / teacher_lib.META_FILE).is_file():
    if not config.teacher_config:
      raise FileNotFoundError(
          f"no teacher at config.teacher_dir={str(teacher_dir)!r} (no "
          f"{teacher_lib.META_FILE}); train one with `python -m dfkd_jax.train_teacher "
          f"--config=configs/teacher/<dataset>.py --workdir={teacher_dir}` or import one "
          "with `python -m dfkd_jax.convert`")
    if jax.process_count() > 1:
      raise FileNotFoundError(
          f"no teacher at config.teacher_dir={str(teacher_dir)!r}; a multi-process run "
          f"does not train one (every process would): run `python -m "
          f"dfkd_jax.train_teacher --config={config.teacher_config} "
          f"--workdir={teacher_dir}` once, in a single process, first")
    from dfkd_jax import train_teacher  # pylint: disable=g-import-not-at-top
    teacher_config = load_config_file(config.teacher_config)
    log(f"no teacher at {teacher_dir}: training one with {config.teacher_config}")
    train_teacher.train_and_save(teacher_config, teacher_dir, log=log)
  return teacher_lib.load_teacher(teacher_dir)


def method_from_arg(arg: str | None, default: str = "lra_mb") -> str:
  """The method named by a config argument: ``""``, ``NAME`` or ``method=NAME``.

  ``--config=configs/cifar10.py:method=mb_dfkd`` and ``...:mb_dfkd`` are the same run;
  the name itself is checked by :func:`validate`, which lists the valid ones.
  """
  if not arg:
    return default
  key, sep, value = arg.partition("=")
  if not sep:
    return arg
  if key != "method" or not value:
    raise ValueError(f"config argument {arg!r}: expected NAME or method=NAME (e.g. "
                     f"configs/cifar10.py:method=lra_mb); set other fields with "
                     f"--config.FIELD=VALUE")
  return value


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file ``path`` (``path:arg`` passes ``arg``)."""
  path, _, arg = str(path).partition(":")
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"config file {path!r} not found (paths are relative to the "
                            f"working directory {os.getcwd()})")
  spec = importlib.util.spec_from_file_location("_dfkd_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _generator_options(config, log) -> dict[str, Any]:
  """``config.generator_options`` the generator takes; the others are named and dropped.

  The defaults are the LRA generator's (``spectral_norm``); command-line flags cannot
  delete a field, so options another generator does not have are ignored, with a note.
  """
  accepted = set(models.options(config.generator)) - {"latent_dim", "image_shape"}
  given = dict(config.generator_options)
  ignored = sorted(set(given) - accepted)
  if ignored:
    log(f"config.generator_options {ignored} do not apply to {config.generator!r} "
        f"(its options: {', '.join(sorted(accepted)) or 'none'}); ignored")
  return {k: v for k, v in given.items() if k in accepted}


def build(config: ml_collections.ConfigDict, log: Callable[[str], None] = print,
          mesh=None) -> Setup:
  """Validates the config, loads the teacher and builds the models (no compilation)."""
  mesh = mesh or parallel.make_mesh()
  method = validate(config, mesh)
  teacher, teacher_variables, meta = _load_or_train_teacher(config, log)
  dataset = data.get_dataset(config.dataset)
  data.check_teacher_fits(meta, dataset.id)
  if data.get_dataset(meta.dataset).spec.name != dataset.spec.name:
    raise ValueError(f"config.dataset={config.dataset!r} but the teacher at "
                     f"{config.teacher_dir} was trained on {meta.dataset!r}")
  if config.generator_loss.bn_prior and not teacher_variables.get("batch_stats"):
    raise ValueError(f"config.generator_loss.bn_prior={config.generator_loss.bn_prior}"
                     f" needs a teacher with BatchNorm, but the {meta.arch} teacher at "
                     f"{config.teacher_dir} has none; set it to 0")
  input_shape = tuple(meta.input_shape)
  student = models.get(config.student, num_classes=meta.num_classes,
                       input_shape=input_shape)
  generator = models.get(config.generator, num_classes=meta.num_classes,
                         latent_dim=config.latent_dim, image_shape=input_shape,
                         **_generator_options(config, log))
  vae = None
  if method.replay == "generative":
    vae = models.get("vae", latent_dim=config.latent_dim, image_shape=input_shape)
  if generator_objectives.uses_batchnorm_moments(method.generator_loss):
    _, features = jax.eval_shape(
        lambda v, x: teacher.apply(v, x, train=False, features=True), teacher_variables,
        jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    if not features.bn_moments:
      log(f"teacher {meta.arch} has no BatchNorm: the {method.generator_loss!r} generator "
          "loss runs without its BatchNorm-moment term")
  return Setup(config, method, teacher, teacher_variables, meta, student, generator,
               input_shape, meta.num_classes, mesh, vae)

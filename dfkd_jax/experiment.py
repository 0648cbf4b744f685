"""A distillation run's configuration, resolved once into plain values.

:func:`default_config` holds every field with the papers' defaults (configs in
``configs/`` start from it), :func:`load_config_file` reads ``configs/NAME.py[:arg]``
(:func:`parse_arg` is the one parser of ``:arg``), :func:`validate` checks values
(errors name the value and the fix) and :func:`build` loads the frozen teacher and
resolves everything else into a :class:`Setup` of typed values: the models, the optax
optimisers, the generator-loss weights, the student update, the replay source and the
step loop. Nothing below this module reads the config: :mod:`dfkd_jax.iteration`
compiles the training iteration from a :class:`Setup`, :mod:`dfkd_jax.trainer` runs it.
A missing teacher is trained by the entry point (:mod:`dfkd_jax.train`), not here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dfkd_jax import config_checks as checks
from dfkd_jax import data
from dfkd_jax import distributed
from dfkd_jax import generator_objectives
from dfkd_jax import losses
from dfkd_jax import methods
from dfkd_jax import models
from dfkd_jax import objectives
from dfkd_jax import optimizers
from dfkd_jax import parallel
from dfkd_jax import teacher as teacher_lib
from dfkd_jax.replay import sources as replay_sources


AXIS = parallel.DATA_AXIS
INNER_STEPS = tuple(s.value for s in objectives.InnerStep)
COMPUTE_DTYPES = ("float32", "bfloat16")
STEP_LOOPS = ("auto", "scan", "unroll")


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
  # Independent runs in one program (dfkd_jax.iteration, vmapped): seeds seed, seed+1,
  # ..., each with WORKDIR/seed_<seed>/summary.json. 1 = one run, no replica axis.
  c.num_seeds = 1

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
  c.tensorboard = True           # TensorBoard event files (tensorboardX), per iteration.
  c.progress_seconds = 8.0       # Progress/heartbeat line at most this often; 0 = off.
  return c


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything fixed for a run, resolved from the config before any compilation.

  The training iteration (:mod:`dfkd_jax.iteration`) reads only these values; the
  config is kept for the run's records (``summary.json``) and for the host loop's own
  fields (epochs, evaluation, checkpoints).
  """

  config: ml_collections.ConfigDict
  method: methods.Method
  mesh: Any
  # The frozen teacher and the two trained networks (flax modules).
  teacher: Any
  teacher_variables: Any
  teacher_meta: teacher_lib.TeacherMeta
  student: Any
  generator: Any
  input_shape: tuple[int, int, int]
  num_classes: int
  # Traits of the generator (the model registry's).
  generator_output_range: str          # "normalized" | "unit" (sigmoid image).
  conditional_generator: bool          # G(z + e_y), MAD Sec. 3.2.
  generator_output_logits: bool        # Also return the pre-sigmoid output (MAD nu).
  # Sizes of one iteration.
  batch_size: int                      # Global batch of every step.
  latent_dim: int
  generator_steps: int
  student_steps: int
  iterations_per_epoch: int
  seed: int                            # The first replica's seed.
  # Replicas (config.num_seeds): their seeds; more than one = a leading replica axis on
  # every part of the state, the iteration vmapped over it (dfkd_jax.iteration).
  seeds: tuple[int, ...]
  # The updates.
  student_optimizer: optax.GradientTransformation
  generator_optimizer: optax.GradientTransformation
  generator_loss_weights: generator_objectives.GeneratorLossWeights
  student_update: objectives.StudentUpdate
  kd_loss: objectives.KDLoss           # Per-example student loss (+ MAD's logit bound).
  retention_weight: float
  meta_alignment: bool                 # Log cos(grad L_acq, grad L_ret) (meta updates).
  replay: replay_sources.Replay
  compute_dtype: Any                   # jnp dtype of activations.
  unroll: bool                         # Unrolled steps (CPU) or lax.scan.


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
    ("tensorboard", checks.BOOL),
    ("progress_seconds", checks.NON_NEGATIVE),
)
META_RULES: tuple[tuple[str, checks.Rule], ...] = (
    ("meta.alpha", checks.POSITIVE),
    ("meta.inner_step", checks.one_of(INNER_STEPS)),
    ("meta.weight_decay", checks.NON_NEGATIVE),
    ("meta.with_alignment", checks.BOOL),
)


def validate(config: ml_collections.ConfigDict, mesh) -> methods.Method:
  """Checks config values before anything is built; errors name the value and the fix."""
  method = methods.resolve(config.method, config.student_update)
  checks.check(config, FIELD_RULES)
  if method.student_update.startswith("meta"):
    checks.check(config, META_RULES)
  replay_sources.get(method.replay).validate(config, mesh)
  checks.check_finite(config)  # Also the sections this method does not use.
  if method.generator_loss not in generator_objectives.KINDS:
    raise ValueError(f"method {config.method!r}: unknown generator loss "
                     f"{method.generator_loss!r}; valid: "
                     f"{', '.join(generator_objectives.KINDS)}")
  students = [n for n in models.names() if models.is_classifier(n)]
  if config.student not in students:
    raise ValueError(f"config.student={config.student!r} is not a classifier that can be "
                     f"a student; valid: {', '.join(students)}")
  if config.generator not in models.names():
    raise ValueError(f"unknown model {config.generator!r}; valid: "
                     f"{', '.join(models.names())}")
  if config.conditional_generator and not models.can_be_conditional(config.generator):
    raise ValueError(f"config.conditional_generator=True needs a class-conditional "
                     f"generator, but config.generator={config.generator!r}; use "
                     "mad_generator (G(z + e_y), MAD Sec. 3.2)")
  if (config.generator_loss.output_bound
      and models.output_range(config.generator) != "unit"):
    raise ValueError(f"config.generator_loss.output_bound="
                     f"{config.generator_loss.output_bound} bounds the pre-sigmoid output "
                     f"of mad_generator, but config.generator={config.generator!r}; set "
                     "it to 0 or use mad_generator")
  parallel.check_divisible(config.batch_size, "config.batch_size", mesh)
  parallel.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
  data.get_dataset(config.dataset)
  return method


def teacher_dir(config) -> pathlib.Path:
  """The absolute teacher directory of ``config`` (relative paths: to the current one)."""
  if not config.teacher_dir:
    raise ValueError("config.teacher_dir is empty; point it at a teacher made by "
                     "`python -m dfkd_jax.train_teacher` or `python -m dfkd_jax.convert`")
  path = distributed.filesystem_path(config.teacher_dir, "config.teacher_dir")
  return path.expanduser().absolute()


def has_teacher(config) -> bool:
  """Whether ``config.teacher_dir`` holds a teacher checkpoint."""
  return (teacher_dir(config) / teacher_lib.META_FILE).is_file()


def _load_teacher(config) -> tuple[Any, Any, teacher_lib.TeacherMeta]:
  path = teacher_dir(config)
  if not has_teacher(config):
    raise FileNotFoundError(_missing_teacher_message(config, path))
  return teacher_lib.load_teacher(path)


def _missing_teacher_message(config, path: pathlib.Path) -> str:
  """How to get the teacher of ``config.dataset``, and that its test split is needed."""
  spec = data.get_dataset(config.dataset).spec
  teacher_config = f"configs/teacher/{spec.name}.py"
  if not (pathlib.Path(__file__).parents[1] / teacher_config).is_file():
    teacher_config = "configs/teacher/DATASET.py"  # None shipped for this dataset.
  how = (f"`python -m dfkd_jax.train` trains it from config.teacher_config="
         f"{config.teacher_config!r} on first use, or train it with "
         if config.teacher_config else "train one with ")
  prepare = ("" if spec.tfds_name is None else
             f"; either way the run evaluates the student on the {spec.name} test split, "
             f"so prepare the dataset too (`python -m dfkd_jax.data prepare "
             f"--dataset={spec.name} --archives=DIR --data_dir=DATA_DIR`)")
  return (f"no teacher at config.teacher_dir={str(path)!r} (no {teacher_lib.META_FILE}); "
          f"{how}`python -m dfkd_jax.train_teacher --config={teacher_config} "
          f"--workdir={path}` or import one with `python -m dfkd_jax.convert`{prepare}")


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


def _kd_loss(student_loss: str, zeta: float, delta: float) -> objectives.KDLoss:
  """The per-example student loss, plus MAD's logit bound ``zeta * max(|s| - delta, 0)``."""
  base = {"mae": losses.mae, "kl": losses.kl_divergence}[student_loss]
  if not zeta:
    return base
  return lambda s, t: base(s, t) + zeta * losses.bound_penalty(s, delta)


def _generator_loss_weights(config) -> generator_objectives.GeneratorLossWeights:
  """``config.generator_loss`` (natural log as ``entropy_log_base=None``)."""
  weights = {name: config.generator_loss[name]
             for name in generator_objectives.GeneratorLossWeights._fields}
  weights["entropy_log_base"] = weights["entropy_log_base"] or None
  return generator_objectives.GeneratorLossWeights(**weights)


def _unroll(step_loop: str, mesh) -> bool:
  """Unrolled steps for ``unroll``, and for ``auto`` on CPU (see ``config.step_loop``)."""
  return step_loop == "unroll" or (step_loop == "auto"
                                   and mesh.devices.flat[0].platform == "cpu")


def build(config: ml_collections.ConfigDict, log: Callable[[str], None] = print,
          mesh=None) -> Setup:
  """Validates the config, loads the teacher, resolves the rest (no compilation).

  Raises:
    ValueError, FileNotFoundError: a bad value, or no teacher at ``config.teacher_dir``
      (the entry point trains one first when ``config.teacher_config`` says how).
  """
  mesh = mesh or parallel.make_mesh()
  method = validate(config, mesh)
  teacher, teacher_variables, meta = _load_teacher(config)
  dataset = data.get_dataset(config.dataset)
  data.check_teacher_fits(meta, dataset.id, config.image_size)
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
  if generator_objectives.uses_batchnorm_moments(method.generator_loss):
    _, features = jax.eval_shape(
        lambda v, x: teacher.apply(v, x, train=False, features=True), teacher_variables,
        jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    if not features.bn_moments:
      log(f"teacher {meta.arch} has no BatchNorm: the {method.generator_loss!r} generator "
          "loss runs without its BatchNorm-moment term")
  s_opt, g_opt, m = config.student_optimizer, config.generator_optimizer, config.meta
  meta_options = objectives.MetaOptions(m.alpha, objectives.InnerStep(m.inner_step),
                                        m.weight_decay)
  output_range = models.output_range(config.generator)
  return Setup(
      config=config, method=method, mesh=mesh, teacher=teacher,
      teacher_variables=teacher_variables, teacher_meta=meta, student=student,
      generator=generator, input_shape=input_shape, num_classes=meta.num_classes,
      generator_output_range=output_range,
      conditional_generator=bool(config.conditional_generator),
      generator_output_logits=(bool(config.generator_loss.output_bound)
                               and output_range == "unit"),
      batch_size=config.batch_size, latent_dim=config.latent_dim,
      generator_steps=config.generator_steps, student_steps=config.student_steps,
      iterations_per_epoch=config.iterations_per_epoch, seed=config.seed,
      seeds=tuple(range(config.seed, config.seed + config.num_seeds)),
      student_optimizer=optimizers.student(
          learning_rate=s_opt.learning_rate, momentum=s_opt.momentum,
          weight_decay=s_opt.weight_decay, schedule=s_opt.schedule,
          num_epochs=config.num_epochs,
          steps_per_epoch=config.iterations_per_epoch * config.student_steps),
      generator_optimizer=optimizers.generator(
          learning_rate=g_opt.learning_rate, b1=g_opt.b1, b2=g_opt.b2),
      generator_loss_weights=_generator_loss_weights(config),
      student_update=objectives.get(method.student_update, meta_options),
      kd_loss=_kd_loss(method.student_loss, config.student_logit_bound,
                       config.generator_loss.logit_bound),
      retention_weight=config.retention_weight,
      meta_alignment=(method.student_update.startswith("meta")
                      and bool(m.with_alignment)),
      replay=replay_sources.get(method.replay).from_config(config, input_shape),
      compute_dtype=jnp.dtype(config.compute_dtype),
      unroll=_unroll(config.step_loop, mesh))

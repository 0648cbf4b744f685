"""Assembles a validated config into a :class:`~dfkd_jax.run.run_setup.Setup`.

:mod:`dfkd_jax.run.run_config` holds the config's fields, rules and parsing;
:func:`build` loads the frozen teacher and resolves everything else into typed values:
the models, the optax optimisers, the generator-loss weights, the student update, the
replay source and the host loop's values. Nothing below this module reads the config:
:mod:`dfkd_jax.run.iteration` compiles the training iteration from a
:class:`~dfkd_jax.run.run_setup.Setup`, :mod:`dfkd_jax.run.trainer` runs it. A missing teacher
is trained by the entry point (:mod:`dfkd_jax.train`), not here.

The config layer's names (``default_config``, ``validate``, ``load_config_file``, ...)
stay importable from here for configs written against this module.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfkd_jax import models
from dfkd_jax.data import augment
from dfkd_jax.data import datasets as data
from dfkd_jax.math import losses
from dfkd_jax.math import meta_init
from dfkd_jax.math import objectives
from dfkd_jax.math import optimizers
from dfkd_jax.methods import fast as fast_lib
from dfkd_jax.methods import generator_objectives
from dfkd_jax.methods import presets as methods
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.replay import sources as replay_sources
from dfkd_jax.run import progress
from dfkd_jax.run.run_config import (  # pylint: disable=unused-import
    COMPUTE_DTYPES, FIELD_RULES, INNER_STEPS, META_RULES, STEP_LOOPS, default_config,
    generator_name, has_teacher, holds_teacher, load_config_file, method_from_arg,
    parse_arg, teacher_dir, validate)
from dfkd_jax.run.run_setup import Setup


def _load_teacher(config) -> tuple[Any, Any, teacher_lib.TeacherMeta]:
  path = teacher_dir(config)
  if not holds_teacher(path):
    raise FileNotFoundError(_missing_teacher_message(config, path))
  return teacher_lib.load_teacher(path)


def _missing_teacher_message(config, path: pathlib.Path) -> str:
  """How to get the teacher of ``config.dataset``, and that its test split is needed."""
  spec = data.get_dataset(config.dataset).spec
  teacher_config = f"configs/teacher/{spec.name}.py"
  if not (pathlib.Path(__file__).parents[2] / teacher_config).is_file():  # The repo.
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


#: Generator options the trainer sets (from the teacher, the batch, the class codes).
TRAINER_SET_OPTIONS = frozenset({"latent_dim", "image_shape", "code_dim", "num_layers"})


def _generator_options(config, name: str, log) -> dict[str, Any]:
  """``config.generator_options`` the generator takes; the others are named and dropped.

  The defaults are the LRA generator's (``spectral_norm``); command-line flags cannot
  delete a field, so options another generator does not have are ignored, with a note.
  """
  accepted = set(models.options(name)) - TRAINER_SET_OPTIONS
  given = dict(config.generator_options)
  ignored = sorted(set(given) - accepted)
  if ignored:
    log(f"config.generator_options {ignored} do not apply to {name!r} "
        f"(its options: {', '.join(sorted(accepted)) or 'none'}); ignored")
  return {k: v for k, v in given.items() if k in accepted}


def _kd_loss(student_loss: str, zeta: float, delta: float,
             temperature: float = 1.0) -> objectives.KDLoss:
  """The per-example student loss, plus MAD's logit bound ``zeta * max(|s| - delta, 0)``;
  the KL at ``temperature`` (times its square, Fast DFKD's ``KLDiv(T)``) if not 1."""
  base = losses.STUDENT_LOSSES.get(student_loss)
  if temperature != 1.0:
    if student_loss != "kl":
      raise ValueError(f"a temperature needs the kl student loss, not {student_loss!r}")
    base = functools.partial(losses.kl_divergence, temperature=temperature)
  if not zeta:
    return base
  return lambda s, t: base(s, t) + zeta * losses.bound_penalty(s, delta)


def _generator_loss_weights(config) -> generator_objectives.GeneratorLossWeights:
  """``config.generator_loss`` (natural log as ``entropy_log_base=None``)."""
  weights = {name: config.generator_loss[name]
             for name in generator_objectives.GeneratorLossWeights._fields}
  weights["entropy_log_base"] = weights["entropy_log_base"] or None
  return generator_objectives.GeneratorLossWeights(**weights)


#: The largest batch at which ``step_loop="auto"`` scans on CPU. Scanned steps ran at
#: 0.94-1.05x the unrolled ones' time at batch 32-128 (WRN-16-2, LeNet-5, digits,
#: ResNet-18) but 1.12-1.17x at 256 and 512 (LeNet-5 -> half, `lra_mb`), where the
#: unrolled program's longer compile is small against a run (docs/results.md, issue 27).
CPU_SCAN_MAX_BATCH = 128


def _on_cpu(mesh) -> bool:
  return mesh.devices.flat[0].platform == "cpu"


def _unroll(step_loop: str, batch_size: int, mesh) -> bool:
  """Unrolled steps for ``unroll``, and for ``auto`` on CPU above ``CPU_SCAN_MAX_BATCH``
  (see ``config.step_loop``); scanned steps otherwise."""
  if step_loop == "auto":
    return _on_cpu(mesh) and batch_size > CPU_SCAN_MAX_BATCH
  return step_loop == "unroll"


def _alpha_scale(config: ml_collections.ConfigDict
                 ) -> Callable[[jax.Array], jax.Array] | None:
  """``meta.alpha_schedule``'s factor on alpha per iteration: the student's learning
  rate over its initial one at that iteration's epoch ("student"), or None (1)."""
  if config.meta.alpha_schedule != "student":
    return None
  factor = optimizers.student_lr_factor(config.student_optimizer.schedule,
                                        config.num_epochs)
  per_epoch = config.iterations_per_epoch
  return lambda step: factor(step // per_epoch)


def _map_replicas(replica_loop: str, mesh) -> bool:
  """``lax.map`` over replicas for ``map``, and for ``auto`` on CPU (``config.replica_loop``)."""
  return replica_loop == "map" or (replica_loop == "auto" and _on_cpu(mesh))


def _replay(config, method: methods.Method, input_shape,
            teacher_bn_channels: tuple[int, ...] = ()) -> replay_sources.ReplaySource:
  """The method's replay source, made from its config section's plain values."""
  kind = replay_sources.REPLAYS.get(method.replay)
  weights = config.generator_loss
  run = replay_sources.RunShape(
      batch_size=config.batch_size, latent_dim=config.latent_dim,
      iterations_per_epoch=config.iterations_per_epoch, input_shape=input_shape,
      one_hot=weights.one_hot, entropy=weights.entropy,
      entropy_log_base=weights.entropy_log_base or None,
      teacher_bn_channels=teacher_bn_channels)
  return kind.create(config[kind.section].to_dict() if kind.section else {}, run)


def _meta_learning_rate(f) -> float:
  """The fast methods' meta optimiser's rate: ``fast.meta_learning_rate``, or the
  official ``lr_g * g_steps`` when it is 0."""
  return f.meta_learning_rate or f.learning_rate * f.inner_steps


def _fast_options(config, method: methods.Method, meta: teacher_lib.TeacherMeta,
                  generator, input_shape, generator_input: int,
                  codes: np.ndarray | None) -> fast_lib.FastOptions:
  """``config.fast`` resolved (the fast methods only); ``codes`` are a class-coded
  generator's class codes (its latent codes are not learnt)."""
  f = config.fast
  if f.reset_epoch:
    variables = jax.eval_shape(
        lambda k: generator.init(k, jnp.zeros((2, generator_input)), train=False),
        jax.random.key(0))
    fast_lib.check_resettable(variables["params"])
  weights = _generator_loss_weights(config)._replace(
      adversarial=f.adversarial, one_hot=f.one_hot, bn_moments=f.bn)
  per_epoch = config.iterations_per_epoch
  return fast_lib.FastOptions(
      meta_gradient=method.meta_gradient, objective=f.exact_objective,
      inner=meta_init.InnerOptions(f.inner_steps, f.learning_rate,
                                   f.z_learning_rate if codes is None else 0.0,
                                   f.b1, f.b2),
      weights=weights, bn_momentum=f.bn_momentum,
      warmup_rounds=f.warmup_epochs * per_epoch,
      reset_round=(f.reset_epoch - 1) * per_epoch if f.reset_epoch else -1,
      crop_padding=f.crop_padding, flip=bool(f.flip), augment_bank=bool(f.augment_bank),
      pad_value=augment.black_level(meta.mean, meta.std)[:input_shape[-1]],
      class_codes=codes, generator_life_rounds=f.generator_life_epochs * per_epoch)


def build(config: ml_collections.ConfigDict, log: Callable[[str], None] = print,
          mesh=None, method: methods.Method | None = None) -> Setup:
  """Loads the teacher and resolves the config into a :class:`Setup` (no compilation).

  Args:
    config: the run's config.
    log: where notes go.
    mesh: the device mesh (default :func:`dfkd_jax.parallel.mesh.make_mesh`).
    method: :func:`~dfkd_jax.run.run_config.validate`'s result for ``config`` on ``mesh``
      (the entry point validates before it trains a first-use teacher); without it
      the config is validated here first.

  Raises:
    ValueError, FileNotFoundError: a bad value, or no teacher at ``config.teacher_dir``
      (the entry point trains one first when ``config.teacher_config`` says how).
  """
  mesh = mesh or parallel.make_mesh()
  if method is None:
    method = validate(config, mesh)
  with progress.Heartbeat(log, "loading", "loading the teacher, building the models ...",
                          config.progress_seconds):
    return _assemble(config, log, mesh, method)


def _assemble(config, log, mesh, method: methods.Method) -> Setup:
  """:func:`build` after validation."""
  teacher, teacher_variables, meta = _load_teacher(config)
  dataset = data.get_dataset(config.dataset)
  data.check_teacher_fits(meta, dataset.id, config.image_size)
  if config.generator_loss.bn_prior and not teacher_variables.get("batch_stats"):
    raise ValueError(f"config.generator_loss.bn_prior={config.generator_loss.bn_prior}"
                     f" needs a teacher with BatchNorm, but the {meta.arch} teacher at "
                     f"{config.teacher_dir} has none; set it to 0")
  input_shape = tuple(meta.input_shape)
  student = models.get(config.student, num_classes=meta.num_classes,
                       input_shape=input_shape, label="config.student")
  name = generator_name(config, method)
  if name != config.generator:
    log(f"method {config.method!r} synthesises with its own generator {name!r} "
        f"(config.generator={config.generator!r} is not used)")
  codes, coded_options, generator_input = None, {}, config.latent_dim
  if models.resolve(name, "generator").class_coded:  # NAYER's input.
    codes = fast_lib.class_codes(config.fast.class_codes, meta.num_classes)
    coded_options = dict(code_dim=codes.shape[1], num_layers=fast_lib.num_noisy_layers(
        config.batch_size, meta.num_classes))
    generator_input = sum(coded_options.values())
  generator = models.get(name, num_classes=meta.num_classes,
                         latent_dim=config.latent_dim, image_shape=input_shape,
                         label="config.generator", **_generator_options(config, name, log),
                         **coded_options)
  uses_moments = generator_objectives.GENERATOR_LOSSES.get(
      method.generator_loss).uses_batchnorm_moments
  bn_channels: tuple[int, ...] = ()
  if uses_moments or config.generator_loss.bn_prior:
    _, features = jax.eval_shape(
        lambda v, x: teacher.apply(v, x, train=False, features=True), teacher_variables,
        jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    bn_channels = tuple(int(m.batch_mean.shape[-1]) for m in features.bn_moments)
    if not features.bn_moments and config.generator_loss.bn_prior:
      raise ValueError(f"config.generator_loss.bn_prior={config.generator_loss.bn_prior}"
                       f" needs the BatchNorm moments of the teacher, but {meta.arch} "
                       "returns none in ClassifierFeatures.bn_moments (use "
                       "dfkd_jax.models.BatchNorm layers and return their moments, "
                       "docs/contracts.md); or set it to 0")
    if not features.bn_moments:
      log(f"teacher {meta.arch} has no BatchNorm: the {method.generator_loss!r} generator "
          "loss runs without its BatchNorm-moment term")
  s_opt, g_opt, m = config.student_optimizer, config.generator_optimizer, config.meta
  meta_options = objectives.MetaOptions(m.alpha, objectives.InnerStep(m.inner_step),
                                        m.weight_decay)
  output_range = models.output_range(name)
  update_rule = objectives.UPDATE_RULES.get(method.student_update)
  fast, temperature = None, 1.0
  generator_optimizer = optimizers.generator(
      learning_rate=g_opt.learning_rate, b1=g_opt.b1, b2=g_opt.b2)
  # Epochs of the student's schedule: a fast method's warm-up epochs take no step.
  student_epochs = config.num_epochs
  if method.synthesis_rounds:
    fast = _fast_options(config, method, meta, generator, input_shape, generator_input,
                         codes)
    temperature = config.fast.temperature
    generator_optimizer = optimizers.generator(  # The meta optimiser.
        learning_rate=_meta_learning_rate(config.fast), b1=config.fast.b1,
        b2=config.fast.b2)
    student_epochs = config.num_epochs - config.fast.warmup_epochs
  return Setup(
      record=config.to_dict(), method=method, mesh=mesh, teacher=teacher,
      teacher_variables=teacher_variables, teacher_meta=meta, student=student,
      generator=generator, input_shape=input_shape, num_classes=meta.num_classes,
      generator_output_range=output_range,
      conditional_generator=bool(config.conditional_generator),
      generator_output_logits=(bool(config.generator_loss.output_bound)
                               and output_range == "unit"),
      batch_size=config.batch_size, latent_dim=generator_input,
      generator_steps=config.generator_steps, student_steps=config.student_steps,
      iterations_per_epoch=config.iterations_per_epoch, seed=config.seed,
      seeds=tuple(range(config.seed, config.seed + config.num_seeds)),
      student_optimizer=optimizers.student(
          learning_rate=s_opt.learning_rate, momentum=s_opt.momentum,
          weight_decay=s_opt.weight_decay, schedule=s_opt.schedule,
          num_epochs=student_epochs,
          steps_per_epoch=config.iterations_per_epoch * config.student_steps,
          min_learning_rate=s_opt.min_learning_rate),
      generator_optimizer=generator_optimizer,
      generator_loss_weights=_generator_loss_weights(config),
      student_update=objectives.get(method.student_update, meta_options),
      alpha_scale=_alpha_scale(config) if update_rule.is_meta else None,
      needs_retention=update_rule.needs_retention,
      kd_loss=_kd_loss(method.student_loss, config.student_logit_bound,
                       config.generator_loss.logit_bound, temperature),
      retention_weight=config.retention_weight,
      meta_alignment=update_rule.is_meta and bool(m.with_alignment),
      replay=_replay(config, method, input_shape, bn_channels),
      compute_dtype=jnp.dtype(config.compute_dtype),
      unroll=_unroll(config.step_loop, config.batch_size, mesh),
      map_replicas=_map_replicas(config.replica_loop, mesh),
      num_epochs=config.num_epochs, eval_batch_size=config.eval_batch_size,
      evaluation_dataset=data.evaluation_dataset(meta, config.dataset),
      image_size=config.image_size, data_dir=config.data_dir or None,
      checkpoints_to_keep=config.checkpoints_to_keep,
      tensorboard=bool(config.tensorboard),
      progress_seconds=config.progress_seconds,
      criterion=config.selection.criterion, probe_size=config.selection.probe_size,
      probe_epochs=config.selection.probe_epochs,
      collapse_epochs=config.selection.collapse_epochs,
      fast=fast, untrained_epochs=config.fast.warmup_epochs if fast else 0)

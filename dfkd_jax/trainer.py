"""The adversarial DFKD training loop as a library (LRA Sections 3-4).

``run(config, workdir)`` distils a frozen teacher into a student:

* state: generator and student (params, BatchNorm stats, optimiser state), the replay
  source's state (memory buffer, VAE or EMA generator, :mod:`dfkd_jax.replay.sources`),
  the RNG key and the iteration counter -- one pytree, checkpointed every epoch;
  the teacher is frozen, loaded from a teacher checkpoint, and is neither differentiated
  nor saved with the student;
* one iteration = ``generator_steps`` generator updates (the method's loss kind,
  :mod:`dfkd_jax.generator_objectives`), the replay source's after-generator hook (the
  EMA update), then ``student_steps`` student updates (``lax.scan``), each on fresh
  samples ``G(z)`` and a retention batch from the replay source, with the update rule of
  the method (:mod:`dfkd_jax.methods`, :mod:`dfkd_jax.objectives`); it is ONE jitted call
  with donated state, run per device inside ``jax.shard_map`` (:mod:`dfkd_jax.parallel`);
* an epoch = ``iterations_per_epoch`` iterations, then the student's accuracy on the real
  test set, a checkpoint, ``metrics.jsonl`` and ``summary.json``;
* a SIGTERM (preemption) saves a checkpoint at the next iteration boundary and raises
  :class:`Preempted`; checkpoints are numbered by iterations done.

Rerunning the same command resumes from the latest checkpoint, at its exact iteration;
the result is the same as an uninterrupted run (all randomness derives from the seed and
the iteration counter). Multi-process runs: see :func:`run` and
:mod:`dfkd_jax.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from dfkd_jax import data
from dfkd_jax import distributed
from dfkd_jax import evaluation
from dfkd_jax import generator_objectives
from dfkd_jax import losses
from dfkd_jax import methods
from dfkd_jax import models
from dfkd_jax import objectives
from dfkd_jax import parallel
from dfkd_jax import teacher as teacher_lib
from dfkd_jax.models import layers
from dfkd_jax.replay import ema as ema_lib
from dfkd_jax.replay import generative
from dfkd_jax.replay import memory as memory_lib
from dfkd_jax.replay import sources as replay_sources

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
      with_alignment=True))      # Log cos(grad L_acq, grad L_ret) (Section 3.4).
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
  teacher_dir = pathlib.Path(config.teacher_dir or "").expanduser()
  if not config.teacher_dir:
    raise ValueError("config.teacher_dir is empty; point it at a teacher made by "
                     "`python -m dfkd_jax.train_teacher` or `python -m dfkd_jax.convert`")
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


# ---------------------------------------------------------------------------
# State.
# ---------------------------------------------------------------------------


class ModelState(NamedTuple):
  params: Any
  batch_stats: Any
  opt_state: Any


class TrainState(NamedTuple):
  step: jax.Array                 # Iterations done (int32).
  rng: jax.Array                  # Raw uint32 key of the run.
  generator: ModelState
  student: ModelState
  # The replay source's state (dfkd_jax.replay.sources): the memory buffer, the VAE or
  # the EMA generator; None without replay.
  replay: (memory_lib.MemoryState | generative.VAEState | ema_lib.EMAState | None)


def student_optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (PyTorch ``SGD``), per-epoch cosine."""
  opt = config.student_optimizer
  steps_per_epoch = config.iterations_per_epoch * config.student_steps
  if opt.schedule == "cosine":  # CosineAnnealingLR(T_max=epochs), stepped per epoch.
    def schedule(count):
      epoch = count // steps_per_epoch
      return opt.learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * epoch / config.num_epochs))
  else:
    schedule = opt.learning_rate
  return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(schedule, momentum=opt.momentum or None))


def generator_optimizer(config) -> optax.GradientTransformation:
  opt = config.generator_optimizer
  return optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2)


def init_state(setup: Setup) -> TrainState:
  """A fresh state (on the host's default device; :func:`state_specs` shards it)."""
  config = setup.config
  k_gen, k_student = jax.random.split(jax.random.PRNGKey(config.seed))
  z = jnp.zeros((2, config.latent_dim), jnp.float32)
  x = jnp.zeros((2, *setup.input_shape), jnp.float32)
  gen_inputs = (z,)
  if config.conditional_generator:  # Creates the class embedding table e.
    gen_inputs = (z, jnp.zeros((2,), jnp.int32))
  gen_vars = jax.jit(functools.partial(setup.generator.init, train=False))(k_gen,
                                                                            *gen_inputs)
  stu_vars = jax.jit(functools.partial(setup.student.init, train=False))(k_student, x)

  def model_state(variables, optimizer):
    params = variables["params"]
    return ModelState(params, variables.get("batch_stats", {}), optimizer.init(params))

  generator = model_state(gen_vars, generator_optimizer(config))
  replay = None
  if setup.method.replay == "memory":
    replay = memory_lib.init(config.memory.num_slots, config.memory.samples_per_slot,
                             setup.input_shape, setup.num_classes,
                             dtype=jnp.dtype(config.memory.dtype))
  elif setup.method.replay == "generative":
    k_vae = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    replay = jax.jit(functools.partial(
        generative.init, setup.vae, image_shape=setup.input_shape,
        learning_rate=config.vae.learning_rate))(k_vae)
  elif setup.method.replay == "ema":
    replay = ema_lib.init(generator.params, generator.batch_stats)
  return TrainState(jnp.zeros((), jnp.int32),
                    jax.random.PRNGKey(config.seed + 1),
                    generator, model_state(stu_vars, student_optimizer(config)), replay)


def state_specs(state: TrainState) -> TrainState:
  """PartitionSpecs: everything replicated but the memory buffer's sample axis.

  The VAE and the EMA generator are replicated like the generator.
  """
  specs = jax.tree.map(lambda _: P(), state)
  if isinstance(state.replay, memory_lib.MemoryState):
    specs = specs._replace(replay=memory_lib.MemoryState(
        x=P(None, AXIS), teacher_logits=P(None, AXIS), num_pushed=P()))
  return specs


# ---------------------------------------------------------------------------
# The jitted iteration.
# ---------------------------------------------------------------------------


def _cast(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                      else a, tree)


def _classifier_apply(module, compute_dtype) -> objectives.ApplyFn:
  """Training-mode apply in ``compute_dtype`` (params and stats stay float32)."""

  def apply_fn(params, batch_stats, x):
    logits, updates = module.apply(
        {"params": _cast(params, compute_dtype), "batch_stats": batch_stats},
        x.astype(compute_dtype), train=True, mutable=["batch_stats"])
    return logits.astype(jnp.float32), updates["batch_stats"]

  return apply_fn


def _loop(step, carry, xs, unroll: bool):
  """``lax.scan(step, carry, xs)``, or the same loop unrolled into the program."""
  if not unroll:
    return jax.lax.scan(step, carry, xs)
  outputs = []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, out = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    outputs.append(out)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


def generator_loss_weights(config) -> generator_objectives.GeneratorLossWeights:
  """``config.generator_loss`` as :class:`~generator_objectives.GeneratorLossWeights`."""
  gl = config.generator_loss
  return generator_objectives.GeneratorLossWeights(
      adversarial=gl.adversarial, js_temperature=gl.js_temperature, js_form=gl.js_form,
      one_hot=gl.one_hot, activation=gl.activation, entropy=gl.entropy,
      entropy_log_base=gl.entropy_log_base or None, bn_moments=gl.bn_moments,
      bn_prior=gl.bn_prior,
      class_nll=gl.class_nll, embedding_norm=gl.embedding_norm,
      embedding_gamma=gl.embedding_gamma, teacher_logit_bound=gl.teacher_logit_bound,
      logit_bound=gl.logit_bound, output_bound=gl.output_bound,
      output_bound_value=gl.output_bound_value)


def student_kd_loss(config, method: methods.Method) -> objectives.KDLoss:
  """The per-example student loss of the method, plus MAD's logit bound if enabled."""
  base = {"mae": losses.mae, "kl": losses.kl_divergence}[method.student_loss]
  zeta, delta = config.student_logit_bound, config.generator_loss.logit_bound
  if not zeta:
    return base
  return lambda s, t: base(s, t) + zeta * losses.bound_penalty(s, delta)


# Generators whose output is an image in (0, 1) (sigmoid); the trainer normalises it
# with the teacher's mean/std. The others end in an affine-free BatchNorm that already
# puts their output in the teacher's normalised input space.
UNIT_RANGE_GENERATORS = ("mad_generator",)


def make_iteration(setup: Setup, state: TrainState):
  """The jitted ``(state, teacher_variables) -> (state, metrics)`` training iteration."""
  config, method, mesh = setup.config, setup.method, setup.mesh
  num_devices = mesh.devices.size
  global_batch = config.batch_size
  local_batch = global_batch // num_devices
  compute_dtype = jnp.dtype(config.compute_dtype)
  student_apply = _classifier_apply(setup.student, compute_dtype)
  g_opt, s_opt = generator_optimizer(config), student_optimizer(config)
  gl = config.generator_loss
  weights = generator_loss_weights(config)
  gen_loss = generator_objectives.get(method.generator_loss)
  kd_loss = student_kd_loss(config, method)
  conditional = bool(config.conditional_generator)
  with_output_logits = bool(gl.output_bound) and config.generator == "mad_generator"
  if config.generator in UNIT_RANGE_GENERATORS:
    shape = (1, 1, 1, setup.input_shape[-1])
    in_mean = jnp.asarray(setup.teacher_meta.mean, jnp.float32).reshape(shape)
    in_std = jnp.asarray(setup.teacher_meta.std, jnp.float32).reshape(shape)
  unroll = (config.step_loop == "unroll" or
            (config.step_loop == "auto" and mesh.devices.flat[0].platform == "cpu"))

  def local_rows(a, n):
    """This device's rows of a global ``[n, ...]`` array (the same on every device)."""
    return jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index(AXIS) * (n // num_devices),
                                        n // num_devices)

  def local_normal(key, n, width):
    """This device's rows of one global ``[n, width]`` normal draw."""
    return local_rows(jax.random.normal(key, (n, width), jnp.float32), n)

  def draw(key, n):
    """Generator inputs for ``n`` global samples: ``(z,)`` or ``(z, y)``."""
    k_z, k_y = jax.random.split(key)
    z = local_normal(k_z, n, config.latent_dim)
    if not conditional:
      return (z,)
    return z, local_rows(jax.random.randint(k_y, (n,), 0, setup.num_classes), n)

  def generate_full(params, batch_stats, z, y=None):
    """``(x, pre-sigmoid output or None, new batch_stats)``, training mode."""
    kwargs = {}
    if conditional:
      kwargs["y"] = y
    if with_output_logits:
      kwargs["return_logits"] = True
    out, updates = setup.generator.apply(
        {"params": _cast(params, compute_dtype), "batch_stats": batch_stats},
        z.astype(compute_dtype), train=True, mutable=["batch_stats"], **kwargs)
    x, u = out if with_output_logits else (out, None)
    x = x.astype(jnp.float32)
    if config.generator in UNIT_RANGE_GENERATORS:
      x = (x - in_mean) / in_std
    return x, u, updates["batch_stats"]

  def generate(params, batch_stats, *inputs):
    return generate_full(params, batch_stats, *inputs)[0]

  def teacher_logits(teacher_vars, x, features=False):
    out = setup.teacher.apply(_cast(teacher_vars, compute_dtype), x.astype(compute_dtype),
                              train=False, features=features)
    if features:
      logits, feats = out
      return logits.astype(jnp.float32), feats
    return out.astype(jnp.float32)

  def replay_source(teacher_vars):
    ctx = replay_sources.Context(
        teacher=functools.partial(teacher_logits, teacher_vars), draw=draw,
        generate=generate, normal=local_normal, global_batch=global_batch,
        axis_name=AXIS)
    if method.replay == "memory":
      return replay_sources.memory_source(
          ctx, samples_per_slot=config.memory.samples_per_slot,
          push_every_epochs=config.memory.push_every_epochs,
          iterations_per_epoch=config.iterations_per_epoch)
    if method.replay == "generative":
      vae_config = ml_collections.ConfigDict(dict(config.vae))
      vae_config.samples = vae_samples(config)
      vae_config.latent_dim = config.latent_dim
      return replay_sources.vae_source(
          ctx, setup.vae, vae_config,
          (gl.one_hot, gl.entropy, gl.entropy_log_base or None))
    if method.replay == "ema":
      return replay_sources.ema_source(ctx, samples=ema_samples(config),
                                       decay=config.ema.decay)
    return None

  def generator_step(student, teacher_vars, gen, key):
    inputs = draw(key, global_batch)

    def loss_fn(params):
      x, u, new_stats = generate_full(params, gen.batch_stats, *inputs)
      t_logits, t_feats = teacher_logits(teacher_vars, x, features=True)
      # The student sees x in training mode (batch statistics), as in the peers' code;
      # its running statistics are not updated by the generator step.
      s_logits, _ = student_apply(student.params, student.batch_stats, x)
      labels = embeddings = None
      if conditional:
        labels = inputs[1]
        embeddings = params["class_embedding"]["embedding"][labels]
      batch = generator_objectives.GeneratorBatch(t_logits, s_logits, t_feats, labels,
                                                  embeddings, u)
      loss, terms = gen_loss(batch, weights, AXIS)
      return loss, (new_stats, terms)

    (loss, (new_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        gen.params)
    updates, opt_state = g_opt.update(grads, gen.opt_state, gen.params)
    gen = ModelState(optax.apply_updates(gen.params, updates), new_stats, opt_state)
    metrics = {"generator_loss": loss, "disagreement": terms.pop("disagreement")}
    metrics.update({f"generator_{k}": v for k, v in terms.items()})
    return gen, metrics

  def student_step(gen, teacher_vars, source, carry, xs):
    key, index = xs
    student, replay, _, _ = carry
    k_z, k_r, k_u = jax.random.split(key, 3)
    x = jax.lax.stop_gradient(generate(gen.params, gen.batch_stats,
                                       *draw(k_z, global_batch)))
    acq = objectives.KDBatch(x, teacher_logits(teacher_vars, x))
    common = dict(kd_loss=kd_loss, axis_name=AXIS)
    retention_valid = jnp.zeros((), jnp.bool_)
    replay_metrics = {}
    if method.student_update == "acquire":
      out = objectives.acquire(student.params, student.batch_stats, student_apply, acq,
                               **common)
    else:
      # The student update sees a KDBatch and a weight, whatever the replay source.
      ret, retention_valid = source.retention(replay, k_r)
      weight = retention_valid.astype(jnp.float32) * config.retention_weight
      if method.student_update == "joint":
        out = objectives.joint(student.params, student.batch_stats, student_apply, acq,
                               ret, retention_weight=weight, **common)
      else:
        out = objectives.meta(
            student.params, student.batch_stats, student_apply, acq, ret,
            alpha=config.meta.alpha, inner_step=config.meta.inner_step,
            weight_decay=config.meta.weight_decay,
            first_order=method.student_update == "meta_first_order",
            retention_weight=weight, with_alignment=config.meta.with_alignment,
            **common)
    updates, opt_state = s_opt.update(out.grads, student.opt_state, student.params)
    student = ModelState(optax.apply_updates(student.params, updates), out.batch_stats,
                         opt_state)
    if source is not None:
      replay, replay_metrics = source.after_student_step(replay, index, k_u, acq)
    d = out.diagnostics
    nan = jnp.full((), jnp.nan, jnp.float32)
    metrics = {"student_loss": out.loss, "loss_acq": d.loss_acq,
               "loss_ret": jnp.where(retention_valid, d.loss_ret, nan),
               "loss_ret_adapted": jnp.where(retention_valid, d.loss_ret_adapted, nan),
               "grad_cosine": jnp.where(retention_valid, d.grad_cosine, nan),
               "grad_dot": jnp.where(retention_valid, d.grad_dot, nan),
               **replay_metrics}
    return (student, replay, acq.x, acq.teacher_logits), metrics

  def iteration(state: TrainState, teacher_vars):
    source = replay_source(teacher_vars)
    with layers.batch_stats_axis(AXIS):
      key = jax.random.fold_in(state.rng, state.step)
      k_gen, k_student = jax.random.split(key)
      gen, gen_metrics = _loop(
          functools.partial(generator_step, state.student, teacher_vars),
          state.generator, jax.random.split(k_gen, config.generator_steps), unroll)
      replay = state.replay
      if source is not None:
        replay = source.after_generator(replay, gen)
      # Placeholders for the last generated batch (per device, hence "varying").
      x0, t0 = jax.lax.pcast(
          (jnp.zeros((local_batch, *setup.input_shape), jnp.float32),
           jnp.zeros((local_batch, setup.num_classes), jnp.float32)), (AXIS,),
          to="varying")
      # Step indices: NumPy, so that an unrolled loop sees Python-level constants.
      steps = (jax.random.split(k_student, config.student_steps),
               np.arange(config.student_steps, dtype=np.int32))
      (student, replay, last_x, last_t), stu_metrics = _loop(
          functools.partial(student_step, gen, teacher_vars, source),
          (state.student, replay, x0, t0), steps, unroll)
      if source is not None:
        replay = source.end_of_iteration(replay, state.step,
                                         objectives.KDBatch(last_x, last_t))
    metrics = {k: jnp.mean(v) for k, v in gen_metrics.items()}
    metrics.update({k: jnp.nanmean(v) if k not in ("student_loss", "loss_acq")
                    else jnp.mean(v) for k, v in stu_metrics.items()})
    metrics["retention_steps"] = jnp.sum(~jnp.isnan(stu_metrics["grad_cosine"]))
    new_state = TrainState(state.step + 1, state.rng, gen, student, replay)
    return new_state, metrics

  specs = state_specs(state)
  sharded = parallel.shard(iteration, mesh, in_specs=(specs, P()), out_specs=(specs, P()))
  return jax.jit(sharded, donate_argnums=0)


def make_eval_step(module):
  """Jitted ``(variables, images, labels, mask) -> correct`` (eval-mode BatchNorm)."""

  @jax.jit
  def eval_step(variables, images, labels, mask):
    logits = module.apply(variables, images, train=False)
    return evaluation.count_correct(logits, labels, mask)

  return eval_step


def accuracy(eval_step, variables, split, dataset_id, meta, batch_size, mesh) -> float:
  """Exact accuracy (%) on a whole split, batches sharded over the mesh.

  Every process holds the split but preprocesses and feeds only the rows of its own
  devices; the count of correct predictions is reduced over the whole mesh, so each
  process gets the accuracy one process would.
  """
  correct = 0
  for start in range(0, len(split.labels), batch_size):
    def make_rows(rows, start=start):
      return tuple(data.eval_rows(split, dataset_id, start + rows,
                                  image_shape=meta.input_shape,
                                  normalization=(meta.mean, meta.std)))
    images, labels, mask = parallel.global_batch(make_rows, batch_size, mesh)
    correct += int(eval_step(variables, images, labels, mask))
  return 100.0 * correct / len(split.labels)


# ---------------------------------------------------------------------------
# The host loop: evaluation, checkpoints, metrics, summary.
# ---------------------------------------------------------------------------

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN or Inf; the last good checkpoint is left as it was."""


class Preempted(Exception):
  """A preemption notice (SIGTERM) stopped the run after it saved a checkpoint.

  Rerunning the same command resumes from that checkpoint.
  """

  def __init__(self, step: int, checkpoint_dir: pathlib.Path):
    super().__init__(f"preempted: saved iteration {step} to {checkpoint_dir}; rerun the "
                     "same command to resume")
    self.step = step


def _write_json_atomic(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
  os.replace(tmp, path)


def _json_float(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def summary(config, history: dict[str, Any]) -> dict[str, Any]:
  """The ``summary.json`` contract (see ``docs/contracts.md``)."""
  out = {"method": config.method, "dataset": config.dataset, "seed": config.seed,
         "teacher_accuracy": history["teacher_accuracy"]}
  if history["test_accuracy"]:
    out.update(evaluation.summarize(history["test_accuracy"]))
  else:
    out.update(test_accuracy=[], acc_max=None, learning_evolution={},
               cumulative_mean_accuracy=[])
  alignment = history["alignment"]
  if any(a is not None for a in alignment):
    out["alignment"] = alignment
  out["student_steps_per_second"] = history["student_steps_per_second"]
  out["epochs_completed"] = len(history["test_accuracy"])
  out["config"] = config.to_dict()
  return out


def _tensorboard_writer(workdir: pathlib.Path, enabled: bool, log):
  """A ``(step, scalars) -> None`` writer, or ``None`` without TensorFlow."""
  if not enabled:
    return None
  if not all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard")):
    log("TensorBoard event files disabled: tensorflow and tensorboard are not both "
        "installed; metrics.jsonl has the same numbers")
    return None
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

  def write(step, scalars):
    with writer.as_default():
      for name, value in scalars.items():
        if value is not None:
          tf.summary.scalar(name, value, step=step)
    writer.flush()

  return write


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        log: Callable[[str], None] = print, mesh=None) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir`` and returns its summary.

  Checkpoints are numbered by iterations done (``state.step``): one at the end of every
  epoch, and one at the iteration boundary after a preemption notice (SIGTERM). The
  JSON ``history`` saved with each holds the completed epochs' accuracies and the
  current epoch's alignment values so far, so a resumed run continues from the exact
  iteration and ends equal to an uninterrupted one.

  Multi-process (after :func:`dfkd_jax.distributed.initialize`): every process calls
  ``run`` with the same arguments; all take part in the iterations, the evaluation and
  the checkpoints (``workdir`` must be one directory shared by all hosts); only process
  0 logs and writes ``summary.json``, ``metrics.jsonl`` and TensorBoard files.

  Raises:
    ValueError, FileNotFoundError: bad config or missing teacher/dataset, before any
      compilation.
    NonFiniteLossError: a loss became NaN/Inf; the latest checkpoint is the last good one.
    Preempted: SIGTERM; the checkpoint of the current iteration is saved.
  """
  workdir = pathlib.Path(workdir).absolute()
  primary = distributed.is_primary()
  if not primary:
    log = lambda message: None  # pylint: disable=unnecessary-lambda-assignment
  with distributed.PreemptionWatch() as preemption:
    return _run(config, workdir, log, mesh, primary, preemption)


def _run(config, workdir: pathlib.Path, log, mesh, primary: bool,
         preemption: distributed.PreemptionWatch) -> dict[str, Any]:
  """The host loop of :func:`run`."""
  setup = build(config, log, mesh)
  mesh = setup.mesh
  dataset_id = setup.teacher_meta.dataset
  test_split = data.load_split(dataset_id, "test", data_dir=config.data_dir or None)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint_dir = workdir / CHECKPOINT_DIR
  per_epoch = config.iterations_per_epoch

  state = init_state(setup)
  specs = state_specs(state)
  state = parallel.put(state, mesh, specs)
  teacher_vars = parallel.replicate(setup.teacher_variables, mesh)
  eval_student = make_eval_step(setup.student)

  manager = ocp.CheckpointManager(
      checkpoint_dir,
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep,
                                           create=True))
  history = {"teacher_accuracy": None, "test_accuracy": [], "alignment": [],
             "student_steps_per_second": None}
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    state, history = restored.state, restored.history
  start = int(jax.device_get(state.step))
  start_epoch = start // per_epoch
  if len(history["test_accuracy"]) != start_epoch:
    raise ValueError(
        f"the checkpoint in {checkpoint_dir} is at iteration {start} = epoch "
        f"{start / per_epoch:g} with config.iterations_per_epoch={per_epoch}, but it "
        f"records {len(history['test_accuracy'])} evaluated epochs; resume with the "
        "config.iterations_per_epoch it was made with")
  if latest is not None and start_epoch >= config.num_epochs:
    log(f"{checkpoint_dir} holds the finished run ({start_epoch} epochs)")
  elif latest is not None:
    log(f"resumed from {checkpoint_dir}: epoch {start_epoch + 1}, iteration "
        f"{start % per_epoch + 1} of {per_epoch}")
  # Alignment (grad cosine) values of the epoch in progress, saved with mid-epoch
  # checkpoints so that a resumed epoch's mean is the uninterrupted one.
  cosines = list(history.pop("epoch_cosines", []))
  if primary:
    _truncate_metrics(workdir / METRICS_FILE, start, per_epoch)

  if history["teacher_accuracy"] is None:
    eval_teacher = make_eval_step(setup.teacher)
    history["teacher_accuracy"] = accuracy(
        eval_teacher, teacher_vars, test_split, dataset_id, setup.teacher_meta,
        config.eval_batch_size, mesh)
    log(f"teacher {setup.teacher_meta.arch}: {history['teacher_accuracy']:.2f}% on the "
        f"{dataset_id} test set")

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave({**history, "epoch_cosines": cosines})))
    manager.wait_until_finished()

  iteration = make_iteration(setup, state)
  tensorboard = _tensorboard_writer(workdir, config.tensorboard, log) if primary else None
  steps_per_iteration = config.student_steps
  total = config.num_epochs * per_epoch
  train_time, timed_iterations = 0.0, 0
  run_start = time.time()
  with contextlib.ExitStack() as stack:
    metrics_file = (stack.enter_context(open(workdir / METRICS_FILE, "a")) if primary
                    else None)
    for step in range(start, total):
      epoch, i = divmod(step, per_epoch)
      t0 = time.time()
      state, metrics = iteration(state, teacher_vars)
      metrics = jax.device_get(metrics)  # Blocks: one small transfer per iteration.
      if step > start:  # The first call compiles.
        train_time += time.time() - t0
        timed_iterations += 1
      bad = [k for k, v in metrics.items()
             if k in ("generator_loss", "student_loss", "loss_acq")
             and not np.isfinite(v)]
      if bad:
        raise NonFiniteLossError(
            f"{', '.join(bad)} became {[float(metrics[k]) for k in bad]} at epoch "
            f"{epoch + 1}, iteration {i + 1}; the run stopped without saving, and the "
            f"last good checkpoint ({manager.latest_step()}) in "
            f"{checkpoint_dir} is intact. Lower the learning rates or "
            "meta.alpha, or use compute_dtype=float32.")
      if metrics_file:
        record = {"epoch": epoch + 1, "iteration": i + 1,
                  **{k: _json_float(v) for k, v in metrics.items()}}
        metrics_file.write(json.dumps(record) + "\n")
      if int(metrics["retention_steps"]) > 0 and math.isfinite(metrics["grad_cosine"]):
        cosines.append(float(metrics["grad_cosine"]))
      if metrics_file:  # Every line up to a checkpoint is on disk before it.
        metrics_file.flush()
      saved = False
      if i + 1 == per_epoch:
        saved = True
        variables = {"params": state.student.params,
                     "batch_stats": state.student.batch_stats}
        acc = accuracy(eval_student, variables, test_split, dataset_id,
                       setup.teacher_meta, config.eval_batch_size, mesh)
        history["test_accuracy"].append(acc)
        history["alignment"].append(float(np.mean(cosines)) if cosines else None)
        cosines = []
        if timed_iterations:
          history["student_steps_per_second"] = (
              timed_iterations * steps_per_iteration / train_time)
        save(step + 1)
        if primary:
          _write_json_atomic(workdir / SUMMARY_FILE, summary(config, history))
        if tensorboard:
          tensorboard(epoch + 1, {"test_accuracy": acc,
                                  "alignment": history["alignment"][-1],
                                  **{k: _json_float(v) for k, v in metrics.items()}})
        done = step + 1 - start
        eta = (time.time() - run_start) / done * (total - step - 1)
        log(f"epoch {epoch + 1}/{config.num_epochs}: student {acc:.2f}% "
            f"(max {max(history['test_accuracy']):.2f}%, teacher "
            f"{history['teacher_accuracy']:.2f}%), student loss "
            f"{float(metrics['student_loss']):.4f}, ETA {eta / 60:.1f} min")
      # Every process asks at every iteration (the sync protocol needs it).
      if preemption.reached(step + 1) and step + 1 < total:
        if not saved:
          save(step + 1)
        manager.close()
        log(f"preemption notice (SIGTERM): stopped at epoch {epoch + 1}, iteration "
            f"{i + 1} of {per_epoch}, checkpoint saved in {checkpoint_dir}; rerun the "
            "same command to resume")
        raise Preempted(step + 1, checkpoint_dir)
  manager.close()
  result = summary(config, history)
  if primary:
    _write_json_atomic(workdir / SUMMARY_FILE, result)
  return result


def _truncate_metrics(path: pathlib.Path, completed_iterations: int,
                      iterations_per_epoch: int) -> None:
  """Drops metric lines after the checkpoint's iteration (a resumed run redoes them)."""
  if not path.exists():
    return

  def iteration(line):
    record = json.loads(line)
    return (record["epoch"] - 1) * iterations_per_epoch + record["iteration"]

  kept = [line for line in path.read_text().splitlines()
          if line and iteration(line) <= completed_iterations]
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in kept))
  os.replace(tmp, path)

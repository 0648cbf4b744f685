"""The jitted training iteration and the state it advances (LRA Sections 3-4).

* :class:`TrainState`: generator and student (params, BatchNorm stats, optimiser
  state), the replay source's state (memory buffer, VAE or EMA generator,
  :mod:`dfkd_jax.replay.sources`), the RNG key and the iteration counter -- one pytree;
  the frozen teacher is an argument, neither differentiated nor part of the state.
* :func:`generator_step`: one generator update (the method's loss kind,
  :mod:`dfkd_jax.methods.generator_objectives`, LRA eq. 15).
* :func:`student_step`: one student update on fresh samples ``G(z)`` and a retention
  batch from the replay source, with the method's update rule (LRA eqs. 3, 5, 6,
  :mod:`dfkd_jax.math.objectives`).
* :func:`make_iteration`: ``generator_steps`` generator steps, the replay source's
  after-generator hook (the EMA update), then ``student_steps`` student steps. ONE
  jitted call with donated state, run per device inside ``jax.shard_map``
  (:mod:`dfkd_jax.parallel.mesh`).

Replicas (``config.num_seeds > 1``, :func:`init_replicas`): N independent runs in one
program. Every leaf of the state gets a leading replica axis and the iteration is
``jax.vmap``-ped over it inside the same ``shard_map``: each device holds every replica
and its share of each replica's batch (the batch, not the replicas, is sharded, so the
divisibility rules are those of one run). Replica k computes what a single run with seed
``seed + k`` computes; its metrics come out with a leading ``[N]`` axis.

Everything here takes resolved values (a :class:`~dfkd_jax.run.run_setup.Setup`, or the
plain values it holds); nothing reads the config.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from dfkd_jax.math import meta_init
from dfkd_jax.math import objectives
from dfkd_jax.math import optimizers
from dfkd_jax.methods import fast as fast_lib
from dfkd_jax.methods import generator_objectives
from dfkd_jax.models import layers
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.replay import ema as ema_lib
from dfkd_jax.replay import generative
from dfkd_jax.replay import memory as memory_lib
from dfkd_jax.replay import sources as replay_sources
from dfkd_jax.run.run_setup import Setup

AXIS = parallel.DATA_AXIS


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
  # the EMA generator; None without replay (replay_sources.NoReplay).
  replay: (memory_lib.MemoryState | generative.VAEState | ema_lib.EMAState | None)


def init_state(setup: Setup, seed: int | None = None) -> TrainState:
  """A fresh state of the run with ``seed`` (default ``setup.seed``), on the host's
  default device; :func:`state_specs` shards it."""
  seed = setup.seed if seed is None else seed
  k_gen, k_student = jax.random.split(jax.random.PRNGKey(seed))
  z = jnp.zeros((2, setup.latent_dim), jnp.float32)
  x = jnp.zeros((2, *setup.input_shape), jnp.float32)
  gen_inputs = (z,)
  if setup.conditional_generator:  # Creates the class embedding table e.
    gen_inputs = (z, jnp.zeros((2,), jnp.int32))
  gen_vars = jax.jit(functools.partial(setup.generator.init, train=False))(k_gen,
                                                                            *gen_inputs)
  stu_vars = jax.jit(functools.partial(setup.student.init, train=False))(k_student, x)

  def model_state(variables, optimizer):
    params = variables["params"]
    return ModelState(params, variables.get("batch_stats", {}), optimizer.init(params))

  generator = model_state(gen_vars, setup.generator_optimizer)
  k_replay = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
  replay = setup.replay.init(k_replay, generator, setup.input_shape, setup.num_classes)
  return TrainState(jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed + 1),
                    generator, model_state(stu_vars, setup.student_optimizer), replay)


def replicated(setup: Setup) -> bool:
  """Whether the run's state has a replica axis (``config.num_seeds > 1``)."""
  return len(setup.seeds) > 1


def init_replicas(setup: Setup) -> TrainState:
  """The fresh state of the run: :func:`init_state`, or with several seeds the states
  of ``setup.seeds`` stacked on a leading replica axis (each exactly its seed's)."""
  if not replicated(setup):
    return init_state(setup)
  states = [init_state(setup, seed) for seed in setup.seeds]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def state_specs(state: TrainState, replay: replay_sources.Replay,
                replicas: bool = False) -> TrainState:
  """PartitionSpecs: everything replicated but what the replay source shards.

  The memory buffer's sample axis is sharded over the mesh; the VAE and the EMA
  generator are replicated like the generator. With ``replicas`` the leading replica
  axis of every leaf is not sharded (each device holds all replicas).
  """
  specs = jax.tree.map(lambda _: P(), state)
  specs = specs._replace(replay=replay.specs(state.replay))
  if replicas:
    specs = jax.tree.map(lambda spec: P(None, *spec), specs,
                         is_leaf=lambda x: isinstance(x, P))
  return specs


# ---------------------------------------------------------------------------
# The networks of one iteration, per device.
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


class Networks(NamedTuple):
  """The forward passes of one iteration, traced per device inside ``shard_map``.

  Attributes:
    draw: ``(key, n) -> (z,) | (z, y)``, this device's rows of ``n`` global generator
      inputs.
    normal: ``(key, n, width) -> z``, this device's rows of an ``[n, width]`` normal draw.
    generate_full: ``(params, batch_stats, *inputs) -> (x, u, batch_stats)``: the
      generator in training mode, its images in the teacher's normalised input space,
      its pre-sigmoid output ``u`` (or ``None``) and new BatchNorm statistics.
    generate: ``(params, batch_stats, *inputs) -> x``.
    teacher: ``(teacher_variables, x, features=False) -> logits | (logits, features)``,
      the frozen teacher in eval mode.
    student: the student's training-mode :data:`~dfkd_jax.math.objectives.ApplyFn`.
  """

  draw: Callable[..., tuple[jax.Array, ...]]
  normal: Callable[[jax.Array, int, int], jax.Array]
  generate_full: Callable[..., tuple[jax.Array, Any, Any]]
  generate: Callable[..., jax.Array]
  teacher: Callable[..., Any]
  student: objectives.ApplyFn


def make_networks(setup: Setup) -> Networks:
  """The :class:`Networks` of ``setup`` on its mesh, in its compute dtype."""
  num_devices = setup.mesh.devices.size
  dtype = setup.compute_dtype
  conditional = setup.conditional_generator
  with_output_logits = setup.generator_output_logits
  unit_range = setup.generator_output_range == "unit"
  shape = (1, 1, 1, setup.input_shape[-1])
  in_mean = np.asarray(setup.teacher_meta.mean, np.float32).reshape(shape)
  in_std = np.asarray(setup.teacher_meta.std, np.float32).reshape(shape)

  def local_rows(a, n):
    """This device's rows of a global ``[n, ...]`` array (the same on every device)."""
    return jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index(AXIS) * (n // num_devices),
                                        n // num_devices)

  def normal(key, n, width):
    return local_rows(jax.random.normal(key, (n, width), jnp.float32), n)

  def draw(key, n):
    k_z, k_y = jax.random.split(key)
    z = normal(k_z, n, setup.latent_dim)
    if not conditional:
      return (z,)
    return z, local_rows(jax.random.randint(k_y, (n,), 0, setup.num_classes), n)

  def generate_full(params, batch_stats, z, y=None):
    kwargs = {}
    if conditional:
      kwargs["y"] = y
    if with_output_logits:
      kwargs["return_logits"] = True
    out, updates = setup.generator.apply(
        {"params": _cast(params, dtype), "batch_stats": batch_stats},
        z.astype(dtype), train=True, mutable=["batch_stats"], **kwargs)
    x, u = out if with_output_logits else (out, None)
    x = x.astype(jnp.float32)
    if unit_range:  # A sigmoid image: into the teacher's normalised input space.
      x = (x - jnp.asarray(in_mean)) / jnp.asarray(in_std)
    return x, u, updates["batch_stats"]

  def generate(params, batch_stats, *inputs):
    return generate_full(params, batch_stats, *inputs)[0]

  def teacher(teacher_vars, x, features=False):
    out = setup.teacher.apply(_cast(teacher_vars, dtype), x.astype(dtype), train=False,
                              features=features)
    if features:
      logits, feats = out
      return logits.astype(jnp.float32), feats
    return out.astype(jnp.float32)

  return Networks(draw, normal, generate_full, generate, teacher,
                  _classifier_apply(setup.student, dtype))


# ---------------------------------------------------------------------------
# The two steps.
# ---------------------------------------------------------------------------


class GeneratorUpdate(NamedTuple):
  """How the generator is updated: its loss (kind and weights) and optimiser."""

  loss: generator_objectives.GeneratorLoss
  weights: generator_objectives.GeneratorLossWeights
  optimizer: optax.GradientTransformation
  batch_size: int                    # Global batch of z.
  conditional: bool                  # G(z, y): the class NLL and embedding terms.


class StudentUpdate(NamedTuple):
  """How the student is updated: the update rule, its loss and optimiser."""

  update: objectives.StudentUpdate
  needs_retention: bool              # False for ``acquire``.
  kd_loss: objectives.KDLoss
  retention_weight: float
  optimizer: optax.GradientTransformation
  batch_size: int                    # Global batch of fresh samples.
  # The meta rules' factor on alpha per iteration index; None = 1 (Setup.alpha_scale).
  alpha_scale: Callable[[jax.Array], jax.Array] | None = None


def generator_step(gen: ModelState, student: ModelState, teacher_vars, key,
                   nets: Networks, update: GeneratorUpdate
                   ) -> tuple[ModelState, dict[str, jax.Array]]:
  """One generator update on ``G(z)``, ``z`` drawn from ``key`` (LRA eq. 15 for lra).

  The student sees ``x`` in training mode (batch statistics), as in the peers' code;
  neither its parameters nor its running statistics change here.

  Returns:
    The new generator state and ``generator_loss``, ``disagreement`` and one
    ``generator_<term>`` metric per term of the loss.
  """
  inputs = nets.draw(key, update.batch_size)

  def loss_fn(params):
    x, u, new_stats = nets.generate_full(params, gen.batch_stats, *inputs)
    t_logits, t_feats = nets.teacher(teacher_vars, x, features=True)
    s_logits, _ = nets.student(student.params, student.batch_stats, x)
    labels = embeddings = None
    if update.conditional:
      labels = inputs[1]
      embeddings = params["class_embedding"]["embedding"][labels]
    batch = generator_objectives.GeneratorBatch(t_logits, s_logits, t_feats, labels,
                                                embeddings, u)
    loss, terms = update.loss(batch, update.weights, AXIS)
    return loss, (new_stats, terms)

  (loss, (new_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      gen.params)
  params, opt_state = optimizers.apply(update.optimizer, grads, gen.opt_state, gen.params)
  gen = ModelState(params, new_stats, opt_state)
  metrics = {"generator_loss": loss, "disagreement": terms.pop("disagreement")}
  metrics.update({f"generator_{k}": v for k, v in terms.items()})
  return gen, metrics


class StepInputs(NamedTuple):
  """What a student step started from, for the gradient alignment taken after the
  loop (:func:`dfkd_jax.math.objectives.alignment`): the student's parameters and BatchNorm
  statistics before the step, its retention batch and whether that batch was valid."""

  params: Any
  batch_stats: Any
  ret: objectives.KDBatch
  retention_valid: jax.Array


def student_step(carry, xs, *, gen: ModelState, teacher_vars,
                 source: replay_sources.ReplaySource, ctx: replay_sources.Context,
                 nets: Networks, update: StudentUpdate, keep_inputs: bool,
                 alpha_scale: jax.Array | float = 1.0):
  """One student update (a ``lax.scan`` body): fresh ``G(z)`` plus a retention batch.

  Args:
    carry: ``(student, replay, last_x, last_teacher_logits)``, and with
      ``keep_inputs`` the previous step's :class:`StepInputs` last.
    xs: ``(key, index)`` of this step.
    gen: the generator (frozen during the student steps).
    teacher_vars: the frozen teacher's variables.
    source: the replay source (:class:`~dfkd_jax.replay.sources.NoReplay` for none).
    ctx: the iteration's :class:`~dfkd_jax.replay.sources.Context` for the source.
    nets: the iteration's networks.
    update: the update rule and optimiser.
    keep_inputs: carry this step's :class:`StepInputs` (for the meta updates'
      alignment, Sec. 3.4, taken once after the loop).
    alpha_scale: the meta rules' factor on alpha this iteration.

  Returns:
    The new carry (with this step's fresh batch) and the step's metrics; retention
    metrics are NaN on steps without a valid retention batch, and the alignment
    metrics NaN (the loop fills in the last step's).
  """
  key, index = xs
  student, replay = carry[:2]
  k_z, k_r, k_u = jax.random.split(key, 3)
  x = jax.lax.stop_gradient(nets.generate(gen.params, gen.batch_stats,
                                          *nets.draw(k_z, update.batch_size)))
  acq = objectives.KDBatch(x, nets.teacher(teacher_vars, x))
  ret, retention_valid, weight = None, jnp.zeros((), jnp.bool_), 0.0
  if update.needs_retention:
    # The student update sees a KDBatch and a weight, whatever the replay source.
    ret, retention_valid = source.retention(ctx, replay, k_r)
    weight = retention_valid.astype(jnp.float32) * update.retention_weight
  out = update.update(student.params, student.batch_stats, nets.student, acq, ret,
                      retention_weight=weight, with_alignment=False,
                      kd_loss=update.kd_loss, axis_name=AXIS, alpha_scale=alpha_scale)
  inputs = (StepInputs(student.params, student.batch_stats, ret, retention_valid),)
  params, opt_state = optimizers.apply(update.optimizer, out.grads, student.opt_state,
                                       student.params)
  student = ModelState(params, out.batch_stats,
                       opt_state)
  replay, replay_metrics = source.after_student_step(ctx, replay, index, k_u, acq)
  d = out.diagnostics
  nan = jnp.full((), jnp.nan, jnp.float32)
  # NaN/Inf images need not show in the losses (XLA:CPU's max-pooling turns NaN into
  # finite values), so the trainer watches the fresh batch itself.
  nonfinite = jax.lax.pmean(jnp.mean((~jnp.isfinite(x)).astype(jnp.float32)), AXIS)
  metrics = {"student_loss": out.loss, "loss_acq": d.loss_acq,
             "nonfinite_images": nonfinite,
             "loss_ret": jnp.where(retention_valid, d.loss_ret, nan),
             "loss_ret_adapted": jnp.where(retention_valid, d.loss_ret_adapted, nan),
             "grad_cosine": jnp.where(retention_valid, d.grad_cosine, nan),
             "grad_dot": jnp.where(retention_valid, d.grad_dot, nan),
             "retention_valid": retention_valid.astype(jnp.float32),
             **replay_metrics}
  return (student, replay, acq.x, acq.teacher_logits,
          *(inputs if keep_inputs else ())), metrics


# ---------------------------------------------------------------------------
# The jitted iteration.
# ---------------------------------------------------------------------------


def _loop(step, carry, xs, unroll: bool):
  """``lax.scan(step, carry, xs)``, or the same loop unrolled into the program."""
  if not unroll or jax.tree.leaves(xs)[0].shape[0] == 0:  # Zero steps: nothing to unroll.
    return jax.lax.scan(step, carry, xs)
  outputs = []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, out = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    outputs.append(out)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


def _placeholder_inputs(student: ModelState, source: replay_sources.ReplaySource,
                       ctx: replay_sources.Context, replay) -> StepInputs:
  """The :class:`StepInputs` a loop starts from (replaced by its first step)."""
  ret, _ = jax.eval_shape(lambda: source.retention(ctx, replay, jax.random.key(0)))
  ret = jax.lax.pcast(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ret), (AXIS,),
                      to="varying")
  return StepInputs(student.params, student.batch_stats, ret, jnp.zeros((), jnp.bool_))


def _last_step_alignment(stu_metrics, inputs: StepInputs, acq: objectives.KDBatch,
                         nets: Networks, kd_loss) -> dict[str, jax.Array]:
  """The step metrics with the last step's ``loss_ret``, ``grad_dot`` and
  ``grad_cosine`` (Sec. 3.4) at the parameters that step started from."""
  loss_ret, dot, cosine = objectives.alignment(
      inputs.params, inputs.batch_stats, nets.student, acq, inputs.ret,
      kd_loss=kd_loss, axis_name=AXIS)
  nan = jnp.full((), jnp.nan, jnp.float32)
  last = {"loss_ret": loss_ret, "grad_dot": dot, "grad_cosine": cosine}
  return {**stu_metrics, **{
      name: stu_metrics[name].at[-1].set(jnp.where(inputs.retention_valid, value, nan))
      for name, value in last.items()}}


def _reduce_metrics(gen_metrics, stu_metrics) -> dict[str, jax.Array]:
  """Per-iteration means; retention metrics over the steps that had retention."""
  retention_valid = stu_metrics.pop("retention_valid")
  metrics = {k: jnp.mean(v) for k, v in gen_metrics.items()}
  every_step = ("student_loss", "loss_acq", "nonfinite_images")
  metrics.update({k: jnp.mean(v) if k in every_step else jnp.nanmean(v)
                  for k, v in stu_metrics.items()})
  metrics["retention_steps"] = jnp.sum(retention_valid)
  return metrics


def _over_replicas(iteration, sequential: bool):
  """``iteration`` over the leading replica axis of its state (the teacher shared):
  ``lax.map`` (each replica with the single run's operations) or ``jax.vmap``."""
  if not sequential:
    return jax.vmap(iteration, in_axes=(0, None))

  def mapped(states, teacher_vars):
    return jax.lax.map(lambda s: iteration(s, teacher_vars), states)
  return mapped


def make_iteration(setup: Setup, state: TrainState):
  """The jitted ``(state, teacher_variables) -> (state, metrics)`` training iteration.

  With replicas (:func:`replicated`), ``state`` is :func:`init_replicas`' stacked state,
  the iteration is vmapped over its leading axis and every metric is ``[N]``. A Fast
  DFKD method's iteration is a synthesis round and the student's steps on its data
  bank (:func:`fast_iteration`); the others', :func:`adversarial_iteration`.
  """
  nets = make_networks(setup)
  iteration = (fast_iteration(setup, nets) if setup.fast is not None
               else adversarial_iteration(setup, nets))
  replicas = replicated(setup)
  if replicas:  # One program, N runs; the teacher is shared.
    iteration = _over_replicas(iteration, setup.map_replicas)
  specs = state_specs(state, setup.replay, replicas)
  sharded = parallel.shard(iteration, mesh=setup.mesh, in_specs=(specs, P()),
                           out_specs=(specs, P()))
  # The output state keeps the input's shardings exactly: on a one-device mesh XLA
  # would otherwise return the memory buffer as P() instead of P(None, 'data'), an
  # equivalent sharding that is a different jit cache key, so the second call would
  # compile the whole iteration again.
  return jax.jit(sharded, donate_argnums=0,
                 out_shardings=(parallel.shardings(setup.mesh, specs),
                                parallel.replicated(setup.mesh)))


def adversarial_iteration(setup: Setup, nets: Networks):
  """The per-device ``(state, teacher_variables) -> (state, metrics)`` of the
  adversarial methods: ``generator_steps`` generator steps, the replay source's
  after-generator hook, ``student_steps`` student steps."""
  gen_update = GeneratorUpdate(
      generator_objectives.get(setup.method.generator_loss),
      setup.generator_loss_weights, setup.generator_optimizer, setup.batch_size,
      setup.conditional_generator)
  stu_update = StudentUpdate(
      setup.student_update, setup.needs_retention,
      setup.kd_loss, setup.retention_weight, setup.student_optimizer, setup.batch_size,
      setup.alpha_scale)
  local_batch = setup.batch_size // setup.mesh.devices.size
  unroll, num_steps = setup.unroll, setup.student_steps
  # The meta update's alignment costs two more forward/backward passes, so only the
  # last student step of the iteration pays it, after the loop (one copy of the meta
  # step in the program, not two: a faster compile).
  align = setup.meta_alignment and num_steps > 0

  def iteration(state: TrainState, teacher_vars):
    ctx = replay_sources.Context(
        teacher=functools.partial(nets.teacher, teacher_vars), draw=nets.draw,
        generate=nets.generate, normal=nets.normal, global_batch=setup.batch_size,
        axis_name=AXIS)
    source = setup.replay
    with layers.batch_stats_axis(AXIS):
      k_gen, k_student = jax.random.split(jax.random.fold_in(state.rng, state.step))
      gen, gen_metrics = _loop(
          lambda g, k: generator_step(g, state.student, teacher_vars, k, nets,
                                      gen_update),
          state.generator, jax.random.split(k_gen, setup.generator_steps), unroll)
      replay = source.after_generator(ctx, state.replay, gen)
      # Placeholders for the last generated batch (per device, hence "varying").
      x0, t0 = jax.lax.pcast(
          (jnp.zeros((local_batch, *setup.input_shape), jnp.float32),
           jnp.zeros((local_batch, setup.num_classes), jnp.float32)), (AXIS,),
          to="varying")
      # Step indices: NumPy, so that an unrolled loop sees Python-level constants.
      steps = (jax.random.split(k_student, num_steps),
               np.arange(num_steps, dtype=np.int32))
      step = functools.partial(student_step, gen=gen, teacher_vars=teacher_vars,
                               source=source, ctx=ctx, nets=nets, update=stu_update,
                               keep_inputs=align,
                               alpha_scale=(1.0 if stu_update.alpha_scale is None
                                            else stu_update.alpha_scale(state.step)))
      carry = (state.student, replay, x0, t0)
      if align:
        carry += (_placeholder_inputs(state.student, source, ctx, replay),)
      carry, stu_metrics = _loop(step, carry, steps, unroll)
      student, replay, last_x, last_t = carry[:4]
      if align:
        stu_metrics = _last_step_alignment(stu_metrics, carry[4],
                                           objectives.KDBatch(last_x, last_t), nets,
                                           stu_update.kd_loss)
      replay = source.end_of_iteration(ctx, replay, state.step,
                                       objectives.KDBatch(last_x, last_t))
    new_state = TrainState(state.step + 1, state.rng, gen, student, replay)
    return new_state, _reduce_metrics(gen_metrics, stu_metrics)

  return iteration


# ---------------------------------------------------------------------------
# Fast DFKD: a synthesis round, then the student's steps on the data bank.
# ---------------------------------------------------------------------------


def _fast_augment(setup: Setup):
  """This device's rows of the fast methods' augmentation of a global batch."""
  o = setup.fast
  return functools.partial(fast_lib.augment_rows, global_batch=setup.batch_size,
                           padding=o.crop_padding, flip=o.flip, pad_value=o.pad_value,
                           axis_name=AXIS)


def _local_rows(a):
  """This device's rows of a global array (the same on every device)."""
  local = a.shape[0] // jax.lax.axis_size(AXIS)
  return jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index(AXIS) * local, local)


def fast_synthesis(setup: Setup, nets: Networks, state: TrainState, teacher_vars, key,
                   meta_gradient: str | None = None) -> tuple[Any, fast_lib.RoundResult]:
  """The synthesis round of a Fast method from ``state`` (per device, inside the mesh):
  :func:`dfkd_jax.methods.fast.synthesis_round` from the meta-initialisation
  (:func:`fast_start`), with fresh ``z`` and targets from ``key`` (NAYER: the
  balanced targets' class codes and noisy-layer one-hots), the adversarial term from
  round ``warmup_rounds - 1`` on and the bank's running moments. ``meta_gradient``
  overrides the method's (the probe, which needs none, asks for the cheapest).

  Returns:
    ``(params0, result)``: the start the round adapted (and its meta-gradient is
    taken at) and the round's result.
  """
  options = setup.fast
  if meta_gradient is not None:
    options = options._replace(meta_gradient=meta_gradient)
  n, dtype = setup.batch_size, setup.compute_dtype
  k_z, k_y, k_aug, k_final, k_reset = jax.random.split(key, 5)
  round_index, bank = state.step, state.replay
  params0, stats0 = fast_start(setup, state, k_reset)
  if options.class_codes is None:
    z = nets.normal(k_z, n, setup.latent_dim)
    all_targets = jax.random.randint(k_y, (n,), 0, setup.num_classes)
  else:
    all_targets = fast_lib.balanced_targets(k_y, n, setup.num_classes)
    z = _local_rows(fast_lib.noisy_inputs(options.class_codes, all_targets,
                                          setup.num_classes))
  targets = _local_rows(all_targets)

  def student_eval(x):
    logits = setup.student.apply(
        {"params": _cast(state.student.params, dtype),
         "batch_stats": state.student.batch_stats}, x.astype(dtype), train=False)
    return logits.astype(jnp.float32)

  synth_nets = fast_lib.SynthesisNetworks(
      generate=lambda p, stats, zz: nets.generate_full(p, stats, zz)[::2],
      teacher=lambda x: nets.teacher(teacher_vars, x, features=True),
      student=student_eval, augment=_fast_augment(setup))
  return params0, fast_lib.synthesis_round(
      params0, stats0, z, targets,
      jax.random.split(k_aug, options.inner.steps), k_final, nets=synth_nets,
      options=options,
      adversarial_on=(round_index + 1 >= options.warmup_rounds).astype(jnp.float32),
      history=(bank.bn_mean, bank.bn_var),
      history_weight=jnp.where(bank.bn_rounds > 0, options.bn_momentum, 0.0),
      axis_name=AXIS, unroll=setup.unroll)


def fast_start(setup: Setup, state: TrainState, key) -> tuple[Any, Any]:
  """The generator a round starts from, ``(params, batch_stats)``: the state's, with
  the stem re-initialised at round ``reset_round`` (official ``reset_l0``); NAYER's
  created anew every ``generator_life_rounds`` rounds (from round 0 on: its ``g_life``)
  and its noisy layers re-drawn every round (``re_init_le``)."""
  options = setup.fast
  k_stem, k_new, k_noisy = jax.random.split(key, 3)
  params, stats = state.generator.params, state.generator.batch_stats
  if options.reset_round >= 0:
    params = jax.lax.cond(state.step == options.reset_round,
                          lambda p: fast_lib.reset_stem(p, k_stem), lambda p: p, params)
  if options.generator_life_rounds:
    def new_generator(_):
      variables = setup.generator.init(k_new, jnp.zeros((2, setup.latent_dim)),
                                       train=False)
      return variables["params"], variables.get("batch_stats", {})

    renew = (state.step > 0) & (state.step % options.generator_life_rounds == 0)
    params, stats = jax.lax.cond(renew, new_generator, lambda _: (params, stats), None)
  if options.class_codes is not None:
    params = fast_lib.redraw_noisy_layers(params, k_noisy)
  return params, stats


def fast_iteration(setup: Setup, nets: Networks):
  """The per-device iteration of a Fast DFKD method (:mod:`dfkd_jax.methods.fast`).

  Round ``r = state.step``:

  1. :func:`fast_synthesis`: at round ``reset_round`` the generator's stem is
     re-initialised (official ``reset_l0``); the synthesis round from the
     meta-initialisation ``state.generator.params`` with fresh ``z`` and random
     targets; the meta optimiser (``setup.generator_optimizer``, its state in
     ``state.generator.opt_state``) applies the meta-gradient, or, for the ``keep``
     meta-gradient (NAYER), the generator becomes the adapted copy; the generator keeps
     the adapted copy's statistics (BatchNorm running statistics, never used in
     training mode, and spectral-norm vectors);
  2. the round's best batch, with the teacher's logits on it, is pushed into the bank
     (``state.replay``, a :class:`~dfkd_jax.replay.sources.BankState`), and the last
     inner step's teacher moments are averaged into its running moments;
  3. from round ``warmup_rounds`` on, ``student_steps`` steps of ``setup.student_update``
     (acquisition, the KL at the configured temperature) on batches of ``batch_size``
     drawn uniformly from the whole bank, augmented when ``augment_bank`` (the teacher
     then labels the augmented images; else its stored logits are the labels); before
     that the student is left as it is and its loss on one bank batch is reported.

  All keys derive from ``state.rng`` and ``state.step``, so a resumed run repeats an
  uninterrupted one.
  """
  options = setup.fast
  source = setup.replay
  n = setup.batch_size
  num_steps = setup.student_steps
  augment = _fast_augment(setup)

  def iteration(state: TrainState, teacher_vars):
    ctx = replay_sources.Context(
        teacher=functools.partial(nets.teacher, teacher_vars), draw=nets.draw,
        generate=nets.generate, normal=nets.normal, global_batch=n, axis_name=AXIS)
    round_index = state.step
    with layers.batch_stats_axis(AXIS):
      k_round, k_student = jax.random.split(jax.random.fold_in(state.rng, state.step))
      gen, bank = state.generator, state.replay
      params0, result = fast_synthesis(setup, nets, state, teacher_vars, k_round)
      if meta_init.META_GRADIENTS.get(options.meta_gradient).keeps_adapted:
        gen = ModelState(result.adapted, result.batch_stats, gen.opt_state)
      else:
        params, opt_state = optimizers.apply(setup.generator_optimizer, result.grads,
                                             gen.opt_state, params0)
        gen = ModelState(params, result.batch_stats, opt_state)
      best = objectives.KDBatch(result.best_x, nets.teacher(teacher_vars, result.best_x))
      bank = source.push(bank, best)
      if options.bn_momentum and result.bn_mean:
        bank = source.update_moments(bank, result.bn_mean, result.bn_var,
                                     options.bn_momentum)

      def kd_batch(key):
        k_draw, k_aug = jax.random.split(key)
        batch, _ = source.draw(ctx, bank, k_draw, n)
        if options.augment_bank:
          x = augment(k_aug, batch.x)
          batch = objectives.KDBatch(x, nets.teacher(teacher_vars, x))
        return batch

      def kd_step(student: ModelState, key):
        out = setup.student_update(
            student.params, student.batch_stats, nets.student, kd_batch(key), None,
            retention_weight=0.0, with_alignment=False, kd_loss=setup.kd_loss,
            axis_name=AXIS)
        params, opt_state = optimizers.apply(setup.student_optimizer, out.grads,
                                             student.opt_state, student.params)
        return ModelState(params, out.batch_stats, opt_state), out.loss

      keys = jax.random.split(k_student, num_steps)

      def train(student):
        return _loop(kd_step, student, keys, setup.unroll)

      def wait(student):  # Warm-up: the untrained student's loss on one bank batch.
        loss, _ = objectives.kd_loss_value(student.params, student.batch_stats,
                                           nets.student, kd_batch(keys[0]),
                                           setup.kd_loss, AXIS)
        return student, jnp.full((num_steps,), loss)

      distil = round_index >= options.warmup_rounds
      student, kd_losses = jax.lax.cond(distil, train, wait, state.student)
      nonfinite = jax.lax.pmean(
          jnp.mean((~jnp.isfinite(result.best_x)).astype(jnp.float32)), AXIS)
    nan = jnp.full((), jnp.nan, jnp.float32)
    metrics = {**result.metrics, "student_loss": jnp.mean(kd_losses),
               "loss_acq": jnp.mean(kd_losses), "loss_ret": nan,
               "loss_ret_adapted": nan, "grad_cosine": nan, "grad_dot": nan,
               "retention_steps": jnp.zeros((), jnp.int32),
               "nonfinite_images": nonfinite,
               "kd_steps": distil.astype(jnp.int32) * num_steps,
               "bank_samples": memory_lib.num_filled(bank.samples) * n}
    return TrainState(state.step + 1, state.rng, gen, student, bank), metrics

  return iteration

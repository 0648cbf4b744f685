"""The jitted training iteration of the adversarial methods (LRA Sections 3-4).

* :func:`generator_step`: one generator update (the method's loss kind,
  :mod:`dfkd_jax.methods.generator_objectives`, LRA eq. 15).
* :func:`student_step`: one student update on fresh samples ``G(z)`` and a retention
  batch from the replay source, with the method's update rule (LRA eqs. 3, 5, 6,
  :mod:`dfkd_jax.math.objectives`).
* :func:`adversarial_iteration`: ``generator_steps`` generator steps, the replay
  source's after-generator hook (the EMA update), then ``student_steps`` student steps.
* :func:`make_iteration`: the method's iteration (this one, or a Fast DFKD round,
  :mod:`dfkd_jax.run.fast_rounds`) as ONE jitted call with donated state, run per device
  inside ``jax.shard_map`` (:mod:`dfkd_jax.parallel.mesh`).

The state it advances, the networks and the replicas are :mod:`dfkd_jax.run.train_state`'s.
With replicas (``config.num_seeds > 1``) the iteration is mapped over the state's leading
replica axis inside the same ``shard_map``: each device holds every replica and its share
of each replica's batch (the batch, not the replicas, is sharded, so the divisibility
rules are those of one run). Replica k computes what a single run with seed ``seed + k``
computes; its metrics come out with a leading ``[N]`` axis.

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

from dfkd_jax.math import objectives
from dfkd_jax.math import optimizers
from dfkd_jax.methods import generator_objectives
from dfkd_jax.models import layers
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.replay import sources as replay_sources
from dfkd_jax.run import fast_rounds
from dfkd_jax.run import train_state
from dfkd_jax.run.run_setup import Setup

AXIS = train_state.AXIS


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


def generator_step(gen: train_state.ModelState, student: train_state.ModelState, teacher_vars, key,
                   nets: train_state.Networks, update: GeneratorUpdate
                   ) -> tuple[train_state.ModelState, dict[str, jax.Array]]:
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
  gen = train_state.ModelState(params, new_stats, opt_state)
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


def student_step(carry, xs, *, gen: train_state.ModelState, teacher_vars,
                 source: replay_sources.ReplaySource, ctx: replay_sources.Context,
                 nets: train_state.Networks, update: StudentUpdate, keep_inputs: bool,
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
  student = train_state.ModelState(params, out.batch_stats,
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


def _placeholder_inputs(student: train_state.ModelState, source: replay_sources.ReplaySource,
                       ctx: replay_sources.Context, replay) -> StepInputs:
  """The :class:`StepInputs` a loop starts from (replaced by its first step)."""
  ret, _ = jax.eval_shape(lambda: source.retention(ctx, replay, jax.random.key(0)))
  ret = jax.lax.pcast(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ret), (AXIS,),
                      to="varying")
  return StepInputs(student.params, student.batch_stats, ret, jnp.zeros((), jnp.bool_))


def _last_step_alignment(stu_metrics, inputs: StepInputs, acq: objectives.KDBatch,
                         nets: train_state.Networks, kd_loss) -> dict[str, jax.Array]:
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


def make_iteration(setup: Setup, state: train_state.TrainState):
  """The jitted ``(state, teacher_variables) -> (state, metrics)`` training iteration.

  With replicas (:func:`~dfkd_jax.run.train_state.replicated`), ``state`` is
  :func:`~dfkd_jax.run.train_state.init_replicas`' stacked state,
  the iteration is vmapped over its leading axis and every metric is ``[N]``. A Fast
  DFKD method's iteration is a synthesis round and the student's steps on its data
  bank (:func:`~dfkd_jax.run.fast_rounds.fast_iteration`); the others',
  :func:`adversarial_iteration`.
  """
  nets = train_state.make_networks(setup)
  iteration = (fast_rounds.fast_iteration(setup, nets) if setup.fast is not None
               else adversarial_iteration(setup, nets))
  replicas = train_state.replicated(setup)
  if replicas:  # One program, N runs; the teacher is shared.
    iteration = _over_replicas(iteration, setup.map_replicas)
  specs = train_state.state_specs(state, setup.replay, replicas)
  sharded = parallel.shard(iteration, mesh=setup.mesh, in_specs=(specs, P()),
                           out_specs=(specs, P()))
  # The output state keeps the input's shardings exactly: on a one-device mesh XLA
  # would otherwise return the memory buffer as P() instead of P(None, 'data'), an
  # equivalent sharding that is a different jit cache key, so the second call would
  # compile the whole iteration again.
  return jax.jit(sharded, donate_argnums=0,
                 out_shardings=(parallel.shardings(setup.mesh, specs),
                                parallel.replicated(setup.mesh)))


def adversarial_iteration(setup: Setup, nets: train_state.Networks):
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

  def iteration(state: train_state.TrainState, teacher_vars):
    ctx = replay_sources.Context(
        teacher=functools.partial(nets.teacher, teacher_vars), draw=nets.draw,
        generate=nets.generate, normal=nets.normal, global_batch=setup.batch_size,
        axis_name=AXIS)
    source = setup.replay
    with layers.batch_stats_axis(AXIS):
      k_gen, k_student = jax.random.split(jax.random.fold_in(state.rng, state.step))
      gen, gen_metrics = train_state.step_loop(
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
      carry, stu_metrics = train_state.step_loop(step, carry, steps, unroll)
      student, replay, last_x, last_t = carry[:4]
      if align:
        stu_metrics = _last_step_alignment(stu_metrics, carry[4],
                                           objectives.KDBatch(last_x, last_t), nets,
                                           stu_update.kd_loss)
      replay = source.end_of_iteration(ctx, replay, state.step,
                                       objectives.KDBatch(last_x, last_t))
    new_state = train_state.TrainState(state.step + 1, state.rng, gen, student, replay)
    return new_state, _reduce_metrics(gen_metrics, stu_metrics)

  return iteration

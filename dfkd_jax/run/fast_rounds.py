"""The Fast DFKD iteration: a synthesis round, then the student's steps on the data bank.

The per-device iteration of the methods with ``synthesis_rounds``
(:mod:`dfkd_jax.methods.fast`: ``fast``, ``fast_reptile``, ``fast_exact``, ``nayer``),
which :func:`dfkd_jax.run.iteration.make_iteration` jits like the adversarial one:

* :func:`fast_start`: the generator a round starts from (the stem reset, NAYER's new
  generator and noisy layers);
* :func:`fast_synthesis`: the round itself, from that start, with the bank's running
  moments (also the data-free probe's, :mod:`dfkd_jax.run.probe`);
* :func:`fast_iteration`: the round, the meta-update, the push into the bank and the
  student's steps on it.

Everything here takes resolved values (a :class:`~dfkd_jax.run.run_setup.Setup`, or the
plain values it holds); nothing reads the config.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from dfkd_jax.math import meta_init
from dfkd_jax.math import objectives
from dfkd_jax.math import optimizers
from dfkd_jax.methods import fast as fast_lib
from dfkd_jax.models import layers
from dfkd_jax.replay import memory as memory_lib
from dfkd_jax.replay import sources as replay_sources
from dfkd_jax.run import train_state
from dfkd_jax.run.run_setup import Setup

AXIS = train_state.AXIS


def _fast_augment(setup: Setup):
  """This device's rows of the fast methods' augmentation of a global batch."""
  o = setup.fast
  return functools.partial(fast_lib.augment_rows, global_batch=setup.batch_size,
                           padding=o.crop_padding, flip=o.flip, pad_value=o.pad_value,
                           axis_name=AXIS)


def fast_synthesis(setup: Setup, nets: train_state.Networks,
                   state: train_state.TrainState, teacher_vars, key,
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
    z = train_state.local_rows(fast_lib.noisy_inputs(options.class_codes, all_targets,
                                          setup.num_classes))
  targets = train_state.local_rows(all_targets)

  def student_eval(x):
    logits = setup.student.apply(
        {"params": train_state.cast_floats(state.student.params, dtype),
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


def fast_start(setup: Setup, state: train_state.TrainState, key) -> tuple[Any, Any]:
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


def fast_iteration(setup: Setup, nets: train_state.Networks):
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

  def iteration(state: train_state.TrainState, teacher_vars):
    ctx = replay_sources.Context(
        teacher=functools.partial(nets.teacher, teacher_vars), draw=nets.draw,
        generate=nets.generate, normal=nets.normal, global_batch=n, axis_name=AXIS)
    round_index = state.step
    with layers.batch_stats_axis(AXIS):
      k_round, k_student = jax.random.split(jax.random.fold_in(state.rng, state.step))
      gen, bank = state.generator, state.replay
      params0, result = fast_synthesis(setup, nets, state, teacher_vars, k_round)
      if meta_init.META_GRADIENTS.get(options.meta_gradient).keeps_adapted:
        gen = train_state.ModelState(result.adapted, result.batch_stats, gen.opt_state)
      else:
        params, opt_state = optimizers.apply(setup.generator_optimizer, result.grads,
                                             gen.opt_state, params0)
        gen = train_state.ModelState(params, result.batch_stats, opt_state)
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

      def kd_step(student: train_state.ModelState, key):
        out = setup.student_update(
            student.params, student.batch_stats, nets.student, kd_batch(key), None,
            retention_weight=0.0, with_alignment=False, kd_loss=setup.kd_loss,
            axis_name=AXIS)
        params, opt_state = optimizers.apply(setup.student_optimizer, out.grads,
                                             student.opt_state, student.params)
        return train_state.ModelState(params, out.batch_stats, opt_state), out.loss

      keys = jax.random.split(k_student, num_steps)

      def train(student):
        return train_state.step_loop(kd_step, student, keys, setup.unroll)

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
    return train_state.TrainState(state.step + 1, state.rng, gen, student, bank), metrics

  return iteration

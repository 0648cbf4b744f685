"""Unit tests of the iteration's two steps, each alone (dfkd_jax.run.iteration).

Tiny random networks on 8x8 digits-shaped images, one device; the expected updates are
computed here from the losses and optax directly, outside ``shard_map``.
"""

import functools
import types

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from dfkd_jax import models
from dfkd_jax.math import losses
from dfkd_jax.math import objectives
from dfkd_jax.methods import generator_objectives
from dfkd_jax.models import layers
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.replay import memory as memory_lib
from dfkd_jax.replay import sources
from dfkd_jax.run import iteration
from dfkd_jax.run import train_state

SHAPE, CLASSES, LATENT, BATCH = (8, 8, 1), 10, 8, 16
WEIGHTS = generator_objectives.GeneratorLossWeights(
    adversarial=1.0, js_temperature=1.0, js_form="exact", one_hot=1.0, activation=0.1,
    entropy=5.0, entropy_log_base=None, bn_moments=1.0, bn_prior=0.0, class_nll=0.0,
    embedding_norm=0.0, embedding_gamma=1.1, teacher_logit_bound=0.0, logit_bound=20.0,
    output_bound=0.0, output_bound_value=20.0)


@pytest.fixture(scope="module")
def parts():
  """The networks, their variables and the one-device mesh."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  teacher = models.get("digits_cnn", num_classes=CLASSES, input_shape=SHAPE)
  student = models.get("digits_cnn_half", num_classes=CLASSES, input_shape=SHAPE)
  generator = models.get("dafl_generator", latent_dim=LATENT, image_shape=SHAPE,
                         spectral_norm=False)
  x0 = jnp.zeros((2, *SHAPE))
  t_vars = teacher.init(jax.random.PRNGKey(0), x0, train=False)
  s_vars = student.init(jax.random.PRNGKey(1), x0, train=False)
  g_vars = generator.init(jax.random.PRNGKey(2), jnp.zeros((2, LATENT)), train=False)
  setup = types.SimpleNamespace(  # The fields of experiment.Setup that networks read.
      mesh=mesh, compute_dtype=jnp.float32, conditional_generator=False,
      generator_output_logits=False, generator_output_range="normalized",
      input_shape=SHAPE, num_classes=CLASSES, latent_dim=LATENT, generator=generator,
      teacher=teacher, student=student,
      teacher_meta=types.SimpleNamespace(mean=(0.0,), std=(1.0,)))
  return types.SimpleNamespace(mesh=mesh, nets=train_state.make_networks(setup),
                               teacher=teacher, student=student, generator=generator,
                               t_vars=t_vars, s_vars=s_vars, g_vars=g_vars)


def _model_state(variables, optimizer):
  return train_state.ModelState(variables["params"], variables.get("batch_stats", {}),
                              optimizer.init(variables["params"]))


def _on_one_device(fn, mesh, *args):
  """``fn(*args)`` inside the trainer's shard_map (replicated in and out)."""
  def body(*a):
    with layers.batch_stats_axis(parallel.DATA_AXIS):
      return fn(*a)
  specs = jax.tree.map(lambda _: P(), args)
  return jax.jit(parallel.shard(body, mesh, in_specs=specs, out_specs=P()))(*args)


def _fresh(parts, gen_vars, key, n):
  """G(z) in training mode, z drawn as the trainer's ``draw`` draws it."""
  z = jax.random.normal(jax.random.split(key)[0], (n, LATENT))
  x, _ = parts.generator.apply(gen_vars, z, train=True, mutable=["batch_stats"])
  return x


def _close(got, want, **tol):
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **tol), got, want)


@pytest.mark.slow
def test_generator_step_is_a_gradient_step_on_the_lra_loss_of_g_z(parts):
  opt = optax.sgd(0.1)  # Adam's first step would be a sign: noise on ~0 gradients.
  gen = _model_state(parts.g_vars, opt)
  student = _model_state(parts.s_vars, optax.sgd(0.1))
  update = iteration.GeneratorUpdate(generator_objectives.get("lra"), WEIGHTS, opt,
                                     BATCH, conditional=False)
  key = jax.random.PRNGKey(7)
  new, metrics = _on_one_device(
      lambda g, s, t, k: iteration.generator_step(g, s, t, k, parts.nets, update),
      parts.mesh, gen, student, parts.t_vars, key)

  def loss_fn(params):  # LRA eq. 15 on G(z), written from the parts.
    variables = {"params": params, "batch_stats": gen.batch_stats}
    x = _fresh(parts, variables, key, BATCH)
    t_logits, t_feats = parts.teacher.apply(parts.t_vars, x, train=False, features=True)
    s_logits, _ = parts.student.apply(parts.s_vars, x, train=True,
                                      mutable=["batch_stats"])
    batch = generator_objectives.GeneratorBatch(t_logits, s_logits, t_feats)
    return generator_objectives.lra(batch, WEIGHTS, None)[0]

  loss, grads = jax.value_and_grad(loss_fn)(gen.params)
  updates, _ = opt.update(grads, gen.opt_state, gen.params)
  np.testing.assert_allclose(metrics["generator_loss"], loss, rtol=1e-5)
  _close(new.params, optax.apply_updates(gen.params, updates), rtol=1e-4, atol=1e-6)
  assert {"disagreement", "generator_one_hot", "generator_entropy"} <= set(metrics)


def _student_step(parts, update_name, memory, lr=0.1):
  opt = optax.sgd(lr)
  student = _model_state(parts.s_vars, opt)
  gen = _model_state(parts.g_vars, optax.adam(1e-3))
  update = iteration.StudentUpdate(
      objectives.get(update_name),
      objectives.UPDATE_RULES.get(update_name).needs_retention, losses.mae, 1.0, opt, BATCH)
  replay = sources.MemoryReplay(num_slots=2, samples_per_slot=BATCH,
                                push_every_epochs=1, iterations_per_epoch=1,
                                dtype="float32")
  key = jax.random.PRNGKey(3)

  def step(student, memory, gen, t_vars, key):
    ctx = sources.Context(functools.partial(parts.nets.teacher, t_vars), parts.nets.draw,
                          parts.nets.generate, parts.nets.normal, BATCH,
                          parallel.DATA_AXIS)
    zeros = (jnp.zeros((BATCH, *SHAPE)), jnp.zeros((BATCH, CLASSES)))
    carry, metrics = iteration.student_step(
        (student, memory, *zeros), (key, 0), gen=gen, teacher_vars=t_vars,
        source=replay, ctx=ctx, nets=parts.nets, update=update, keep_inputs=False)
    return carry[0], metrics

  new, metrics = _on_one_device(step, parts.mesh, student, memory, gen, parts.t_vars, key)
  x = _fresh(parts, parts.g_vars, jax.random.split(key, 3)[0], BATCH)
  acq = objectives.KDBatch(x, parts.teacher.apply(parts.t_vars, x, train=False))
  return student, new, metrics, acq


def test_acquire_student_step_is_sgd_on_the_mae_of_fresh_samples(parts):
  memory = memory_lib.init(2, BATCH, SHAPE, CLASSES)
  student, new, metrics, acq = _student_step(parts, "acquire", memory)
  apply_fn = objectives.flax_apply_fn(parts.student)
  (loss, _), grads = jax.value_and_grad(objectives.kd_loss_value, has_aux=True)(
      student.params, student.batch_stats, apply_fn, acq)
  np.testing.assert_allclose(metrics["loss_acq"], loss, rtol=1e-5)
  _close(new.params, jax.tree.map(lambda p, g: p - 0.1 * g, student.params, grads),
         rtol=1e-4, atol=1e-6)
  assert metrics["retention_valid"] == 0 and np.isnan(metrics["loss_ret"])


@pytest.mark.slow
def test_joint_student_step_uses_the_memory_once_it_holds_a_batch(parts):
  empty = memory_lib.init(2, BATCH, SHAPE, CLASSES)
  _, acquire_only, metrics, acq = _student_step(parts, "joint", empty)
  assert metrics["retention_valid"] == 0 and np.isnan(metrics["loss_ret"])
  stored = objectives.KDBatch(acq.x[::-1] * 0.5, acq.teacher_logits[::-1])
  full = memory_lib.push(empty, stored.x, stored.teacher_logits)
  student, new, metrics, acq = _student_step(parts, "joint", full)
  assert metrics["retention_valid"] == 1
  out = objectives.joint(student.params, student.batch_stats,
                         objectives.flax_apply_fn(parts.student), acq, stored)
  np.testing.assert_allclose(metrics["loss_ret"], out.diagnostics.loss_ret, rtol=1e-5)
  _close(new.params, jax.tree.map(lambda p, g: p - 0.1 * g, student.params, out.grads),
         rtol=1e-4, atol=1e-6)
  # The retention term changed the update (weight 0 while the memory was empty).
  assert any(float(np.max(np.abs(a - b))) > 1e-6 for a, b in zip(
      jax.tree.leaves(new.params), jax.tree.leaves(acquire_only.params)))

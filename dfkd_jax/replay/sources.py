"""One interface over the replay sources: memory buffer, VAE decoder, EMA generator.

The trainer's student update asks a :class:`ReplaySource` for a retention batch
(samples and the teacher's logits on them) and a validity flag, and hands it to
:func:`dfkd_jax.objectives.joint` or :func:`~dfkd_jax.objectives.meta` unchanged: the
update never knows which source it got. A source also says how its state evolves at
the three points of an iteration where replay schemes act:

* ``after_generator(state, generator)`` -- after the generator stage (the EMA update of
  MAD eq. 5);
* ``after_student_step(state, index, key, acq)`` -- after each student step, with that
  step's fresh batch (PRE-DFKD trains its VAE on the first 4 steps);
* ``end_of_iteration(state, step, last)`` -- with the iteration's last fresh batch (the
  memory buffer's push schedule).

Every function is pure and traced inside the trainer's one jitted, ``shard_map``-ped
iteration; batches are this device's rows of a global batch. The state is
:class:`~dfkd_jax.replay.memory.MemoryState`, :class:`~dfkd_jax.replay.generative.VAEState`
or :class:`~dfkd_jax.replay.ema.EMAState`, held in ``TrainState.replay``.

For the VAE and the EMA generator the retention batch's teacher logits come from a
teacher forward on the replayed samples; the memory stores them with the samples (the
teacher is frozen, so they are exact).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax import objectives
from dfkd_jax.replay import ema as ema_lib
from dfkd_jax.replay import generative
from dfkd_jax.replay import memory as memory_lib

Array = chex.Array
KINDS = ("memory", "generative", "ema")


class Context(NamedTuple):
  """What a source may use of the trainer, all traced inside the iteration.

  Attributes:
    teacher: ``x -> logits``, the frozen teacher (training-free forward).
    draw: ``(key, n) -> inputs``, this device's rows of ``n`` global generator inputs
      (``(z,)`` or ``(z, y)`` for a class-conditional generator).
    generate: ``(params, batch_stats, *inputs) -> x``, the generator in training mode
      (its statistic updates discarded).
    normal: ``(key, n, width) -> z``, this device's rows of an ``[n, width]`` normal draw.
    global_batch: the global batch size ``B``.
    axis_name: the mesh axis batches are sharded over.
  """

  teacher: Callable[[Array], Array]
  draw: Callable[..., tuple[Array, ...]]
  generate: Callable[..., Array]
  normal: Callable[[Array, int, int], Array]
  global_batch: int
  axis_name: str | None


class ReplaySource(NamedTuple):
  """The pure functions of one replay scheme (see the module docstring)."""

  retention: Callable[[Any, Array], tuple[objectives.KDBatch, Array]]
  after_generator: Callable[[Any, Any], Any]
  after_student_step: Callable[[Any, Array, Array, objectives.KDBatch],
                               tuple[Any, dict[str, Array]]]
  end_of_iteration: Callable[[Any, Array, objectives.KDBatch], Any]


def _same(state, *unused):
  del unused
  return state


def _no_step(state, index, key, acq):
  del index, key, acq
  return state, {}


def memory_source(ctx: Context, *, samples_per_slot: int, push_every_epochs: int,
                  iterations_per_epoch: int) -> ReplaySource:
  """The circular memory buffer (MB-DFKD, LRA Ours-1).

  Official schedule: the end of epochs 0, P, 2P, ... (P = ``push_every_epochs``) writes
  ``m = samples_per_slot`` samples of the last generated batch, global rows 0, k, 2k, ...
  (k = B / m); every device holds exactly m / D of them, in global order, whatever the
  device count D.
  """
  stride = ctx.global_batch // samples_per_slot

  def retention(state, key):
    x, logits, valid = memory_lib.sample(state, key)
    return objectives.KDBatch(x.astype(jnp.float32), logits.astype(jnp.float32)), valid

  def end_of_iteration(state, step, last):
    epoch = step // iterations_per_epoch
    push = (((step + 1) % iterations_per_epoch == 0)
            & (epoch % push_every_epochs == 0))
    return jax.lax.cond(
        push, lambda m: memory_lib.push(m, last.x[::stride], last.teacher_logits[::stride]),
        lambda m: m, state)

  return ReplaySource(retention, _same, _no_step, end_of_iteration)


def vae_source(ctx: Context, vae, config, prior_weights) -> ReplaySource:
  """PRE-DFKD's generative replay (:mod:`dfkd_jax.replay.generative`).

  ``config`` has ``samples`` (global replayed samples per step), ``train_steps`` (VAE
  updates on the first student steps of each iteration), ``learning_rate``,
  ``kl_weight``, ``latent_refinement``, ``refine_learning_rate`` and ``latent_dim``
  (the trainer's ``config.vae``); ``prior_weights`` = ``(one_hot, entropy,
  entropy_log_base)`` of the refinement.
  """
  one_hot, entropy, log_base = prior_weights

  def replay_x(state, key, train):
    z = ctx.normal(key, config.samples, config.latent_dim)
    return generative.sample(
        state, vae, z, ctx.teacher, train=train, refine=config.latent_refinement,
        refine_learning_rate=config.refine_learning_rate, one_hot=one_hot,
        entropy=entropy, entropy_log_base=log_base, axis_name=ctx.axis_name)

  def retention(state, key):
    x = replay_x(state, key, train=False)
    return objectives.KDBatch(x, ctx.teacher(x)), state.num_updates > 0

  def after_student_step(state, index, key, acq):
    k_replay, k_noise = jax.random.split(key)

    def train(state):
      x_mem = replay_x(state, k_replay, train=True)
      # Half of the fresh batch (global even rows: the same samples on any device
      # count) and the memory samples, as in PRE-DFKD.
      x = jnp.concatenate([acq.x[::2], x_mem])
      logits = jnp.concatenate([acq.teacher_logits[::2], ctx.teacher(x_mem)])
      return generative.train_step(state, vae, config.learning_rate, x, logits,
                                   ctx.teacher, k_noise, config.kl_weight, ctx.axis_name)

    def skip(state):
      nan = jnp.full((), jnp.nan, jnp.float32)
      return state, {k: nan for k in ("vae_loss", "vae_reconstruction",
                                      "vae_logit_reconstruction", "vae_kl")}

    if isinstance(index, (int, np.integer)):  # Unrolled loop: decide while tracing.
      return train(state) if index < config.train_steps else skip(state)
    return jax.lax.cond(index < config.train_steps, train, skip, state)

  return ReplaySource(retention, _same, after_student_step, _same)


def ema_source(ctx: Context, *, samples: int, decay: float) -> ReplaySource:
  """MAD's EMA generator (:mod:`dfkd_jax.replay.ema`): ``samples`` per retention batch."""

  def retention(state, key):
    x = ema_lib.sample(state, ctx.generate, *ctx.draw(key, samples))
    return objectives.KDBatch(x, ctx.teacher(x)), jnp.ones((), jnp.bool_)

  def after_generator(state, generator):
    return ema_lib.update(state, generator.params, generator.batch_stats, decay)

  return ReplaySource(retention, after_generator, _no_step, _same)

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

import dataclasses
import functools
from typing import Any, Callable, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from dfkd_jax import config_checks
from dfkd_jax import models
from dfkd_jax import objectives
from dfkd_jax import parallel
from dfkd_jax.replay import ema as ema_lib
from dfkd_jax.replay import generative
from dfkd_jax.replay import memory as memory_lib

Array = chex.Array


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


def vae_source(ctx: Context, config: "VAEReplay") -> ReplaySource:
  """PRE-DFKD's generative replay (:mod:`dfkd_jax.replay.generative`).

  ``config`` (:class:`VAEReplay`) has the VAE module, ``samples`` (global replayed
  samples per step), ``train_steps`` (VAE updates on the first student steps of each
  iteration), ``learning_rate``, ``kl_weight``, ``latent_refinement``,
  ``refine_learning_rate``, ``latent_dim`` and the refinement's prior weights
  ``one_hot``, ``entropy`` and ``entropy_log_base``.
  """
  vae = config.module
  one_hot, entropy, log_base = config.one_hot, config.entropy, config.entropy_log_base

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


# ---------------------------------------------------------------------------
# The registry: per replay kind its validation, resolved options, state and specs.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoReplay:
  """No replay: no retention batches, no state (``dfkd``, ``dafl``, ...)."""

  kind: ClassVar[str] = "none"

  @classmethod
  def validate(cls, config, mesh) -> None:
    del config, mesh

  @classmethod
  def from_config(cls, config, input_shape) -> "NoReplay":
    del config, input_shape
    return cls()

  def init(self, key, generator, input_shape, num_classes):
    del key, generator, input_shape, num_classes
    return None

  def specs(self, state):
    del state
    return None

  def source(self, ctx: Context) -> ReplaySource | None:
    del ctx
    return None


@dataclasses.dataclass(frozen=True)
class MemoryReplay:
  """The memory buffer of MB-DFKD / LRA Ours-1 (``config.memory``)."""

  num_slots: int
  samples_per_slot: int
  push_every_epochs: int
  iterations_per_epoch: int
  dtype: str
  kind: ClassVar[str] = "memory"
  DTYPES: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")

  @classmethod
  def validate(cls, config, mesh) -> None:
    config_checks.check(config, [
        ("memory.num_slots", config_checks.POSITIVE_INT),
        ("memory.samples_per_slot", config_checks.POSITIVE_INT),
        ("memory.push_every_epochs", config_checks.POSITIVE_INT),
        ("memory.dtype", config_checks.one_of(cls.DTYPES))])
    m = config.memory.samples_per_slot
    if m > config.batch_size:
      raise ValueError(f"config.memory.samples_per_slot={m} must be <= "
                       f"config.batch_size={config.batch_size} (slots are filled from one "
                       "generated batch)")
    parallel.check_divisible(m, "config.memory.samples_per_slot", mesh)
    if config.batch_size % m:
      raise ValueError(f"config.memory.samples_per_slot={m} must divide "
                       f"config.batch_size={config.batch_size}")

  @classmethod
  def from_config(cls, config, input_shape) -> "MemoryReplay":
    del input_shape
    m = config.memory
    return cls(m.num_slots, m.samples_per_slot, m.push_every_epochs,
               config.iterations_per_epoch, m.dtype)

  def init(self, key, generator, input_shape, num_classes) -> memory_lib.MemoryState:
    del key, generator
    return memory_lib.init(self.num_slots, self.samples_per_slot, input_shape,
                           num_classes, dtype=jnp.dtype(self.dtype))

  def specs(self, state) -> memory_lib.MemoryState:
    """The buffer's sample axis is sharded over the mesh; the counter is replicated."""
    del state
    axis = parallel.DATA_AXIS
    return memory_lib.MemoryState(x=P(None, axis), teacher_logits=P(None, axis),
                                  num_pushed=P())

  def source(self, ctx: Context) -> ReplaySource:
    return memory_source(ctx, samples_per_slot=self.samples_per_slot,
                         push_every_epochs=self.push_every_epochs,
                         iterations_per_epoch=self.iterations_per_epoch)


@dataclasses.dataclass(frozen=True)
class VAEReplay:
  """PRE-DFKD's VAE generative replay (``config.vae``), replicated like the generator."""

  module: Any
  samples: int
  train_steps: int
  learning_rate: float
  kl_weight: float
  latent_refinement: bool
  refine_learning_rate: float
  latent_dim: int
  one_hot: float
  entropy: float
  entropy_log_base: float | None
  kind: ClassVar[str] = "generative"

  @staticmethod
  def global_samples(config) -> int:
    """Replayed samples per student step: ``config.vae.samples`` or ``batch_size // 8``."""
    return config.vae.samples or config.batch_size // 8

  @classmethod
  def validate(cls, config, mesh) -> None:
    config_checks.check(config, [
        ("vae.samples", config_checks.NON_NEGATIVE_INT),
        ("vae.train_steps", config_checks.NON_NEGATIVE_INT),
        ("vae.learning_rate", config_checks.POSITIVE),
        ("vae.kl_weight", config_checks.NON_NEGATIVE),
        ("vae.latent_refinement", config_checks.BOOL),
        ("vae.refine_learning_rate", config_checks.POSITIVE)])
    samples = cls.global_samples(config)
    if samples < 1:
      raise ValueError(f"config.vae.samples={config.vae.samples}: batch_size // 8 = 0; "
                       "set config.vae.samples > 0")
    parallel.check_divisible(samples, "config.vae.samples (replayed samples per step)",
                             mesh)
    if (config.batch_size // mesh.devices.size) % 2:
      raise ValueError(f"config.batch_size={config.batch_size} must be an even multiple of "
                       f"the device count ({mesh.devices.size}): the VAE trains on half "
                       "of each device's fresh batch")

  @classmethod
  def from_config(cls, config, input_shape) -> "VAEReplay":
    v, gl = config.vae, config.generator_loss
    module = models.get("vae", latent_dim=config.latent_dim, image_shape=input_shape)
    return cls(module, cls.global_samples(config), v.train_steps, v.learning_rate,
               v.kl_weight, bool(v.latent_refinement), v.refine_learning_rate,
               config.latent_dim, gl.one_hot, gl.entropy, gl.entropy_log_base or None)

  def init(self, key, generator, input_shape, num_classes) -> generative.VAEState:
    del generator, num_classes
    return jax.jit(functools.partial(generative.init, self.module,
                                     image_shape=input_shape,
                                     learning_rate=self.learning_rate))(key)

  def specs(self, state):
    return jax.tree.map(lambda _: P(), state)

  def source(self, ctx: Context) -> ReplaySource:
    return vae_source(ctx, self)


@dataclasses.dataclass(frozen=True)
class EMAReplay:
  """MAD's EMA generator (``config.ema``), replicated like the generator."""

  samples: int
  decay: float
  kind: ClassVar[str] = "ema"

  @staticmethod
  def global_samples(config) -> int:
    """``G~(z')`` samples per student step: ``config.ema.samples`` or ``batch_size``."""
    return config.ema.samples or config.batch_size

  @classmethod
  def validate(cls, config, mesh) -> None:
    config_checks.check(config, [("ema.decay", config_checks.CLOSED_UNIT_INTERVAL),
                                 ("ema.samples", config_checks.NON_NEGATIVE_INT)])
    parallel.check_divisible(cls.global_samples(config), "config.ema.samples (G~ samples "
                             "per step)", mesh)

  @classmethod
  def from_config(cls, config, input_shape) -> "EMAReplay":
    del input_shape
    return cls(cls.global_samples(config), config.ema.decay)

  def init(self, key, generator, input_shape, num_classes) -> ema_lib.EMAState:
    del key, input_shape, num_classes
    return ema_lib.init(generator.params, generator.batch_stats)

  def specs(self, state):
    return jax.tree.map(lambda _: P(), state)

  def source(self, ctx: Context) -> ReplaySource:
    return ema_source(ctx, samples=self.samples, decay=self.decay)


Replay = NoReplay | MemoryReplay | VAEReplay | EMAReplay
REPLAYS: dict[str, type] = {r.kind: r for r in (NoReplay, MemoryReplay, VAEReplay,
                                                EMAReplay)}
KINDS = tuple(k for k in REPLAYS if k != "none")


def get(kind: str) -> type:
  """The replay class of ``kind`` (a method's ``replay``: none, memory, generative, ema).

  Raises:
    ValueError: unknown kind, listing the valid ones.
  """
  if kind not in REPLAYS:
    raise ValueError(f"unknown replay {kind!r}; valid: {', '.join(REPLAYS)}")
  return REPLAYS[kind]

"""One interface over the replay sources: memory buffer, VAE decoder, EMA generator.

The trainer's student update asks a :class:`ReplaySource` for a retention batch
(samples and the teacher's logits on them) and a validity flag, and hands it to
:func:`dfkd_jax.math.objectives.joint` or :func:`~dfkd_jax.math.objectives.meta` unchanged: the
update never knows which source it got. A source also says how its state evolves at
the three points of an iteration where replay schemes act:

* ``after_generator(ctx, state, generator)`` -- after the generator stage (the EMA
  update of MAD eq. 5);
* ``after_student_step(ctx, state, index, key, acq)`` -- after each student step, with
  that step's fresh batch (PRE-DFKD trains its VAE on the first 4 steps);
* ``end_of_iteration(ctx, state, step, last)`` -- with the iteration's last fresh batch
  (the memory buffer's push schedule).

Each replay kind is one frozen dataclass of plain values implementing the interface
directly (:class:`NoReplay`, :class:`MemoryReplay`, :class:`VAEReplay`,
:class:`EMAReplay`), registered in :data:`REPLAYS` with its traits: the config section
it reads, that section's field rules and its cross-field checks on plain values (the
config layer, :mod:`dfkd_jax.run.run_config`, applies them; nothing here reads the config).
"No replay" is the :class:`NoReplay` object: its hooks leave the (empty) state as it is.

Every method is pure and traced inside the trainer's one jitted, ``shard_map``-ped
iteration, with the iteration's :class:`Context`; batches are this device's rows of a
global batch. The state is :class:`~dfkd_jax.replay.memory.MemoryState`,
:class:`~dfkd_jax.replay.generative.VAEState`, :class:`~dfkd_jax.replay.ema.EMAState`,
:class:`BankState` (Fast DFKD's data bank) or ``None`` (no replay), held in
``TrainState.replay``.

For the VAE and the EMA generator the retention batch's teacher logits come from a
teacher forward on the replayed samples; the memory stores them with the samples (the
teacher is frozen, so they are exact).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from dfkd_jax import models
from dfkd_jax.core import config_checks
from dfkd_jax.core import registry
from dfkd_jax.math import objectives
from dfkd_jax.parallel import mesh as parallel
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


class RunShape(NamedTuple):
  """The plain values of a run a replay kind is made from, besides its own section.

  Attributes:
    batch_size: the global batch ``B`` of every step.
    latent_dim: the generator's latent width (the VAE's too).
    iterations_per_epoch: iterations per epoch (the memory's push schedule).
    input_shape: ``(H, W, C)`` of the teacher's input.
    one_hot, entropy, entropy_log_base: the generator-loss prior weights (the VAE's
      latent refinement; ``entropy_log_base`` ``None`` = natural log).
    teacher_bn_channels: the channels of each BatchNorm layer of the teacher, in
      forward order (the data bank keeps running moments of the synthesised data).
  """

  batch_size: int
  latent_dim: int
  iterations_per_epoch: int
  input_shape: tuple[int, int, int]
  one_hot: float
  entropy: float
  entropy_log_base: float | None
  teacher_bn_channels: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ReplaySource:
  """The interface of a replay kind, and "no replay" for every hook.

  Class-level traits (read by the config layer and the assembler):
    section: the config section of the kind's options (``""``: none).
    rules: ``(field, rule)`` rows of that section (:mod:`dfkd_jax.core.config_checks`).
    provides_retention: it gives retention batches (all but :class:`NoReplay`).
  """

  section: ClassVar[str] = ""
  provides_retention: ClassVar[bool] = True
  rules: ClassVar[tuple[tuple[str, config_checks.Rule], ...]] = ()

  @classmethod
  def check(cls, options: Mapping[str, Any], batch_size: int, mesh) -> None:
    """Cross-field checks of the section's ``options`` (after :attr:`rules`)."""
    del options, batch_size, mesh

  @classmethod
  def create(cls, options: Mapping[str, Any], run: RunShape) -> "ReplaySource":
    """The kind's object from its section's ``options`` and the run's values."""
    del options, run
    return cls()

  def init(self, key, generator, input_shape, num_classes) -> Any:
    """The fresh replay state (``None``: nothing to keep)."""
    del key, generator, input_shape, num_classes
    return None

  def specs(self, state) -> Any:
    """The PartitionSpecs of the state (replicated unless the kind shards it)."""
    return jax.tree.map(lambda _: P(), state)

  def retention(self, ctx: Context, state, key) -> tuple[objectives.KDBatch, Array]:
    """A retention batch and whether it is valid."""
    del ctx, state, key
    raise ValueError(f"{type(self).__name__} has no retention batches; the student "
                     "update that asked needs a method with replay")

  def after_generator(self, ctx: Context, state, generator) -> Any:
    """The state after the generator stage."""
    del ctx, generator
    return state

  def after_student_step(self, ctx: Context, state, index, key, acq: objectives.KDBatch
                         ) -> tuple[Any, dict[str, Array]]:
    """The state after a student step on fresh ``acq``, and replay metrics."""
    del ctx, index, key, acq
    return state, {}

  def end_of_iteration(self, ctx: Context, state, step, last: objectives.KDBatch) -> Any:
    """The state at the end of iteration ``step``, with its last fresh batch."""
    del ctx, step, last
    return state


@dataclasses.dataclass(frozen=True)
class NoReplay(ReplaySource):
  """No replay: no retention batches, no state (``dfkd``, ``dafl``, ...)."""

  provides_retention: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class MemoryReplay(ReplaySource):
  """The circular memory buffer of MB-DFKD / LRA Ours-1 (``config.memory``).

  Official schedule: the end of epochs 0, P, 2P, ... (P = ``push_every_epochs``) writes
  ``m = samples_per_slot`` samples of the last generated batch, global rows 0, k, 2k, ...
  (k = B / m); every device holds exactly m / D of them, in global order, whatever the
  device count D.
  """

  num_slots: int
  samples_per_slot: int
  push_every_epochs: int
  iterations_per_epoch: int
  dtype: str
  DTYPES: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
  section: ClassVar[str] = "memory"
  rules: ClassVar[tuple[tuple[str, config_checks.Rule], ...]] = (
      ("memory.num_slots", config_checks.POSITIVE_INT),
      ("memory.samples_per_slot", config_checks.POSITIVE_INT),
      ("memory.push_every_epochs", config_checks.POSITIVE_INT),
      ("memory.dtype", config_checks.one_of(DTYPES)))

  @classmethod
  def check(cls, options, batch_size, mesh) -> None:
    m = options["samples_per_slot"]
    if m > batch_size:
      raise ValueError(f"config.memory.samples_per_slot={m} must be <= "
                       f"config.batch_size={batch_size} (slots are filled from one "
                       "generated batch)")
    parallel.check_divisible(m, "config.memory.samples_per_slot", mesh)
    if batch_size % m:
      raise ValueError(f"config.memory.samples_per_slot={m} must divide "
                       f"config.batch_size={batch_size}")

  @classmethod
  def create(cls, options, run) -> "MemoryReplay":
    return cls(options["num_slots"], options["samples_per_slot"],
               options["push_every_epochs"], run.iterations_per_epoch, options["dtype"])

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

  def retention(self, ctx, state, key):
    del ctx
    x, logits, valid = memory_lib.sample(state, key)
    return objectives.KDBatch(x.astype(jnp.float32), logits.astype(jnp.float32)), valid

  def end_of_iteration(self, ctx, state, step, last):
    stride = ctx.global_batch // self.samples_per_slot
    epoch = step // self.iterations_per_epoch
    push = (((step + 1) % self.iterations_per_epoch == 0)
            & (epoch % self.push_every_epochs == 0))
    return jax.lax.cond(
        push, lambda m: memory_lib.push(m, last.x[::stride], last.teacher_logits[::stride]),
        lambda m: m, state)


@dataclasses.dataclass(frozen=True)
class VAEReplay(ReplaySource):
  """PRE-DFKD's generative replay (``config.vae``, :mod:`dfkd_jax.replay.generative`),
  replicated like the generator.

  Attributes: the VAE ``module``, ``samples`` (global replayed samples per step),
  ``train_steps`` (VAE updates on the first student steps of each iteration),
  ``learning_rate``, ``kl_weight``, ``latent_refinement``, ``refine_learning_rate``,
  ``latent_dim`` and the refinement's prior weights ``one_hot``, ``entropy`` and
  ``entropy_log_base``.
  """

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
  section: ClassVar[str] = "vae"
  rules: ClassVar[tuple[tuple[str, config_checks.Rule], ...]] = (
      ("vae.samples", config_checks.NON_NEGATIVE_INT),
      ("vae.train_steps", config_checks.NON_NEGATIVE_INT),
      ("vae.learning_rate", config_checks.POSITIVE),
      ("vae.kl_weight", config_checks.NON_NEGATIVE),
      ("vae.latent_refinement", config_checks.BOOL),
      ("vae.refine_learning_rate", config_checks.POSITIVE))

  @staticmethod
  def global_samples(options, batch_size: int) -> int:
    """Replayed samples per student step: ``vae.samples`` or ``batch_size // 8``."""
    return options["samples"] or batch_size // 8

  @classmethod
  def check(cls, options, batch_size, mesh) -> None:
    samples = cls.global_samples(options, batch_size)
    if samples < 1:
      raise ValueError(f"config.vae.samples={options['samples']}: batch_size // 8 = 0; "
                       "set config.vae.samples > 0")
    parallel.check_divisible(samples, "config.vae.samples (replayed samples per step)",
                             mesh)
    if (batch_size // mesh.devices.size) % 2:
      raise ValueError(f"config.batch_size={batch_size} must be an even multiple of "
                       f"the device count ({mesh.devices.size}): the VAE trains on half "
                       "of each device's fresh batch")

  @classmethod
  def create(cls, options, run) -> "VAEReplay":
    module = models.get("vae", latent_dim=run.latent_dim, image_shape=run.input_shape)
    return cls(module, cls.global_samples(options, run.batch_size),
               options["train_steps"], options["learning_rate"], options["kl_weight"],
               bool(options["latent_refinement"]), options["refine_learning_rate"],
               run.latent_dim, run.one_hot, run.entropy, run.entropy_log_base)

  def init(self, key, generator, input_shape, num_classes) -> generative.VAEState:
    del generator, num_classes
    return jax.jit(functools.partial(generative.init, self.module,
                                     image_shape=input_shape,
                                     learning_rate=self.learning_rate))(key)

  def _replay_x(self, ctx, state, key, train):
    z = ctx.normal(key, self.samples, self.latent_dim)
    return generative.sample(
        state, self.module, z, ctx.teacher, train=train, refine=self.latent_refinement,
        refine_learning_rate=self.refine_learning_rate, one_hot=self.one_hot,
        entropy=self.entropy, entropy_log_base=self.entropy_log_base,
        axis_name=ctx.axis_name)

  def retention(self, ctx, state, key):
    x = self._replay_x(ctx, state, key, train=False)
    return objectives.KDBatch(x, ctx.teacher(x)), state.num_updates > 0

  def after_student_step(self, ctx, state, index, key, acq):
    """PRE-DFKD trains the VAE on the first ``train_steps`` student steps."""
    k_replay, k_noise = jax.random.split(key)

    def train(state):
      x_mem = self._replay_x(ctx, state, k_replay, train=True)
      # Half of the fresh batch (global even rows: the same samples on any device
      # count) and the memory samples, as in PRE-DFKD.
      x = jnp.concatenate([acq.x[::2], x_mem])
      logits = jnp.concatenate([acq.teacher_logits[::2], ctx.teacher(x_mem)])
      return generative.train_step(state, self.module, self.learning_rate, x, logits,
                                   ctx.teacher, k_noise, self.kl_weight, ctx.axis_name)

    def skip(state):
      nan = jnp.full((), jnp.nan, jnp.float32)
      return state, {k: nan for k in ("vae_loss", "vae_reconstruction",
                                      "vae_logit_reconstruction", "vae_kl")}

    if isinstance(index, (int, np.integer)):  # Unrolled loop: decide while tracing.
      return train(state) if index < self.train_steps else skip(state)
    return jax.lax.cond(index < self.train_steps, train, skip, state)


@dataclasses.dataclass(frozen=True)
class EMAReplay(ReplaySource):
  """MAD's EMA generator (``config.ema``, :mod:`dfkd_jax.replay.ema`): ``samples``
  ``G~(z')`` per retention batch; replicated like the generator."""

  samples: int
  decay: float
  section: ClassVar[str] = "ema"
  rules: ClassVar[tuple[tuple[str, config_checks.Rule], ...]] = (
      ("ema.decay", config_checks.CLOSED_UNIT_INTERVAL),
      ("ema.samples", config_checks.NON_NEGATIVE_INT))

  @staticmethod
  def global_samples(options, batch_size: int) -> int:
    """``G~(z')`` samples per student step: ``ema.samples`` or ``batch_size``."""
    return options["samples"] or batch_size

  @classmethod
  def check(cls, options, batch_size, mesh) -> None:
    parallel.check_divisible(cls.global_samples(options, batch_size),
                             "config.ema.samples (G~ samples per step)", mesh)

  @classmethod
  def create(cls, options, run) -> "EMAReplay":
    return cls(cls.global_samples(options, run.batch_size), options["decay"])

  def init(self, key, generator, input_shape, num_classes) -> ema_lib.EMAState:
    del key, input_shape, num_classes
    return ema_lib.init(generator.params, generator.batch_stats)

  def retention(self, ctx, state, key):
    x = ema_lib.sample(state, ctx.generate, *ctx.draw(key, self.samples))
    return objectives.KDBatch(x, ctx.teacher(x)), jnp.ones((), jnp.bool_)

  def after_generator(self, ctx, state, generator):
    del ctx
    return ema_lib.update(state, generator.params, generator.batch_stats, self.decay)


class BankState(NamedTuple):
  """The state of Fast DFKD's data bank (:class:`BankReplay`).

  Attributes:
    samples: the synthesised batches, one per round (:class:`~dfkd_jax.replay.memory.
      MemoryState`, its sample axis sharded over the mesh), with the teacher's logits
      on them.
    bn_mean, bn_var: per teacher BatchNorm layer, the exponential moving average over
      the rounds of the batch moments the teacher saw at each round's last inner step
      (the official ``DeepInversionHook.update_mmt`` with ``bn_mmt``).
    bn_rounds: rounds averaged into ``bn_mean``/``bn_var`` (0: none yet, the moments
      are unused).
  """

  samples: memory_lib.MemoryState
  bn_mean: tuple[Array, ...]
  bn_var: tuple[Array, ...]
  bn_rounds: Array


@dataclasses.dataclass(frozen=True)
class BankReplay(ReplaySource):
  """Fast DFKD's data bank (``config.bank``): every synthesis round's best batch, all
  kept (the official code writes them as PNG files and reloads the whole folder,
  ``datafree/synthesis/fast_meta.py`` L181-193); here a device-resident circular
  :mod:`~dfkd_jax.replay.memory` of ``num_slots`` rounds of ``batch_size`` samples,
  the oldest overwritten once full. Student batches are drawn uniformly from every
  written sample (:func:`~dfkd_jax.replay.memory.sample_rows`); the retention batch of
  the interface is such a draw (the selection's replay criteria use it).

  The bank also keeps the running BatchNorm moments of the synthesised data that the
  synthesis loss's BatchNorm term blends in (:class:`BankState`).
  """

  num_slots: int
  samples_per_slot: int
  dtype: str
  bn_channels: tuple[int, ...]
  DTYPES: ClassVar[tuple[str, ...]] = MemoryReplay.DTYPES
  section: ClassVar[str] = "bank"
  rules: ClassVar[tuple[tuple[str, config_checks.Rule], ...]] = (
      ("bank.num_slots", config_checks.POSITIVE_INT),
      ("bank.dtype", config_checks.one_of(MemoryReplay.DTYPES)))

  @classmethod
  def create(cls, options, run) -> "BankReplay":
    return cls(options["num_slots"], run.batch_size, options["dtype"],
               tuple(run.teacher_bn_channels))

  def init(self, key, generator, input_shape, num_classes) -> BankState:
    del key, generator
    samples = memory_lib.init(self.num_slots, self.samples_per_slot, input_shape,
                              num_classes, dtype=jnp.dtype(self.dtype))
    # Distinct arrays (the state is donated): unused until a round's moments arrive.
    mean = tuple(jnp.zeros((c,), jnp.float32) for c in self.bn_channels)
    var = tuple(jnp.ones((c,), jnp.float32) for c in self.bn_channels)
    return BankState(samples, mean, var, jnp.zeros((), jnp.int32))

  def specs(self, state) -> BankState:
    """The samples' axis is sharded over the mesh; the rest is replicated."""
    axis = parallel.DATA_AXIS
    return BankState(
        memory_lib.MemoryState(x=P(None, axis), teacher_logits=P(None, axis),
                               num_pushed=P()),
        tuple(P() for _ in state.bn_mean), tuple(P() for _ in state.bn_var), P())

  def draw(self, ctx: Context, state: BankState, key, n: int
           ) -> tuple[objectives.KDBatch, Array]:
    """This device's rows of ``n`` samples drawn uniformly from the whole bank (the
    same global draw on any device count), with their stored teacher logits."""
    x, logits, valid = memory_lib.sample_rows(state.samples, key, n, ctx.axis_name)
    return objectives.KDBatch(x.astype(jnp.float32), logits.astype(jnp.float32)), valid

  def retention(self, ctx, state, key):
    return self.draw(ctx, state, key, ctx.global_batch)

  def push(self, state: BankState, batch: objectives.KDBatch) -> BankState:
    """Writes one round's batch (this device's rows of it) into the next slot."""
    return state._replace(samples=memory_lib.push(state.samples, batch.x,
                                                  batch.teacher_logits))

  def update_moments(self, state: BankState, batch_mean, batch_var,
                     momentum: float) -> BankState:
    """Averages one round's BatchNorm moments in: the first round's as they are, then
    ``r * old + (1 - r) * new`` (``DeepInversionHook.update_mmt``)."""
    first = state.bn_rounds == 0

    def average(old, new):
      return tuple(jnp.where(first, n, momentum * o + (1 - momentum) * n)
                   for o, n in zip(old, new))

    return state._replace(bn_mean=average(state.bn_mean, batch_mean),
                          bn_var=average(state.bn_var, batch_var),
                          bn_rounds=state.bn_rounds + 1)


Replay = ReplaySource
#: The replay kinds (a method's ``replay``), each entry the class of its objects.
REPLAYS: registry.Registry[type[ReplaySource]] = registry.Registry("replay")
REPLAYS.register("none", NoReplay)
REPLAYS.register("memory", MemoryReplay)
REPLAYS.register("generative", VAEReplay)
REPLAYS.register("ema", EMAReplay)
REPLAYS.register("bank", BankReplay)

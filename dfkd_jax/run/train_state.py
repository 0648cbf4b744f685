"""The training state, the networks and the step loop that every iteration kind shares.

* :class:`TrainState`: generator and student (params, BatchNorm stats, optimiser
  state), the replay source's state (memory buffer, VAE or EMA generator,
  :mod:`dfkd_jax.replay.sources`; the Fast methods' data bank), the RNG key and the
  iteration counter -- one pytree; the frozen teacher is an argument, neither
  differentiated nor part of the state. :func:`init_state` makes it for one seed,
  :func:`state_specs` says how it is sharded.
* Replicas (``config.num_seeds > 1``, :func:`init_replicas`): N independent runs in one
  program, every leaf of the state with a leading replica axis; replica k is exactly the
  state of a single run with seed ``seed + k``.
* :class:`Networks` (:func:`make_networks`): the forward passes of one iteration, traced
  per device inside ``jax.shard_map``; :func:`local_rows` and :func:`step_loop`, the
  helpers both iteration kinds (:mod:`dfkd_jax.run.iteration`,
  :mod:`dfkd_jax.run.fast_rounds`) use there.

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

from dfkd_jax.math import objectives
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
# What every iteration kind uses inside the mesh.
# ---------------------------------------------------------------------------


def local_rows(a):
  """This device's rows of a global array (the same on every device), inside the mesh."""
  local = a.shape[0] // jax.lax.axis_size(AXIS)
  return jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index(AXIS) * local, local)


def step_loop(step, carry, xs, unroll: bool):
  """``lax.scan(step, carry, xs)``, or the same loop unrolled into the program."""
  if not unroll or jax.tree.leaves(xs)[0].shape[0] == 0:  # Zero steps: nothing to unroll.
    return jax.lax.scan(step, carry, xs)
  outputs = []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, out = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    outputs.append(out)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


# ---------------------------------------------------------------------------
# The networks of one iteration, per device.
# ---------------------------------------------------------------------------


def cast_floats(tree, dtype):
  """``tree`` with its floating-point leaves in ``dtype`` (integer leaves as they are)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                      else a, tree)


def _classifier_apply(module, compute_dtype) -> objectives.ApplyFn:
  """Training-mode apply in ``compute_dtype`` (params and stats stay float32)."""

  def apply_fn(params, batch_stats, x):
    logits, updates = module.apply(
        {"params": cast_floats(params, compute_dtype), "batch_stats": batch_stats},
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
  dtype = setup.compute_dtype
  conditional = setup.conditional_generator
  with_output_logits = setup.generator_output_logits
  unit_range = setup.generator_output_range == "unit"
  shape = (1, 1, 1, setup.input_shape[-1])
  in_mean = np.asarray(setup.teacher_meta.mean, np.float32).reshape(shape)
  in_std = np.asarray(setup.teacher_meta.std, np.float32).reshape(shape)

  def normal(key, n, width):
    return local_rows(jax.random.normal(key, (n, width), jnp.float32))

  def draw(key, n):
    k_z, k_y = jax.random.split(key)
    z = normal(k_z, n, setup.latent_dim)
    if not conditional:
      return (z,)
    return z, local_rows(jax.random.randint(k_y, (n,), 0, setup.num_classes))

  def generate_full(params, batch_stats, z, y=None):
    kwargs = {}
    if conditional:
      kwargs["y"] = y
    if with_output_logits:
      kwargs["return_logits"] = True
    out, updates = setup.generator.apply(
        {"params": cast_floats(params, dtype), "batch_stats": batch_stats},
        z.astype(dtype), train=True, mutable=["batch_stats"], **kwargs)
    x, u = out if with_output_logits else (out, None)
    x = x.astype(jnp.float32)
    if unit_range:  # A sigmoid image: into the teacher's normalised input space.
      x = (x - jnp.asarray(in_mean)) / jnp.asarray(in_std)
    return x, u, updates["batch_stats"]

  def generate(params, batch_stats, *inputs):
    return generate_full(params, batch_stats, *inputs)[0]

  def teacher(teacher_vars, x, features=False):
    out = setup.teacher.apply(cast_floats(teacher_vars, dtype), x.astype(dtype), train=False,
                              features=features)
    if features:
      logits, feats = out
      return logits.astype(jnp.float32), feats
    return out.astype(jnp.float32)

  return Networks(draw, normal, generate_full, generate, teacher,
                  _classifier_apply(setup.student, dtype))

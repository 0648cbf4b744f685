"""The probe set and the epoch-end criteria of data-free model selection, on the device.

The probe set (:class:`ProbeState`) is a circular buffer of ``probe_epochs`` slots of
``probe_size / probe_epochs`` generated samples each, with the teacher's logits on
them. At the end of epoch ``e`` (0-based) slot ``e mod probe_epochs`` is overwritten by
samples of the generator as it is then (training-mode BatchNorm, as in training), drawn
with the probe's own key ``fold_in(fold_in(PRNGKey(seed), PROBE_STREAM), e)``, never a
training key; then the student of epoch ``e`` (eval mode, running statistics, as it is
deployed) is scored on every filled slot: frozen snapshots of the generator of the last
``probe_epochs`` epochs. The student never trains on these samples (its batches are
drawn from the training keys), so the probe is held out. A Fast method's generator is a
meta-initialisation whose raw samples are not its data: its slot is filled by a
synthesis round of its own (:func:`dfkd_jax.run.fast_rounds.fast_synthesis` with the probe
key, the meta-gradient discarded), every ``batch_size / n``-th row of the best batch.

:func:`make_epoch_end` compiles ONE jitted, ``shard_map``-ped call per epoch end,
separate from the training iteration, which it does not change: the training state is
read, never written, so a run with and without criteria computes the same numbers
(``tests/test_selection.py``). The probe's sample axis is sharded over the mesh like
the memory buffer; with replicas every leaf has a leading replica axis and the call is
vmapped over it, so each replica gets its own probe (its seed's key) and criteria.

It returns the criteria of :mod:`dfkd_jax.metrics.selection`: ``agreement`` and ``js`` on the
probe, and, for a method with replay, ``replay_agreement`` and ``replay_js`` on one
retention batch of the replay source (``NaN`` while the source has none, e.g. an empty
memory); and the probe's health signals (:func:`health`): how many of the teacher's
classes the probe covers, the class-balanced agreement, the student's loss against a
constant student's, and the epoch's fault code (:func:`dfkd_jax.metrics.selection.fault_code`),
all per replica, in the same call.

Cost per epoch end: one generator and one teacher forward of ``probe_size /
probe_epochs`` samples (a Fast method: one synthesis round, ``g`` inner steps at
``batch_size``), one eval-mode student forward of ``probe_size`` samples, and
with replay one retention batch (what a student step draws) through teacher and
student. Memory: ``probe_size x (H*W*C + num_classes)`` float32 values per replica,
spread over the devices (defaults on digits: 256 x 74 x 4 B = 76 KB). The probe is saved
with each checkpoint (item ``probe``), so a resumed run scores as an uninterrupted one.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dfkd_jax.metrics import selection
from dfkd_jax.models import layers
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.replay import sources as replay_sources
from dfkd_jax.run import fast_rounds
from dfkd_jax.run import train_state
from dfkd_jax.run.run_setup import Setup

AXIS = parallel.DATA_AXIS
#: The probe's RNG stream: fold_in(PRNGKey(seed), PROBE_STREAM), apart from the training
#: keys (PRNGKey(seed) split for initialisation, PRNGKey(seed + 1) for the iterations).
PROBE_STREAM = 0x5E1EC7


class ProbeState(NamedTuple):
  """The probe set of one run.

  Attributes:
    x: ``[slots, n, H, W, C]`` generated samples (the teacher's input space).
    teacher_logits: ``[slots, n, classes]`` the teacher's logits on them.
    filled: ``[slots]`` whether a slot holds samples yet.
    key: the probe's raw uint32 key.
  """

  x: jax.Array
  teacher_logits: jax.Array
  filled: jax.Array
  key: jax.Array


def init(setup: Setup, seed: int) -> ProbeState:
  """The empty probe of the run with ``seed`` (``setup.probe_size > 0``)."""
  slots = setup.probe_epochs
  n = setup.probe_size // slots
  return ProbeState(
      jnp.zeros((slots, n, *setup.input_shape), jnp.float32),
      jnp.zeros((slots, n, setup.num_classes), jnp.float32),
      jnp.zeros((slots,), jnp.bool_),
      jax.random.fold_in(jax.random.PRNGKey(seed), PROBE_STREAM))


def init_replicas(setup: Setup) -> ProbeState:
  """The probe of every replica, stacked on a leading axis as the training state."""
  if not train_state.replicated(setup):
    return init(setup, setup.seed)
  probes = [init(setup, seed) for seed in setup.seeds]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *probes)


def specs(replicas: bool) -> ProbeState:
  """The samples are sharded over the mesh (like the memory buffer), the rest
  replicated; with replicas the leading replica axis is not sharded."""
  lead = (None,) if replicas else ()
  return ProbeState(P(*lead, None, AXIS), P(*lead, None, AXIS), P(*lead), P(*lead))


def scores(student_logits, teacher_logits, weight) -> tuple[jax.Array, jax.Array]:
  """Global top-1 agreement and mean JS divergence (nats) of this device's rows, each
  row weighted by ``weight`` (0/1), reduced over the mesh."""
  agree = (jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1))
  log_p = jax.nn.log_softmax(teacher_logits)
  log_q = jax.nn.log_softmax(student_logits)
  log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
  js = 0.5 * (jnp.sum(jnp.exp(log_p) * (log_p - log_m), -1)
              + jnp.sum(jnp.exp(log_q) * (log_q - log_m), -1))
  total = jax.lax.psum(jnp.sum(weight), AXIS)

  def mean(v):
    return jax.lax.psum(jnp.sum(v * weight), AXIS) / total

  return mean(agree.astype(jnp.float32)), jnp.clip(mean(js), 0.0, jnp.log(2.0))


def health(student_logits, teacher_logits, weight, kd_loss, num_classes: int
           ) -> dict[str, jax.Array]:
  """The probe's health signals (:data:`dfkd_jax.metrics.selection.HEALTH`) of this device's
  rows, each weighted by ``weight`` (0/1), reduced over the mesh.

  * ``probe_diversity``: the entropy of the class histogram of the teacher's top-1
    labels on the probe, over ``ln(num_classes)`` (1: every class equally often; 0:
    one class only, a collapsed generator).
  * ``balanced_agreement``: the student-teacher top-1 agreement per teacher class,
    averaged over the classes present (a student that predicts one class scores
    1 / classes present, whatever the classes' frequencies).
  * ``loss_ratio``: the student's mean ``kd_loss`` against the teacher over that of a
    constant student (zero logits); non-finite when the student's outputs are.
  * ``fault``: :func:`dfkd_jax.metrics.selection.fault_code` of the three.
  """
  labels = jax.nn.one_hot(jnp.argmax(teacher_logits, -1), num_classes) * weight[:, None]
  agree = (jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1))
  counts = jax.lax.psum(jnp.sum(labels, 0), AXIS)
  hits = jax.lax.psum(jnp.sum(labels * agree[:, None], 0), AXIS)
  present = counts > 0
  freq = counts / jnp.sum(counts)
  entropy = -jnp.sum(jnp.where(present, freq * jnp.log(jnp.where(present, freq, 1.0)),
                               0.0))
  diversity = entropy / jnp.log(float(num_classes))
  balanced = (jnp.sum(jnp.where(present, hits / jnp.where(present, counts, 1.0), 0.0))
              / jnp.maximum(jnp.sum(present), 1))
  total = jax.lax.psum(jnp.sum(weight), AXIS)

  def mean_loss(logits):
    return jax.lax.psum(jnp.sum(kd_loss(logits, teacher_logits) * weight), AXIS) / total

  ratio = mean_loss(student_logits) / jnp.maximum(
      mean_loss(jnp.zeros_like(student_logits)), 1e-12)
  return {"probe_diversity": diversity, "balanced_agreement": balanced,
          "loss_ratio": ratio,
          "fault": selection.fault_code(diversity, balanced, ratio, num_classes)}


def make_epoch_end(setup: Setup, state):
  """The jitted ``(state, probe, teacher_variables) -> (probe, criteria)`` of an epoch's
  end (the 0-based epoch just finished is ``state.step // iterations_per_epoch - 1``).

  ``probe`` is donated; ``criteria`` maps the names of
  :func:`dfkd_jax.metrics.selection.measured` to scalars (``[N]`` with replicas).
  """
  nets = train_state.make_networks(setup)
  slots = setup.probe_epochs
  n = setup.probe_size // slots
  source = setup.replay
  with_replay = source.provides_retention

  def student_eval(student, x):
    return setup.student.apply({"params": student.params,
                                "batch_stats": student.batch_stats}, x, train=False)

  def epoch_end(state, probe: ProbeState, teacher_vars):
    epoch = state.step // setup.iterations_per_epoch - 1
    key = jax.random.fold_in(probe.key, epoch)
    k_probe, k_replay = jax.random.split(key)
    slot = epoch % slots
    with layers.batch_stats_axis(AXIS):
      if setup.fast is not None:  # The method's data: a synthesis round of its own.
        _, synthesized = fast_rounds.fast_synthesis(
            setup, nets, state, teacher_vars, k_probe, meta_gradient="first_order")
        x = synthesized.best_x[::setup.batch_size // n]  # Global rows 0, B/n, ...
      else:
        x = nets.generate(state.generator.params, state.generator.batch_stats,
                          *nets.draw(k_probe, n))
      teacher = functools.partial(nets.teacher, teacher_vars)
      probe = probe._replace(
          x=jax.lax.dynamic_update_index_in_dim(probe.x, x, slot, 0),
          teacher_logits=jax.lax.dynamic_update_index_in_dim(
              probe.teacher_logits, teacher(x), slot, 0),
          filled=probe.filled.at[slot].set(True))
      flat = probe.x.reshape(-1, *probe.x.shape[2:])
      weight = jnp.repeat(probe.filled.astype(jnp.float32), probe.x.shape[1])
      student_logits = student_eval(state.student, flat)
      teacher_logits = probe.teacher_logits.reshape(flat.shape[0], -1)
      agreement, js = scores(student_logits, teacher_logits, weight)
      criteria = {"agreement": agreement, "js": js,
                  **health(student_logits, teacher_logits, weight, setup.kd_loss,
                           setup.num_classes)}
      if with_replay:
        ctx = replay_sources.Context(
            teacher=teacher, draw=nets.draw, generate=nets.generate, normal=nets.normal,
            global_batch=setup.batch_size, axis_name=AXIS)
        batch, valid = source.retention(ctx, state.replay, k_replay)
        ones = jnp.ones(batch.x.shape[:1], jnp.float32)
        agreement, js = scores(student_eval(state.student, batch.x),
                               batch.teacher_logits, ones)
        nan = jnp.full((), jnp.nan, jnp.float32)
        criteria["replay_agreement"] = jnp.where(valid, agreement, nan)
        criteria["replay_js"] = jnp.where(valid, js, nan)
    return probe, criteria

  replicas = train_state.replicated(setup)
  if replicas:
    epoch_end = jax.vmap(epoch_end, in_axes=(0, 0, None))
  state_specs = train_state.state_specs(state, setup.replay, replicas)
  probe_specs = specs(replicas)
  sharded = parallel.shard(epoch_end, mesh=setup.mesh,
                           in_specs=(state_specs, probe_specs, P()),
                           out_specs=(probe_specs, P()))
  return jax.jit(sharded, donate_argnums=1,
                 out_shardings=(parallel.shardings(setup.mesh, probe_specs),
                                parallel.replicated(setup.mesh)))


def put(probe: ProbeState, setup: Setup) -> Any:
  """``probe`` on the mesh with :func:`specs`."""
  return parallel.put(probe, setup.mesh, specs(train_state.replicated(setup)))

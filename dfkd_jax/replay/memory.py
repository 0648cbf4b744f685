"""A device-resident circular replay memory of generated batches (LRA Sec. 3.3).

The memory ``M`` of LRA eq. 4: a bank of at most ``K`` batches of generated samples
``x_hat``, written at a fixed frequency and replayed by drawing one stored batch
uniformly at random. The official LRA code (``src/utils/replay_memory_DFKD.py`` and
``src/agents/predfkd_meta_memory.py``, following MB-DFKD) keeps ``K = 10`` batches of
``64`` images, pushes the first ``batch_size // 8`` images of the current generated
batch at the end of every epoch with ``epoch % 5 == 0``, replays only once at least one
batch was pushed, and overwrites the oldest batch once full.

Here the memory is a stateless pytree in the style of the circular buffer of
``learned_optimization``: :class:`MemoryState` holds fixed-shape arrays, and
:func:`init`, :func:`push`, :func:`sample`, :func:`num_filled` (and the helpers
:func:`capacity`, :func:`sample_slot`) are pure, jit-able functions with no
Python-level dependence on how many batches were pushed (the state never changes
shape, so a jitted step is traced once).

The teacher is frozen, so its logits on a stored sample never change: they are stored
with the sample, which is exact and saves one teacher forward pass per replayed step.

Sharding semantics. In the trainer the sample axis ``m`` (axis 1 of ``x`` and
``teacher_logits``) is sharded over the mesh axis ``'data'`` (state partition specs
``P(None, 'data')`` for both arrays and ``P()`` for ``num_pushed``), and these
functions run per device inside ``jax.shard_map``:

* every device calls :func:`push` with its own slice ``[m_local, ...]`` of the batch
  to store; all devices push the same number of times, so ``num_pushed`` stays
  replicated and every device writes the same slot;
* every device calls :func:`sample` with the SAME (replicated) ``rng``, so every device
  draws the same slot index and the global retention batch is the concatenation of the
  devices' slices of one consistent stored batch. (Do not ``fold_in`` the device index
  into this key: devices would then replay slices of different stored batches.)

Nothing here depends on the global ``m``; only on the shapes each device sees.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp

Array = chex.Array
PRNGKey = chex.PRNGKey


class MemoryState(NamedTuple):
  """State of the circular replay memory (a pytree; leaves are arrays).

  Attributes:
    x: ``[K, m, H, W, C]`` stored samples; slot ``k`` holds one pushed batch.
    teacher_logits: ``[K, m, num_classes]`` the frozen teacher's logits on ``x``.
    num_pushed: int32 scalar, total number of :func:`push` calls so far. The next
      push writes slot ``num_pushed % K``; ``min(num_pushed, K)`` slots are written.
  """

  x: Array
  teacher_logits: Array
  num_pushed: Array


def init(num_slots: int,
         samples_per_slot: int,
         image_shape: Sequence[int],
         num_classes: int,
         dtype: jnp.dtype = jnp.float32,
         logits_dtype: jnp.dtype = jnp.float32) -> MemoryState:
  """Creates an empty (all-zero) memory.

  Args:
    num_slots: ``K``, the maximum number of stored batches (10 in the official code).
    samples_per_slot: ``m``, samples per stored batch *as seen by the caller*; inside
      ``shard_map`` this is the per-device count ``m_global / num_devices``.
    image_shape: ``(H, W, C)`` of one sample.
    num_classes: number of teacher logits per sample.
    dtype: storage dtype of the samples; ``jnp.bfloat16`` halves the memory.
    logits_dtype: storage dtype of the teacher logits (small; float32 by default).

  Returns:
    A :class:`MemoryState` with ``num_pushed == 0``.
  """
  if num_slots < 1:
    raise ValueError(f"num_slots must be >= 1, got {num_slots}.")
  if samples_per_slot < 1:
    raise ValueError(f"samples_per_slot must be >= 1, got {samples_per_slot}.")
  return MemoryState(
      x=jnp.zeros((num_slots, samples_per_slot, *image_shape), dtype),
      teacher_logits=jnp.zeros((num_slots, samples_per_slot, num_classes),
                               logits_dtype),
      num_pushed=jnp.zeros((), jnp.int32))


def capacity(state: MemoryState) -> int:
  """``K``, the capacity of the memory in batches (a static Python int)."""
  return state.x.shape[0]


def num_filled(state: MemoryState) -> Array:
  """Number of written slots, ``min(num_pushed, K)``, as an int32 scalar."""
  return jnp.minimum(state.num_pushed, capacity(state)).astype(jnp.int32)


def push(state: MemoryState, x: Array, teacher_logits: Array) -> MemoryState:
  """Writes one batch into slot ``num_pushed % K``, overwriting the oldest when full.

  The samples are stored as constants (``stop_gradient``) and cast to the storage
  dtypes of ``state``.

  Args:
    state: current memory.
    x: ``[m, H, W, C]`` samples (per-device slice under ``shard_map``).
    teacher_logits: ``[m, num_classes]`` the teacher's logits on ``x``.

  Returns:
    The new memory, with ``num_pushed`` incremented.
  """
  chex.assert_shape(x, state.x.shape[1:])
  chex.assert_shape(teacher_logits, state.teacher_logits.shape[1:])
  slot = jnp.mod(state.num_pushed, capacity(state))
  x = jax.lax.stop_gradient(x).astype(state.x.dtype)
  teacher_logits = jax.lax.stop_gradient(teacher_logits).astype(
      state.teacher_logits.dtype)
  return MemoryState(
      x=jax.lax.dynamic_update_index_in_dim(state.x, x, slot, axis=0),
      teacher_logits=jax.lax.dynamic_update_index_in_dim(
          state.teacher_logits, teacher_logits, slot, axis=0),
      num_pushed=state.num_pushed + 1)


def sample_slot(state: MemoryState, rng: PRNGKey) -> Array:
  """Draws a slot index uniformly among the written slots (0 when none is written).

  Args:
    state: current memory.
    rng: PRNG key; pass the same key on every device (see the module docstring).

  Returns:
    int32 scalar in ``[0, max(num_filled(state), 1))``.
  """
  return jax.random.randint(rng, (), 0, jnp.maximum(num_filled(state), 1),
                            dtype=jnp.int32)


def sample(state: MemoryState, rng: PRNGKey) -> tuple[Array, Array, Array]:
  """Replays one stored batch, drawn uniformly among the written slots.

  As ``random.choice(memory)`` in the official code. Before the first push there is
  nothing to replay: the zero slot 0 is returned with ``valid == False`` and the
  caller must weight the retention loss by 0 (e.g. ``jnp.where(valid, loss, 0.)``),
  which keeps the step's shapes, and hence its trace, fixed.

  Args:
    state: current memory.
    rng: PRNG key; pass the same key on every device (see the module docstring).

  Returns:
    ``(x, teacher_logits, valid)``: ``x`` ``[m, H, W, C]`` and ``teacher_logits``
    ``[m, num_classes]`` in the storage dtypes, and a bool scalar ``valid``, True iff
    at least one batch was pushed.
  """
  slot = sample_slot(state, rng)
  x = jax.lax.dynamic_index_in_dim(state.x, slot, axis=0, keepdims=False)
  logits = jax.lax.dynamic_index_in_dim(state.teacher_logits, slot, axis=0,
                                        keepdims=False)
  return x, logits, state.num_pushed > 0


def sample_rows(state: MemoryState, rng: PRNGKey, n: int,
                axis_name: str | None = None) -> tuple[Array, Array, Array]:
  """Draws ``n`` samples uniformly, with replacement, from every written row of the
  memory (the whole bank, not one stored batch): Fast DFKD's data bank, replayed by a
  shuffled loader over all synthesised images (``datafree/synthesis/fast_meta.py``
  L181-193 of zju-vipa/Fast-Datafree; here with replacement).

  Sharding. Without ``axis_name`` the memory is the whole bank and ``n`` samples are
  returned. With ``axis_name`` (inside ``shard_map``) each device holds its rows
  ``m_local`` of every slot, ``rng`` must be the same on every device, and the ``n``
  draws are global: each device returns its ``n / D`` rows of them, gathered from the
  device that holds each drawn row (a masked local gather, then a reduce-scatter over
  the axis). The global batch is then the one a single device with the whole bank
  draws, whatever the device count.

  Args:
    state: current memory (per-device under ``shard_map``).
    rng: PRNG key (the same on every device).
    n: global number of samples.
    axis_name: the mesh axis the sample axis ``m`` is sharded over, or ``None``.

  Returns:
    ``(x, teacher_logits, valid)``: ``[n_local, H, W, C]`` and ``[n_local,
    num_classes]`` in the storage dtypes, and whether anything was written (before the
    first push every row is slot 0's zeros).
  """
  m_local = state.x.shape[1]
  devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  m = m_local * devices
  rows = jax.random.randint(rng, (n,), 0, jnp.maximum(num_filled(state), 1) * m,
                            dtype=jnp.int32)
  slot, row = rows // m, rows % m
  if axis_name is None:
    return state.x[slot, row], state.teacher_logits[slot, row], state.num_pushed > 0
  owner, local = row // m_local, row % m_local
  mine = owner == jax.lax.axis_index(axis_name)

  def gather(table):
    values = table[slot, local]
    mask = mine.reshape((n,) + (1,) * (values.ndim - 1))
    values = jnp.where(mask, values, jnp.zeros((), values.dtype))
    # Every drawn row is non-zero on exactly one device: the sum is the row; each
    # device keeps its n / D of the n.
    return jax.lax.psum_scatter(values, axis_name, scatter_dimension=0, tiled=True)

  return gather(state.x), gather(state.teacher_logits), state.num_pushed > 0

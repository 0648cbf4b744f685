"""Tests for dfkd_jax.replay.memory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax.replay import memory

K, M, HWC, C = 4, 3, (2, 2, 1), 5

# Jitted once per shape and shared by the tests, to keep the suite fast on CPU.
_push = jax.jit(memory.push)
_sample = jax.jit(memory.sample)
_sample_slot = jax.jit(memory.sample_slot)
_sample_many = jax.jit(jax.vmap(memory.sample, in_axes=(None, 0)))


def _batch(value: float, m: int = M, dtype=jnp.float32):
  """A batch whose every sample and logit equals ``value``."""
  return (np.full((m, *HWC), value, dtype), np.full((m, C), value, dtype))


def _filled(num_pushes: int, num_slots: int = K) -> memory.MemoryState:
  """Memory after pushing batches valued 1, 2, ..., num_pushes."""
  state = memory.init(num_slots, M, HWC, C)
  for i in range(num_pushes):
    state = _push(state, *_batch(i + 1.0))
  return state


def _slot_values(state: memory.MemoryState) -> list[float]:
  return [float(v) for v in state.x[:, 0, 0, 0, 0]]


def test_init_is_empty_and_typed():
  state = memory.init(K, M, HWC, C, dtype=jnp.bfloat16)
  chex.assert_shape(state.x, (K, M, *HWC))
  chex.assert_shape(state.teacher_logits, (K, M, C))
  assert state.x.dtype == jnp.bfloat16
  assert state.teacher_logits.dtype == jnp.float32
  assert state.num_pushed.dtype == jnp.int32 and state.num_pushed.shape == ()
  assert int(memory.num_filled(state)) == 0
  assert memory.capacity(state) == K
  np.testing.assert_array_equal(state.x, 0)


@pytest.mark.parametrize("bad", [dict(num_slots=0), dict(samples_per_slot=0)])
def test_init_rejects_empty_sizes(bad):
  kwargs = dict(num_slots=K, samples_per_slot=M, image_shape=HWC, num_classes=C)
  kwargs.update(bad)
  with pytest.raises(ValueError):
    memory.init(**kwargs)


@pytest.mark.parametrize(
    "num_pushes, expected_slots, expected_filled",
    [
        (1, [1, 0, 0, 0], 1),
        (3, [1, 2, 3, 0], 3),
        (4, [1, 2, 3, 4], 4),
        (5, [5, 2, 3, 4], 4),   # wrap-around overwrites the oldest (batch 1)
        (7, [5, 6, 7, 4], 4),
        (9, [9, 6, 7, 8], 4),
    ])
def test_push_wrap_around_order(num_pushes, expected_slots, expected_filled):
  state = _filled(num_pushes)
  assert _slot_values(state) == expected_slots
  # Logits are written to the same slot as their samples.
  np.testing.assert_array_equal(state.teacher_logits[:, :, 0],
                                np.repeat(np.array(expected_slots)[:, None], M, 1))
  assert int(state.num_pushed) == num_pushes
  assert int(memory.num_filled(state)) == expected_filled


def test_push_rejects_wrong_shapes():
  state = memory.init(K, M, HWC, C)
  x, logits = _batch(1.0, m=M + 1)
  with pytest.raises(AssertionError):
    memory.push(state, x, logits)
  with pytest.raises(AssertionError):
    memory.push(state, _batch(1.0)[0], jnp.zeros((M, C + 1)))


def test_sample_before_any_push_is_invalid_zero_slot():
  state = memory.init(K, M, HWC, C)
  x, logits, valid = _sample(state, jax.random.key(0))
  assert valid.dtype == jnp.bool_ and valid.shape == ()
  assert not bool(valid)
  chex.assert_shape(x, (M, *HWC))
  chex.assert_shape(logits, (M, C))
  np.testing.assert_array_equal(x, 0)
  np.testing.assert_array_equal(logits, 0)


def test_sample_after_push_is_valid():
  x, logits, valid = _sample(_filled(1), jax.random.key(3))
  assert bool(valid)
  np.testing.assert_array_equal(x, 1.0)
  np.testing.assert_array_equal(logits, 1.0)


@pytest.mark.parametrize("num_pushes", [1, 3, 6, 11])
def test_sample_only_written_slots_and_all_of_them(num_pushes):
  state = _filled(num_pushes)
  num_draws = 4000
  keys = jax.random.split(jax.random.key(num_pushes), num_draws)
  x, logits, valid = _sample_many(state, keys)
  assert bool(jnp.all(valid))
  values = np.asarray(x[:, 0, 0, 0, 0])
  # Samples and logits always come from the same slot, whole.
  np.testing.assert_array_equal(x, values[:, None, None, None, None]
                                * np.ones_like(x))
  np.testing.assert_array_equal(logits[:, :, 0], values[:, None] * np.ones((1, M)))
  written = set(_slot_values(state)[:min(num_pushes, K)])
  assert 0.0 not in written
  counts = {v: int(np.sum(values == v)) for v in written}
  assert set(np.unique(values)) == written  # never unwritten, every written one hit
  # Uniform: each written slot gets ~ num_draws / n; 6 sigma bound of a binomial.
  n = len(written)
  p = 1.0 / n
  tol = 6.0 * np.sqrt(num_draws * p * (1 - p))
  for v, c in counts.items():
    assert abs(c - num_draws * p) <= tol, (v, c, counts)


def test_sample_slot_matches_sample():
  state = _filled(6)
  for seed in range(10):
    rng = jax.random.key(seed)
    slot = int(_sample_slot(state, rng))
    x, _, _ = _sample(state, rng)
    np.testing.assert_array_equal(x, state.x[slot])


def test_jit_does_not_retrace():
  state = memory.init(K, M, HWC, C)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def push_fn(state, x, logits):
    return memory.push(state, x, logits)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample_fn(state, rng):
    return memory.sample(state, rng)

  for i in range(2 * K + 1):
    sample_fn(state, jax.random.key(i))
    state = push_fn(state, *_batch(i + 1.0))
  sample_fn(state, jax.random.key(123))
  assert int(state.num_pushed) == 2 * K + 1
  assert _slot_values(state) == [9.0, 6.0, 7.0, 8.0]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_storage_dtype_is_preserved(dtype):
  state = memory.init(K, M, HWC, C, dtype=dtype, logits_dtype=dtype)
  data_rng = np.random.default_rng(0)
  x = data_rng.normal(size=(M, *HWC)).astype(np.float32)
  logits = data_rng.normal(size=(M, C)).astype(np.float32)
  state = _push(state, x, logits)
  assert state.x.dtype == dtype and state.teacher_logits.dtype == dtype
  xs, ls, valid = _sample(state, jax.random.key(2))
  assert xs.dtype == dtype and ls.dtype == dtype and bool(valid)
  np.testing.assert_array_equal(xs, x.astype(dtype))
  np.testing.assert_array_equal(ls, logits.astype(dtype))


def test_push_stores_constants():
  """Gradients do not flow into the memory's contents."""
  state = memory.init(K, M, HWC, C)

  def f(x):
    new = memory.push(state, x, jnp.zeros((M, C)))
    return jnp.sum(memory.sample(new, jax.random.key(0))[0])

  g = jax.grad(f)(jnp.ones((M, *HWC)))
  np.testing.assert_array_equal(g, 0)


def test_per_device_slices_stay_consistent_under_vmap():
  """Stand-in for shard_map: a leading "device" axis, each device a slice of m.

  Each device pushes its own slice; with a shared rng, every device samples the same
  slot, so the concatenated slices equal the sample of an unsharded memory holding
  the global batches.
  """
  num_devices, m_local = 4, 2
  m_global = num_devices * m_local
  global_state = memory.init(K, m_global, HWC, C)
  local_state = jax.vmap(lambda _: memory.init(K, m_local, HWC, C))(
      jnp.arange(num_devices))
  push_local = jax.jit(jax.vmap(memory.push))
  sample_local = jax.jit(jax.vmap(memory.sample, in_axes=(0, None)))

  data_rng = np.random.default_rng(0)
  sample_keys = jax.random.split(jax.random.key(0), K + 3)
  for step in range(K + 3):
    ks = sample_keys[step]
    # Before each push (including the first, empty one) check consistency.
    x_loc, l_loc, valid_loc = sample_local(local_state, ks)
    x_glob, l_glob, valid_glob = _sample(global_state, ks)
    np.testing.assert_array_equal(valid_loc, np.full(num_devices, bool(valid_glob)))
    np.testing.assert_array_equal(x_loc.reshape(m_global, *HWC), x_glob)
    np.testing.assert_array_equal(l_loc.reshape(m_global, C), l_glob)
    if step > 0:
      assert bool(valid_glob)

    x = data_rng.normal(size=(m_global, *HWC)).astype(np.float32)
    logits = data_rng.normal(size=(m_global, C)).astype(np.float32)
    global_state = _push(global_state, x, logits)
    local_state = push_local(local_state, x.reshape(num_devices, m_local, *HWC),
                             logits.reshape(num_devices, m_local, C))
    np.testing.assert_array_equal(local_state.num_pushed,
                                  np.full(num_devices, step + 1))

  # Whole-memory equality after wrap-around.
  np.testing.assert_array_equal(
      jnp.moveaxis(local_state.x, 0, 1).reshape(K, m_global, *HWC), global_state.x)

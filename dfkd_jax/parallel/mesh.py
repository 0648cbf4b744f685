"""Data parallelism: the ``('data',)`` mesh and ``jax.shard_map`` over it.

The whole training iteration runs per device inside ``jax.shard_map`` (the documented
successor of ``jax.pmap``, with the same per-device programming model, and multi-host
ready), jitted once. Conventions:

* Parameters, optimiser states, RNG keys and counters are replicated (``P()``).
* Batches and replay memories are sharded along their sample axis over ``'data'``.
* Means over a batch are global: ``dfkd_jax.math.losses.batch_mean(..., 'data')`` and, for
  BatchNorm, :func:`dfkd_jax.models.layers.batch_stats_axis`. With ``check_vma=True``
  the gradient of a replicated parameter is then already the global batch's (shard_map
  sums the per-device contributions), so no ``pmean`` of gradients is taken, and a
  sharded run computes what one device computes on the whole batch.

Multi-process (:mod:`dfkd_jax.parallel.distributed`): the mesh spans every process's devices;
each process puts only its own devices' shards (:func:`put`, :func:`global_batch`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax import shard_map
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``('data',)`` mesh over ``devices`` (default: all global devices)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays whose leading axis is the batch."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(value: int, what: str, mesh: Mesh) -> None:
  """Raises ``ValueError`` unless ``value`` divides evenly over the mesh's devices."""
  n = mesh.devices.size
  if value % n:
    raise ValueError(f"{what}={value} must be divisible by the number of devices ({n}); "
                     f"use a multiple of {n}")


def shard(fn: Callable[..., Any], mesh: Mesh, in_specs, out_specs) -> Callable[..., Any]:
  """``jax.shard_map`` of ``fn`` over ``mesh`` with checked replication (``check_vma``)."""
  return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                   check_vma=True)


def shardings(mesh: Mesh, specs):
  """The ``NamedSharding`` pytree of the ``PartitionSpec`` pytree ``specs``."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, P))


def put(tree, mesh: Mesh, specs):
  """``device_put`` of ``tree`` with the ``PartitionSpec`` pytree ``specs``.

  ``tree`` must hold the same values on every process. With several processes it goes
  through host memory: ``device_put`` of an array already on one local device onto a
  mesh spanning other processes makes a malformed global array (jax 0.10.2: orbax then
  fails with "input arrays must have one shard each").
  """
  if jax.process_count() > 1:
    tree = jax.device_get(tree)
  return jax.device_put(tree, shardings(mesh, specs))


def replicate(tree, mesh: Mesh):
  """:func:`put` with every leaf replicated."""
  return put(tree, mesh, jax.tree.map(lambda _: P(), tree))


def global_batch(make_rows: Callable[[np.ndarray], tuple[np.ndarray, ...]],
                 batch_size: int, mesh: Mesh) -> tuple[jax.Array, ...]:
  """A batch sharded over ``'data'``, of which this process makes only its own rows.

  Args:
    make_rows: ``indices -> arrays`` whose leading axis holds those rows of the global
      batch (``indices`` in ``[0, batch_size)``); called once per distinct shard of
      this process's devices.
    batch_size: rows of the global batch (divisible by the mesh size).
    mesh: the ``('data',)`` mesh.

  Returns:
    Global arrays ``[batch_size, ...]``, one per array of ``make_rows``.
  """
  sharding = batch_sharded(mesh)
  pieces = {}
  for index in sharding.addressable_devices_indices_map((batch_size,)).values():
    rows = index[0].indices(batch_size)[:2]
    if rows not in pieces:
      pieces[rows] = make_rows(np.arange(*rows))
  some = next(iter(pieces.values()))

  def array(k):
    shape = (batch_size, *some[k].shape[1:])
    return jax.make_array_from_callback(
        shape, sharding, lambda index: pieces[index[0].indices(batch_size)[:2]][k])

  return tuple(array(k) for k in range(len(some)))

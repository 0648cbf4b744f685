"""The student's (and a teacher's) test accuracy on a real test split, on the mesh.

:func:`make_eval_step` is the jitted per-batch count of correct predictions (eval-mode
BatchNorm, optionally vmapped over replicas), :func:`accuracy` runs it over a whole
split with the batches sharded over the mesh. The metrics of an accuracy curve
(``Acc_max``, LRA's learning evolution) are in :mod:`dfkd_jax.metrics.curves`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax.data import datasets as data
from dfkd_jax.parallel import mesh as parallel

Array = chex.Array


def count_correct(logits: Array, labels: Array, mask: Array | None = None) -> Array:
  """Number of top-1 correct predictions, optionally over a mask. Jit-able.

  Args:
    logits: ``[..., C]`` predictions.
    labels: ``[...]`` integer class labels.
    mask: optional ``[...]`` bool (or 0/1) array; False entries (e.g. the padding of
      a final evaluation batch) are not counted.

  Returns:
    int32 scalar, the number of (unmasked) examples with ``argmax(logits) == label``.
  """
  chex.assert_equal_shape_prefix((logits, labels), labels.ndim)
  chex.assert_rank(logits, labels.ndim + 1)
  correct = jnp.argmax(logits, axis=-1) == labels
  if mask is not None:
    chex.assert_equal_shape((labels, mask))
    correct = jnp.logical_and(correct, mask.astype(jnp.bool_))
  return jnp.sum(correct, dtype=jnp.int32)


def make_eval_step(module, replicas: bool = False) -> Callable[..., Array]:
  """Jitted ``(variables, images, labels, mask) -> correct`` (eval-mode BatchNorm).

  With ``replicas``, ``variables`` has a leading replica axis and ``correct`` is ``[N]``:
  every replica is evaluated on the same batch in one call.
  """

  def correct(variables, images, labels, mask):
    logits = module.apply(variables, images, train=False)
    return count_correct(logits, labels, mask)

  if replicas:
    return jax.jit(jax.vmap(correct, in_axes=(0, None, None, None)))
  return jax.jit(correct)


def accuracy(eval_step, variables, split: data.ArraySplit, dataset_id: str, *,
             image_shape: Sequence[int], normalization, batch_size: int,
             mesh) -> float | list[float]:
  """Exact accuracy (%) on a whole split, batches sharded over the mesh (per replica
  for a ``make_eval_step(module, replicas=True)``: a list).

  Used by both trainers (the student every epoch, teachers after training). Every
  process holds the split but preprocesses and feeds only the rows of its own devices;
  the count of correct predictions is reduced over the whole mesh, so each process gets
  the accuracy one process would. The padded last batch is masked out.

  Args:
    eval_step: :func:`make_eval_step` of the classifier.
    variables: its ``{"params", "batch_stats"}``.
    split: the split's arrays (:func:`dfkd_jax.data.datasets.load_split`).
    dataset_id: the dataset (and preprocessing variant) id.
    image_shape: the classifier's input ``(H, W, C)``.
    normalization: ``(mean, std)`` per channel, or ``None`` for the dataset's.
    batch_size: global evaluation batch (divisible by the mesh size).
    mesh: the ``('data',)`` mesh.
  """
  correct = 0
  for start in range(0, len(split.labels), batch_size):
    def make_rows(rows, start=start):
      return tuple(data.eval_rows(split, dataset_id, start + rows,
                                  image_shape=image_shape, normalization=normalization))
    images, labels, mask = parallel.global_batch(make_rows, batch_size, mesh)
    correct = correct + np.asarray(jax.device_get(eval_step(variables, images, labels,
                                                            mask)), np.int64)
  percent = 100.0 * np.asarray(correct) / len(split.labels)
  return float(percent) if percent.ndim == 0 else [float(p) for p in percent]

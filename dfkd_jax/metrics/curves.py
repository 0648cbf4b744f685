"""Evaluation metrics of the student's learning evolution (LRA Sec. 4.1, Table 1).

LRA (Patel et al., CVPR 2023) evaluates a DFKD run not only by the best test accuracy
``Acc_max`` but by the *learning evolution*: the mean ``mu[S_Acc]`` and variance
``sigma^2[S_Acc]`` of the student's per-epoch test accuracy over the epochs above the
0th, 20th, 40th, 60th and 80th epoch percentile (Table 1, after Binici et al.,
PRE-DFKD), and the cumulative mean accuracy curve (Fig. 4, bottom row).

Definitions used here (accuracies are whatever unit the caller passes; the trainer
passes percent, as in Table 1, so variances are in percent squared):

* Epochs are numbered ``e = 1 .. E`` and ``test_accuracy[e - 1]`` is the accuracy
  after epoch ``e``. Following Sec. 4.1 ("all the epochs greater than the n/100-th of
  the total number of training epochs"), the epochs *above the n-th percentile* are
  those with ``e > n * E / 100``, i.e. the slice
  ``test_accuracy[floor(n * E / 100):]``. The 0th percentile is the whole run; for
  ``E = 200`` the 80th percentile is epochs 161..200. For ``0 <= n < 100`` the slice
  always holds at least the last epoch, so short runs never give an empty set.
* The variance is the population variance (``ddof = 0``, NumPy's default), so a
  single epoch has variance 0 rather than NaN.
* The cumulative mean after epoch ``e`` is the mean of epochs ``1..e``, as logged by
  the official LRA code (``AverageMeter.avg`` as ``Epoch/Cumulative_Accuracy``).

Neither the official LRA code nor the official PRE-DFKD code ships the percentile
computation, so the definition follows the text of LRA Sec. 4.1.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Epoch percentiles of LRA Table 1.
DEFAULT_PERCENTILES: tuple[int, ...] = (0, 20, 40, 60, 80)


def _as_accuracies(test_accuracy: Sequence[float] | np.ndarray) -> np.ndarray:
  """Validates a per-epoch accuracy curve and returns it as float64 ``[E]``."""
  acc = np.asarray(test_accuracy, dtype=np.float64)
  if acc.ndim != 1:
    raise ValueError(f"test_accuracy must be 1-D (one value per epoch), got shape "
                     f"{acc.shape}.")
  if acc.size == 0:
    raise ValueError("test_accuracy is empty: evaluate at least one epoch.")
  if not np.all(np.isfinite(acc)):
    raise ValueError(f"test_accuracy has non-finite values: {acc.tolist()}.")
  return acc


def percentile_start(num_epochs: int, percentile: int) -> int:
  """First 0-based index of the epochs above the ``percentile``-th epoch percentile.

  Epoch ``e`` (1-based) is above the n-th percentile iff ``e > n * E / 100``, i.e. iff
  its index ``e - 1 >= floor(n * E / 100)`` (LRA Sec. 4.1). Exact integer arithmetic.

  Args:
    num_epochs: ``E >= 1``.
    percentile: integer ``n`` in ``[0, 100)``.

  Returns:
    ``floor(n * E / 100)``, in ``[0, E - 1]``.
  """
  if isinstance(percentile, bool) or not isinstance(percentile, (int, np.integer)):
    raise TypeError(f"percentile must be an int, got {percentile!r}.")
  if not 0 <= percentile < 100:
    raise ValueError(f"percentile must be in [0, 100), got {percentile}.")
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}.")
  return (int(percentile) * int(num_epochs)) // 100


def learning_evolution(
    test_accuracy: Sequence[float] | np.ndarray,
    percentiles: Sequence[int] = DEFAULT_PERCENTILES,
) -> dict[str, dict[str, float]]:
  """Mean and variance of the accuracy over the epochs above each epoch percentile.

  The ``mu[S_Acc]`` / ``sigma^2[S_Acc]`` columns of LRA Table 1 (Sec. 4.1); see the
  module docstring for the exact definition. Short runs are well defined: with
  ``E = 1`` every percentile is that one epoch (variance 0); with ``E = 3`` the
  0th/20th percentiles cover epochs 1-3, the 40th/60th epochs 2-3 and the 80th
  epoch 3.

  Args:
    test_accuracy: ``[E]`` per-epoch test accuracy, ``E >= 1``, all finite.
    percentiles: integer percentiles in ``[0, 100)``; Table 1 uses 0, 20, 40, 60, 80.

  Returns:
    ``{str(n): {"mean": float, "var": float}}`` in the order of ``percentiles``.

  Raises:
    ValueError: on an empty, non-1-D or non-finite curve, or a percentile outside
      ``[0, 100)``.
    TypeError: on a non-integer percentile.
  """
  acc = _as_accuracies(test_accuracy)
  out = {}
  for n in percentiles:
    tail = acc[percentile_start(acc.size, n):]
    out[str(int(n))] = {"mean": float(np.mean(tail)), "var": float(np.var(tail))}
  return out


def cumulative_mean_accuracy(test_accuracy: Sequence[float] | np.ndarray) -> list[float]:
  """Running mean of the accuracy, ``c_e = mean(acc_1..acc_e)`` (LRA Fig. 4, bottom).

  Args:
    test_accuracy: ``[E]`` per-epoch test accuracy (may be empty).

  Returns:
    ``E`` floats; ``[]`` for an empty curve.
  """
  acc = np.asarray(test_accuracy, dtype=np.float64).reshape(-1)
  if acc.size == 0:
    return []
  return (np.cumsum(acc) / np.arange(1, acc.size + 1)).tolist()


def acc_max(test_accuracy: Sequence[float] | np.ndarray) -> float:
  """Best test accuracy over the run, ``Acc_max`` (last column of LRA Table 1).

  Args:
    test_accuracy: ``[E]`` per-epoch test accuracy, ``E >= 1``, all finite.

  Returns:
    ``max_e acc_e``.
  """
  return float(np.max(_as_accuracies(test_accuracy)))


def summarize(
    test_accuracy: Sequence[float] | np.ndarray,
    percentiles: Sequence[int] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
  """The metric fields of a run's ``summary.json`` (JSON-serialisable, no NaN).

  Args:
    test_accuracy: ``[E]`` per-epoch test accuracy, ``E >= 1``, all finite (percent
      to match LRA Table 1).
    percentiles: epoch percentiles for :func:`learning_evolution`.

  Returns:
    ``{"test_accuracy": [E floats], "acc_max": float, "learning_evolution":
    {str(n): {"mean", "var"}}, "cumulative_mean_accuracy": [E floats]}``. The trainer
    adds the run's metadata (method, dataset, ...).
  """
  acc = _as_accuracies(test_accuracy)
  return {
      "test_accuracy": acc.tolist(),
      "acc_max": acc_max(acc),
      "learning_evolution": learning_evolution(acc, percentiles),
      "cumulative_mean_accuracy": cumulative_mean_accuracy(acc),
  }

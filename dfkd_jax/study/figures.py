"""The report's figures in the style of LRA Fig. 4: a curve per run and the mean over a
method's runs, per epoch; and the time to accuracy's step curves against cost
(matplotlib, imported on first use)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Mapping, Sequence

import numpy as np

from dfkd_jax.study import study_runs


def curve_stats(curves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Per-epoch mean and sample std (0 for one curve) over the common epochs.

  NaN entries (epochs without a value) are ignored; an epoch no curve has is NaN.
  """
  length = min(c.size for c in curves)
  stacked = np.stack([c[:length] for c in curves])
  valid = (~np.isnan(stacked)).sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    total = np.nansum(stacked, axis=0)
    mean = np.where(valid > 0, total / np.maximum(valid, 1), np.nan)
    sq = np.nansum((stacked - mean) ** 2, axis=0)
    std = np.where(valid > 1, np.sqrt(sq / np.maximum(valid - 1, 1)), 0.0)
  return mean, np.where(valid > 0, std, np.nan)


def line_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
  """A distinct ``(colour, line style)`` per method, the same in every figure.

  Matplotlib's cycle has 10 colours; the 11th method on (all of Table 1 has 11) reuses
  them dashed, then dotted, then dash-dotted.
  """
  return {m: (f"C{i % 10}", ("-", "--", ":", "-.")[i // 10 % 4])
          for i, m in enumerate(methods)}


def curve_figure(by_method: Mapping[str, Sequence[study_runs.Run]], curve_of, title: str,
                 ylabel: str, teacher_accuracy: float | None = None):
  """A figure of one curve per run (thin) and the mean over a method's runs (markers).

  Args:
    teacher_accuracy: drawn as a dashed black horizontal line labelled with it (the
      accuracy figures); ``None``: no line.

  Returns:
    The matplotlib figure, or ``None`` when no run has the curve. Epoch ticks are
    integers and every point has a marker, so a one-epoch run shows as a dot.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  styles = line_styles(list(by_method))
  series = {}
  for method, runs in by_method.items():
    curves = [c for c in (curve_of(r) for r in runs) if c is not None]
    if curves and not all(np.all(np.isnan(c)) for c in curves):
      series[method] = (curves, curve_stats(curves)[0])
  if not series:
    return None
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
  for method, (curves, mean) in series.items():
    color, linestyle = styles[method]
    if len(curves) > 1:
      for curve in curves:
        ax.plot(np.arange(1, curve.size + 1), curve, color=color, linestyle=linestyle,
                linewidth=0.6, alpha=0.35, marker=".", markersize=2)
    ax.plot(np.arange(1, mean.size + 1), mean, label=method, color=color,
            linestyle=linestyle, linewidth=1.5, marker="o", markersize=3)
  if teacher_accuracy is not None:
    ax.axhline(teacher_accuracy, color="black", linestyle="--", linewidth=1.0,
               label=f"teacher ({teacher_accuracy:.2f}%)")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="small")
  fig.tight_layout()
  return fig


def plot_curves(by_method: Mapping[str, Sequence[study_runs.Run]], curve_of, title: str,
                 ylabel: str, path: pathlib.Path,
                 teacher_accuracy: float | None = None) -> bool:
  """Writes :func:`curve_figure` as a PNG to ``path``; False if nothing to plot."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig = curve_figure(by_method, curve_of, title, ylabel, teacher_accuracy)
  if fig is None:
    return False
  fig.savefig(path, format="png")
  plt.close(fig)
  return True


@dataclasses.dataclass(frozen=True)
class StepMean:
  """Step curves on a common grid ``x``: their mean and a band from ``low`` to ``high``
  (:func:`dfkd_jax.study.time_to_accuracy.step_mean`)."""

  x: np.ndarray
  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray


#: One panel of :func:`step_figure`: its x label and, per method, the per-seed curves
#: ``(x, y)`` and their :class:`StepMean` (``None``: the seeds share no x).
Panel = tuple[str, Mapping[str, tuple[Sequence[tuple[np.ndarray, np.ndarray]],
                                      StepMean | None]]]


def step_figure(panels: Sequence[Panel], title: str, band: str,
                teacher_accuracy: float | None = None, marks: Sequence[float] = (),
                marks_label: str = ""):
  """Panels side by side of accuracy as step curves (a value holds until the next
  point): per seed a thin line, per method the mean with markers and a shaded band
  (``band`` names it in the legend); the teacher's accuracy dashed; ``marks`` dotted
  vertical lines in the first panel (``marks_label`` in the legend)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  styles = line_styles(list(panels[0][1]))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.4), dpi=120,
                           squeeze=False)
  for ax, (xlabel, series) in zip(axes[0], panels):
    for method, (curves, mean) in series.items():
      color, linestyle = styles[method]
      label = f"{method} (n={len(curves)})"
      for i, (x, y) in enumerate(curves):  # Labelled here when there is no mean.
        ax.step(x, y, where="post", color=color, linestyle=linestyle, linewidth=0.6,
                alpha=0.35, marker=".", markersize=2,
                label=label if mean is None and i == 0 else None)
      if mean is not None:
        ax.fill_between(mean.x, mean.low, mean.high, step="post", color=color,
                        alpha=0.15, linewidth=0)
        ax.step(mean.x, mean.mean, where="post", color=color, linestyle=linestyle,
                linewidth=1.5, marker="o", markersize=3, label=label)
    if teacher_accuracy is not None:
      ax.axhline(teacher_accuracy, color="black", linestyle="--", linewidth=1.0,
                 label=f"teacher ({teacher_accuracy:.2f}%)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  for i, mark in enumerate(marks):
    axes[0][0].axvline(mark, color="grey", linestyle=":", linewidth=0.9,
                       label=marks_label if i == 0 else None)
  handles, labels = axes[0][0].get_legend_handles_labels()
  handles.append(patches.Patch(color="grey", alpha=0.3))
  labels.append(f"band: {band}")
  axes[0][0].legend(handles, labels, loc="best", fontsize="small")
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def file_stem(dataset: str) -> str:
  """The start of a dataset's figure file names: the id itself for a named dataset
  (``mnist``), ``KIND_NAME`` for a file dataset (``folder:/data/cifar10_jpeg`` ->
  ``folder_cifar10_jpeg``), other characters than letters, digits, ``.``, ``-`` and
  ``_`` as ``_``."""
  kind, sep, path = dataset.partition(":")
  stem = f"{kind}_{pathlib.PurePath(path.rstrip('/')).name}" if sep else dataset
  return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def save(fig, path: pathlib.Path) -> None:
  """Writes ``fig`` as a PNG to ``path`` and closes it."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.savefig(path, format="png")
  plt.close(fig)

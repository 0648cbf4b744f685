r"""Tables and figures of DFKD runs from their ``summary.json`` files (LRA Table 1, Fig. 4).

  python -m dfkd_jax.report runs/mnist --out docs/results/mnist [--pairs=lra_mb:mb_dfkd]
      [--interval=t|bootstrap]

reads every ``summary.json`` under the given run directories (a directory holding one
is a run; any other directory is searched recursively; ``LABEL=DIR`` names the runs
under ``DIR`` ``LABEL`` instead of their method, e.g. an ablation
``lra_mb_first_order=runs/ablations/first_order`` with ``--pairs=lra_mb_first_order:lra_mb``)
and writes to ``--out``:

* ``table1.md`` / ``table1.csv``: LRA Table 1's layout, one row per method: the mean
  ``mu[S_Acc]`` and variance ``sigma^2[S_Acc]`` of the test accuracy over the epochs
  above the 0/20/40/60/80th epoch percentile (:mod:`dfkd_jax.evaluation`) and
  ``Acc_max``. The "Runs (seeds)" column gives the number of runs and their seeds
  (``1 (seed 0)``, ``8 (seeds 0-7)``). When several runs (seeds) share a method, each
  cell is the mean ± the sample standard deviation (``ddof=1``) of the runs' values; a
  single run shows its value alone.
* ``paired.md`` / ``paired.csv`` (:mod:`dfkd_jax.paired_stats`), written only when at
  least one pair of methods shares >= 2 seeds on a dataset: for each pair ``A:B``
  (``--pairs=A:B,C:D``; default :data:`dfkd_jax.paired_stats.DEFAULT_PAIRS`: each meta
  method vs its joint-update control and every replay method vs ``dfkd``) the mean over
  the shared seeds of ``A - B`` of every Table 1 column, its 95% t interval
  (``--interval=bootstrap``: percentile bootstrap), the paired t-test p, its
  Holm-adjusted p over every cell of the report (the p that marks a cell significant at
  < 0.05), the Wilcoxon signed-rank p and, for cells not marked, the minimum detectable
  difference at 80% power. Seeds only one of the two methods has are ignored; the table
  states n and the seeds, and warns when n < 5.
* PNG figures in the style of LRA Fig. 4: ``<dataset>_test_accuracy.png`` (test accuracy
  per epoch) and ``<dataset>_cumulative_mean_accuracy.png`` (its running mean): per
  method a thin line per run (seed) and a thick line with markers for the mean over
  seeds (so a one-epoch run shows as a dot), the teacher's test accuracy as a dashed
  black line, integer epoch ticks; and
  ``<dataset>_alignment.png``, the per-epoch cosine between the acquisition and retention
  gradients (Section 3.4) of the methods that log it.
* Runs that record a data-free selection (:mod:`dfkd_jax.selection`): ``Acc_sel`` and
  ``Acc_last`` beside ``Acc_max`` in Table 1 (and in ``paired.md`` as paired columns),
  and per method and criterion its regret ``Acc_max - Acc_sel`` and its Spearman rank
  correlation with the test accuracy over the epochs, averaged over runs
  (:mod:`dfkd_jax.selection_report`; ``selection.csv``).

Runs of different datasets get separate tables and figures. Curves of runs of one method
with different lengths (e.g. a run still in progress) are averaged over the epochs they
all have; the table states every run's epoch count.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import pathlib
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from dfkd_jax import paired_stats
from dfkd_jax import selection_report
from dfkd_jax import summary as summary_lib

SUMMARY_FILE = summary_lib.SUMMARY_FILE
TABLE_MARKDOWN = "table1.md"
TABLE_CSV = "table1.csv"
PAIRED_MARKDOWN = "paired.md"
PAIRED_CSV = "paired.csv"
SELECTION_CSV = "selection.csv"
#: Row order of the table and legend order of the figures (LRA Table 1 order, then the
#: rest of the presets); methods not listed follow in alphabetical order.
METHOD_ORDER = ("dafl", "dfad", "zskt", "dfq", "dfkd", "mb_dfkd", "pre_dfkd", "mad",
                "ema_dfkd", "lra_mb", "lra_pre", "lra_ema")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run's ``summary.json``, validated.

  Attributes:
    path: the ``summary.json`` file.
    method: method name (any string; the report does not restrict it).
    dataset: dataset the student was evaluated on.
    seed: the run's seed.
    test_accuracy: ``[E]`` per-epoch test accuracy (%).
    cumulative_mean_accuracy: ``[E]`` running mean of ``test_accuracy``.
    learning_evolution: ``{percentile: (mean, var)}``, percentiles as ints.
    acc_max: best test accuracy (%).
    alignment: ``[E]`` per-epoch gradient cosine (NaN where not logged), or ``None``.
    teacher_accuracy: the teacher's test accuracy (%), or ``None``.
    student_steps_per_second: training throughput, or ``None``.
    selected_accuracy: the test accuracy (%) of the epoch the run's data-free
      criterion kept (``Acc_sel``), or ``None`` for runs made before selection.
    criterion: that criterion, or ``None``.
    criteria: per criterion its per-epoch values (NaN where not measured).
    collapsed: why the run is collapsed, or ``None``.
  """

  path: pathlib.Path
  method: str
  dataset: str
  seed: int
  test_accuracy: np.ndarray
  cumulative_mean_accuracy: np.ndarray
  learning_evolution: dict[int, tuple[float, float]]
  acc_max: float
  alignment: np.ndarray | None
  teacher_accuracy: float | None
  student_steps_per_second: float | None
  selected_accuracy: float | None = None
  criterion: str | None = None
  criteria: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  collapsed: str | None = None

  @property
  def num_epochs(self) -> int:
    return int(self.test_accuracy.size)

  @property
  def acc_last(self) -> float:
    """The last epoch's test accuracy (``Acc_last``)."""
    return float(self.test_accuracy[-1])


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


def find_summaries(workdirs: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
  """The ``summary.json`` files of ``workdirs``, in a stable order, without duplicates.

  A directory that holds ``summary.json`` is one run; any other directory is searched
  recursively; a path to a ``summary.json`` file is taken as it is.

  Raises:
    FileNotFoundError: a path does not exist or holds no ``summary.json``.
  """
  found: dict[pathlib.Path, None] = {}
  for workdir in workdirs:
    path = pathlib.Path(workdir)
    if path.is_file() and path.name == SUMMARY_FILE:
      paths = [path]
    elif path.is_dir():
      paths = ([path / SUMMARY_FILE] if (path / SUMMARY_FILE).is_file()
               else sorted(path.rglob(SUMMARY_FILE)))
    elif path.exists():
      raise FileNotFoundError(f"{path} is neither a run directory nor a {SUMMARY_FILE} "
                              "file")
    else:
      raise FileNotFoundError(f"run directory {path} does not exist")
    if not paths:
      raise FileNotFoundError(f"no {SUMMARY_FILE} in {path} or below it; pass the "
                              "--workdir of finished `python -m dfkd_jax.train` runs")
    for p in paths:
      found.setdefault(p.resolve(), None)
  return list(found)


def parse_summary(data: Any, path: str | os.PathLike) -> Run:
  """Validates one decoded ``summary.json`` (:class:`~dfkd_jax.summary.Summary`) as a run.

  Raises:
    ValueError: a missing or malformed field, or no finished epoch, naming ``path``.
  """
  return _run(summary_lib.Summary.from_json(data, path), path)


def load_summary(path: str | os.PathLike) -> Run:
  """Reads and validates one ``summary.json``.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not JSON, or not the trainer's contract; the message names the path.
  """
  return _run(summary_lib.Summary.load(path), path)


def _run(summary: summary_lib.Summary, path) -> Run:
  if not summary.test_accuracy:
    raise ValueError(f"{path}: test_accuracy is empty (no epoch finished yet)")
  alignment = summary.alignment
  return Run(path=pathlib.Path(path), method=summary.method, dataset=summary.dataset,
             seed=summary.seed,
             test_accuracy=np.asarray(summary.test_accuracy, np.float64),
             cumulative_mean_accuracy=np.asarray(summary.cumulative_mean_accuracy,
                                                 np.float64),
             learning_evolution=summary.learning_evolution, acc_max=summary.acc_max,
             alignment=None if alignment is None else np.array(
                 [np.nan if a is None else a for a in alignment], np.float64),
             teacher_accuracy=summary.teacher_accuracy,
             student_steps_per_second=summary.student_steps_per_second,
             selected_accuracy=summary.selected_accuracy, criterion=summary.criterion,
             criteria={k: np.array([np.nan if v is None else v for v in values],
                                   np.float64)
                       for k, values in summary.criteria.items()},
             collapsed=summary.collapsed)


_LABEL = re.compile(r"^([A-Za-z][A-Za-z0-9_.+-]*)=(.+)$")


def split_label(workdir: str | os.PathLike) -> tuple[str | None, str | os.PathLike]:
  """``"LABEL=PATH"`` -> ``(LABEL, PATH)``; anything else (or an existing path that
  holds a ``=``) -> ``(None, workdir)``.

  A label names the runs under ``PATH`` in the tables instead of their method, so that
  an ablation of one method (e.g. ``lra_mb`` with ``meta_first_order``) gets its own
  row and can be paired with the method: ``lra_mb_fo=runs/ablation/first_order``.
  """
  m = _LABEL.match(str(workdir))
  if m is None or pathlib.Path(workdir).exists():
    return None, workdir
  return m.group(1), m.group(2)


def load_runs(workdirs: Iterable[str | os.PathLike],
              log: Callable[[str], None] = print) -> list[Run]:
  """Every run under ``workdirs`` (see :func:`find_summaries`); a ``LABEL=PATH`` entry
  names its runs ``LABEL`` instead of their method (:func:`split_label`).

  A replica marked ``failed`` (its loss became NaN/Inf, docs/contracts.md) is left out
  of the tables, with a line naming it and why: its curve stops early.

  Raises:
    FileNotFoundError, ValueError: as :func:`find_summaries` and :func:`load_summary`;
      also two runs of the same dataset, method and seed (naming both paths).
  """
  runs, loaded = [], set()
  for workdir in workdirs:
    label, workdir = split_label(workdir)
    for path in find_summaries([workdir]):
      if path in loaded:
        continue
      loaded.add(path)
      summary = summary_lib.Summary.load(path)
      if summary.failed is not None:
        log(f"left out {path}: the run failed ({summary.failed}) after "
            f"{summary.epochs_completed} epoch(s)")
        continue
      run = _run(summary, path)
      runs.append(run if label is None else dataclasses.replace(run, method=label))
  seen: dict[tuple[str, str, int], pathlib.Path] = {}
  for run in runs:
    key = (run.dataset, run.method, run.seed)
    if key in seen:
      raise ValueError(f"two runs of method {run.method!r} on {run.dataset!r} with seed "
                       f"{run.seed}: {seen[key]} and {run.path}; pass only one of them")
    seen[key] = run.path
  return runs


# ---------------------------------------------------------------------------
# Grouping and aggregation (pure).
# ---------------------------------------------------------------------------


def method_sort_key(method: str) -> tuple[int, str]:
  """Position of ``method`` in :data:`METHOD_ORDER`; unknown names after, by name."""
  if method in METHOD_ORDER:
    return (METHOD_ORDER.index(method), "")
  return (len(METHOD_ORDER), method)


def group_runs(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
  """``{dataset: {method: [runs by seed]}}``, methods in table order."""
  out: dict[str, dict[str, list[Run]]] = {}
  for run in runs:
    out.setdefault(run.dataset, {}).setdefault(run.method, []).append(run)
  return {dataset: {m: sorted(by_method[m], key=lambda r: r.seed)
                    for m in sorted(by_method, key=method_sort_key)}
          for dataset, by_method in sorted(out.items())}


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean and sample standard deviation over runs (``std`` is None for one run)."""

  mean: float
  std: float | None
  n: int


def mean_std(values: Sequence[float]) -> Stat:
  """Mean and sample standard deviation (``ddof=1``) of ``values`` (non-empty)."""
  v = np.asarray(values, dtype=np.float64)
  if v.size == 0:
    raise ValueError("mean_std of no values")
  return Stat(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None, int(v.size))


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of Table 1: a method's statistics over its runs."""

  method: str
  seeds: tuple[int, ...]
  epochs: tuple[int, ...]
  evolution: dict[int, tuple[Stat, Stat]]   # percentile -> (mean, var) statistics.
  acc_max: Stat
  teacher_accuracy: Stat | None
  student_steps_per_second: Stat | None
  acc_sel: Stat | None = None     # Over the runs that record a selection.
  acc_last: Stat | None = None    # Shown beside Acc_sel.


def _optional_stat(values) -> Stat | None:
  values = [v for v in values if v is not None]
  return mean_std(values) if values else None


def table_row(method: str, runs: Sequence[Run]) -> Row:
  """Aggregates one method's runs (mean ± std over seeds).

  Raises:
    ValueError: the runs do not share the same learning-evolution percentiles.
  """
  percentiles = list(runs[0].learning_evolution)
  for run in runs[1:]:
    if list(run.learning_evolution) != percentiles:
      raise ValueError(f"runs of {method!r} have different learning_evolution "
                       f"percentiles: {runs[0].path} has {percentiles}, {run.path} has "
                       f"{list(run.learning_evolution)}")
  evolution = {p: (mean_std([r.learning_evolution[p][0] for r in runs]),
                   mean_std([r.learning_evolution[p][1] for r in runs]))
               for p in percentiles}
  return Row(method=method, seeds=tuple(r.seed for r in runs),
             epochs=tuple(r.num_epochs for r in runs), evolution=evolution,
             acc_max=mean_std([r.acc_max for r in runs]),
             teacher_accuracy=_optional_stat(r.teacher_accuracy for r in runs),
             student_steps_per_second=_optional_stat(
                 r.student_steps_per_second for r in runs),
             acc_sel=_optional_stat(r.selected_accuracy for r in runs),
             acc_last=_optional_stat(r.acc_last for r in runs
                                     if r.selected_accuracy is not None))


def table_rows(by_method: Mapping[str, Sequence[Run]]) -> list[Row]:
  """Table 1 of one dataset.

  Raises:
    ValueError: methods with different learning-evolution percentiles.
  """
  rows = [table_row(m, runs) for m, runs in by_method.items()]
  for row in rows[1:]:
    if list(row.evolution) != list(rows[0].evolution):
      raise ValueError(f"methods {rows[0].method!r} and {row.method!r} have different "
                       f"learning_evolution percentiles ({list(rows[0].evolution)} vs "
                       f"{list(row.evolution)})")
  return rows


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


# ---------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------


def format_stat(stat: Stat | None, digits: int = 2) -> str:
  """``"m ± s"`` (or ``"m"`` for one run, ``"-"`` for none)."""
  if stat is None:
    return "-"
  if stat.std is None:
    return f"{stat.mean:.{digits}f}"
  return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def seeds_text(seeds: Sequence[int]) -> str:
  """The "Runs (seeds)" cell: the count, then the seeds, consecutive ones as ranges.

  ``(0,)`` -> ``"1 (seed 0)"``; ``(0, 1, 2, 5)`` -> ``"4 (seeds 0-2, 5)"``.
  """
  seeds = sorted(seeds)
  parts, start = [], 0
  for i in range(1, len(seeds) + 1):
    if i == len(seeds) or seeds[i] != seeds[i - 1] + 1:
      first, last = seeds[start], seeds[i - 1]
      parts += ([f"{first}-{last}"] if last - first >= 2 else
                [str(s) for s in seeds[start:i]])
      start = i
  return f"{len(seeds)} ({'seed' if len(seeds) == 1 else 'seeds'} {', '.join(parts)})"


def _epochs_text(epochs: Sequence[int]) -> str:
  lo, hi = min(epochs), max(epochs)
  return str(lo) if lo == hi else f"{lo}-{hi}"


def markdown_table(rows: Sequence[Row]) -> str:
  """Table 1 as a Markdown table (mean ± std over seeds in each cell)."""
  percentiles = list(rows[0].evolution)
  header = ["Method", "Runs (seeds)", "Epochs"]
  for p in percentiles:
    header += [f"μ[S_Acc] >{p}th", f"σ²[S_Acc] >{p}th"]
  selected = any(row.acc_sel is not None for row in rows)
  header += ["Acc_max"] + (["Acc_sel", "Acc_last"] if selected else []) + [
      "Student steps/s"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row.method, seeds_text(row.seeds), _epochs_text(row.epochs)]
    for p in percentiles:
      cells += [format_stat(row.evolution[p][0]), format_stat(row.evolution[p][1])]
    cells += [format_stat(row.acc_max)]
    if selected:
      cells += [format_stat(row.acc_sel), format_stat(row.acc_last)]
    cells += [format_stat(row.student_steps_per_second, 1)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def csv_records(dataset: str, rows: Sequence[Row]) -> list[dict[str, Any]]:
  """One flat record per row: ``<column>_mean`` / ``<column>_std`` (std empty for n=1)."""
  records = []
  for row in rows:
    rec: dict[str, Any] = {"dataset": dataset, "method": row.method,
                           "runs": len(row.seeds),
                           "seeds": " ".join(map(str, row.seeds)),
                           "epochs": " ".join(map(str, row.epochs))}

    def put(name, stat):
      rec[f"{name}_mean"] = "" if stat is None else stat.mean
      rec[f"{name}_std"] = "" if stat is None or stat.std is None else stat.std

    for p, (m, v) in row.evolution.items():
      put(f"mean_above_p{p}", m)
      put(f"var_above_p{p}", v)
    put("acc_max", row.acc_max)
    if row.acc_sel is not None:
      put("acc_sel", row.acc_sel)
      put("acc_last", row.acc_last)
    put("teacher_accuracy", row.teacher_accuracy)
    put("student_steps_per_second", row.student_steps_per_second)
    records.append(rec)
  return records


def line_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
  """A distinct ``(colour, line style)`` per method, the same in every figure.

  Matplotlib's cycle has 10 colours; the 11th method on (all of Table 1 has 11) reuses
  them dashed, then dotted, then dash-dotted.
  """
  return {m: (f"C{i % 10}", ("-", "--", ":", "-.")[i // 10 % 4])
          for i, m in enumerate(methods)}


def curve_figure(by_method: Mapping[str, Sequence[Run]], curve_of, title: str,
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


def _plot_curves(by_method: Mapping[str, Sequence[Run]], curve_of, title: str,
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


def _shown(path: pathlib.Path) -> str:
  """``path`` relative to the working directory when it lies below it."""
  try:
    return str(path.relative_to(pathlib.Path.cwd().resolve()))
  except ValueError:
    return str(path)


def _write_csv(path: pathlib.Path, records: Sequence[Mapping[str, Any]]) -> None:
  fields = list(dict.fromkeys(k for rec in records for k in rec))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(records)


def write_paired(grouped: Mapping[str, Mapping[str, Sequence[Run]]],
                 pairs: Sequence[tuple[str, str]],
                 out: pathlib.Path, interval: str = "t") -> list[pathlib.Path]:
  """Writes ``paired.md`` / ``paired.csv`` (:mod:`dfkd_jax.paired_stats`).

  Every cell written (all datasets, pairs and columns) is one family for Holm's
  correction (:func:`dfkd_jax.paired_stats.adjust`).

  Returns:
    The written paths; none (and nothing written) when no pair shares 2 seeds.
  """
  found, skipped = [], {}
  for dataset, by_method in grouped.items():
    for a, b in pairs:
      comparison = paired_stats.compare(by_method, a, b, interval)
      if comparison is not None:
        found.append((dataset, comparison))
      elif a in by_method and b in by_method:
        skipped.setdefault(dataset, []).append(f"{a} − {b}")
  if not found:
    return []
  adjusted = paired_stats.adjust([comparison for _, comparison in found])
  md = ["# Paired differences between methods", "",
        paired_stats.description(paired_stats.family_size(adjusted), interval), ""]
  records = []
  for dataset in grouped:
    comparisons = [c for (d, _), c in zip(found, adjusted) if d == dataset]
    if not comparisons:
      continue
    md += [f"## {dataset}", ""]
    for comparison in comparisons:
      md.append(paired_stats.markdown(comparison))
      records += paired_stats.csv_records(dataset, comparison)
    if dataset in skipped:
      md += [f"Fewer than {paired_stats.MIN_SHARED_SEEDS} shared seeds (not compared): "
             f"{', '.join(skipped[dataset])}.", ""]
  md_path, csv_path = out / PAIRED_MARKDOWN, out / PAIRED_CSV
  md_path.write_text("\n".join(md))
  _write_csv(csv_path, records)
  return [md_path, csv_path]


def write_report(workdirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                 pairs: Sequence[tuple[str, str]] | None = None,
                 interval: str = "t") -> dict[str, Any]:
  """Loads the runs under ``workdirs`` and writes the tables and figures to ``out_dir``.

  Args:
    workdirs: run directories (see :func:`find_summaries`).
    out_dir: output directory (created).
    pairs: ``(A, B)`` methods whose paired differences ``A - B`` go to ``paired.md``;
      ``None``: :data:`dfkd_jax.paired_stats.DEFAULT_PAIRS` (those without runs are
      skipped), while every method of given pairs must have runs.
    interval: the paired differences' interval, ``"t"`` or ``"bootstrap"``
      (:func:`dfkd_jax.paired_stats.paired_difference`).

  Returns:
    ``{"runs": [...], "files": [written paths]}``.

  Raises:
    FileNotFoundError, ValueError: as :func:`load_runs`, or a method of ``pairs`` that no
      run has, before anything is written.
  """
  if interval not in paired_stats.INTERVALS:
    raise ValueError(f"unknown interval {interval!r}; valid: "
                     f"{', '.join(paired_stats.INTERVALS)}")
  runs = load_runs(workdirs)
  if pairs is None:
    pairs = paired_stats.DEFAULT_PAIRS
  else:
    known = {r.method for r in runs}
    unknown = sorted({m for pair in pairs for m in pair} - known)
    if unknown:
      raise ValueError(f"--pairs names method(s) {unknown} that no run has; the runs' "
                       f"methods are {sorted(known, key=method_sort_key)}")
  grouped = group_runs(runs)
  tables = {dataset: table_rows(by_method) for dataset, by_method in grouped.items()}
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = []

  md = ["# Results (LRA Table 1 layout)", "",
        "Each cell is the mean ± the sample standard deviation over the runs (seeds) of "
        "a method; μ[S_Acc] >nth / σ²[S_Acc] >nth are the mean / variance (%, %²) of "
        "the per-epoch test accuracy over the epochs above the nth epoch percentile; "
        "Acc_max is the best epoch's accuracy; Acc_sel (runs that record a data-free "
        "selection) the accuracy of the epoch their criterion kept without labels, "
        "Acc_last the last epoch's.", ""]
  records, selection_records = [], []
  for dataset, rows in tables.items():
    by_method = grouped[dataset]
    md += [f"## {dataset}", ""]
    teacher = _optional_stat(r.teacher_accuracy for rs in by_method.values() for r in rs)
    if teacher is not None:
      md += [f"Teacher test accuracy: {format_stat(teacher)}%.", ""]
    md += [markdown_table(rows)]
    uneven = [row.method for row in rows if len(set(row.epochs)) > 1]
    if uneven:
      md += [f"Runs of {', '.join(uneven)} have different epoch counts; their curves "
             "are averaged over the epochs all runs have.", ""]
    records += csv_records(dataset, rows)
    choice = selection_report.rows(by_method)
    if choice:
      md += [selection_report.markdown(choice), ""]
      selection_records += selection_report.csv_records(dataset, choice)
    teacher_mean = None if teacher is None else teacher.mean
    figures = [
        ("test_accuracy", lambda r: r.test_accuracy, "Test accuracy", "accuracy (%)",
         teacher_mean),
        ("cumulative_mean_accuracy", lambda r: r.cumulative_mean_accuracy,
         "Cumulative mean accuracy", "cumulative mean accuracy (%)", teacher_mean),
        ("alignment", lambda r: r.alignment, "Gradient alignment cos(∇L_acq, ∇L_ret)",
         "cosine", None),
    ]
    for name, curve_of, title, ylabel, reference in figures:
      path = out / f"{dataset}_{name}.png"
      if _plot_curves(by_method, curve_of, f"{title} ({dataset})", ylabel, path,
                      reference):
        written.append(path)
        md += [f"![{title}]({path.name})", ""]
      else:
        md += [f"No run logs {name} (no {title.lower()} figure).", ""]
    md += ["Runs:", ""]
    md += [f"- `{r.method}` seed {r.seed}: {r.num_epochs} epochs, `{_shown(r.path)}`"
           for rs in by_method.values() for r in rs]
    md.append("")

  paired = write_paired(grouped, pairs, out, interval)
  if paired:
    md += [f"Paired differences between methods over shared seeds: "
           f"[{PAIRED_MARKDOWN}]({PAIRED_MARKDOWN}).", ""]
  md_path = out / TABLE_MARKDOWN
  md_path.write_text("\n".join(md))
  csv_path = out / TABLE_CSV
  _write_csv(csv_path, records)
  if selection_records:
    written.insert(0, out / SELECTION_CSV)
    _write_csv(out / SELECTION_CSV, selection_records)
  return {"runs": [str(r.path) for r in runs],
          "files": [md_path, csv_path, *paired, *written]}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m dfkd_jax.report",
      description="Table 1 (Markdown, CSV) and Figure 4-style PNGs from summary.json "
                  "files of DFKD runs.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run directories (or folders of them) holding summary.json; "
                           "LABEL=WORKDIR names its runs LABEL instead of their method "
                           "(an ablation's own row, pairable with --pairs)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument(
      "--pairs", default=None, metavar="A:B,C:D",
      help="method pairs for paired.md (difference A - B over shared seeds); default: "
           + ",".join(f"{a}:{b}" for a, b in paired_stats.DEFAULT_PAIRS))
  parser.add_argument(
      "--interval", default="t", choices=paired_stats.INTERVALS,
      help="95%% interval of the paired differences: the paired t interval (default) "
           "or the percentile bootstrap (too narrow for few seeds)")
  args = parser.parse_args(argv)
  try:
    pairs = None if args.pairs is None else paired_stats.parse_pairs(args.pairs)
    result = write_report(args.workdirs, args.out, pairs, args.interval)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{len(result['runs'])} runs -> " + ", ".join(str(p) for p in result["files"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Tables and figures of DFKD runs from their ``summary.json`` files (LRA Table 1, Fig. 4).

The logic of ``python -m dfkd_jax.report``; its usage, flags and outputs are in
:mod:`dfkd_jax.report` (what ``--help`` shows).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.study import figures
from dfkd_jax.study import paired_stats
from dfkd_jax.study import selection_report
from dfkd_jax.study import study_runs

SUMMARY_FILE = summary_lib.SUMMARY_FILE
TABLE_MARKDOWN = "table1.md"
TABLE_CSV = "table1.csv"
PAIRED_MARKDOWN = "paired.md"
PAIRED_CSV = "paired.csv"
SELECTION_CSV = "selection.csv"


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
  planned_epochs: tuple[int | None, ...] = ()  # config.num_epochs of each run.


def _optional_stat(values) -> Stat | None:
  values = [v for v in values if v is not None]
  return mean_std(values) if values else None


def table_row(method: str, runs: Sequence[study_runs.Run]) -> Row:
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
                                     if r.selected_accuracy is not None),
             planned_epochs=tuple(r.planned_epochs for r in runs))


def table_rows(by_method: Mapping[str, Sequence[study_runs.Run]]) -> list[Row]:
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


def _epochs_text(row: Row) -> str:
  """The Epochs cell: ``12``, ``10-12``; an unfinished row's also ``of 12``."""
  lo, hi = min(row.epochs), max(row.epochs)
  text = str(lo) if lo == hi else f"{lo}-{hi}"
  planned = sorted({p for p in row.planned_epochs if p is not None})
  if row.method.endswith(study_runs.UNFINISHED) and planned:
    text += f" of {'/'.join(map(str, planned))}"
  return text


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
    cells = [row.method, seeds_text(row.seeds), _epochs_text(row)]
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


def _unfinished_note(by_method: Mapping[str, Sequence[study_runs.Run]]) -> list[str]:
  """The warning under Table 1 when some runs are unfinished (no lines when none)."""
  unfinished = [r for rs in by_method.values() for r in rs if r.unfinished]
  if not unfinished:
    return []
  listed = "; ".join(f"{r.method.removesuffix(study_runs.UNFINISHED)} seed {r.seed}: "
                     f"{r.num_epochs} of {r.planned_epochs} epochs"
                     for r in unfinished)
  return [f"**Warning: {len(unfinished)} unfinished run(s)** ({listed}): stopped early, "
          "killed or still running. They have rows of their own, marked (unfinished), "
          "and enter no statistic of the finished runs (mean ± std, paired differences, "
          "selection): a shorter curve's Acc_max, epoch percentiles and last epoch are "
          "not a finished run's. Rerun the same command to finish them.", ""]


def write_paired(grouped: Mapping[str, Mapping[str, Sequence[study_runs.Run]]],
                 pairs: Sequence[tuple[str, str]],
                 out: pathlib.Path, interval: str = "t") -> list[pathlib.Path]:
  """Writes ``paired.md`` / ``paired.csv`` (:mod:`dfkd_jax.study.paired_stats`).

  Every cell written (all datasets, pairs and columns) is one family for Holm's
  correction (:func:`dfkd_jax.study.paired_stats.adjust`).

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
                 interval: str = "t",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Loads the runs under ``workdirs`` and writes the tables and figures to ``out_dir``.

  Args:
    workdirs: run directories (see :func:`dfkd_jax.study.study_runs.find_summaries`).
    out_dir: output directory (created).
    pairs: ``(A, B)`` methods whose paired differences ``A - B`` go to ``paired.md``;
      ``None``: :data:`dfkd_jax.study.paired_stats.DEFAULT_PAIRS` (those without runs are
      skipped), while every method of given pairs must have runs.
    interval: the paired differences' interval, ``"t"`` or ``"bootstrap"``
      (:func:`dfkd_jax.study.paired_stats.paired_difference`).
    log: receives the warnings (runs left out, unfinished runs, broken links).

  Returns:
    ``{"runs": [...], "files": [written paths], "collapsed": [runs flagged collapsed]}``.

  Raises:
    FileNotFoundError, ValueError: as :func:`dfkd_jax.study.study_runs.load_runs`, or a
      method of ``pairs`` that no run has, before anything is written.
  """
  if interval not in paired_stats.INTERVALS:
    raise ValueError(f"unknown interval {interval!r}; valid: "
                     f"{', '.join(paired_stats.INTERVALS)}")
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out={out_dir} is a file, not a folder; pass a folder to write "
                     "the tables and figures in (it is created)")
  runs = study_runs.load_runs(workdirs, log)
  if pairs is None:
    pairs = paired_stats.DEFAULT_PAIRS
  else:
    known = {r.method for r in runs}
    unknown = sorted({m for pair in pairs for m in pair} - known)
    if unknown:
      raise ValueError(f"--pairs names method(s) {unknown} that no run has; the runs' "
                       f"methods are {sorted(known, key=study_runs.method_sort_key)}")
  grouped = study_runs.group_runs(runs)
  tables = {dataset: table_rows(by_method) for dataset, by_method in grouped.items()}
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
    md += _unfinished_note(by_method)
    flagged = [r for rs in by_method.values() for r in rs if r.collapsed]
    if flagged:
      md += [f"**COLLAPSED: {len(flagged)} of {sum(map(len, by_method.values()))} runs** "
             "(their data-free selection says the kept student cannot be trusted: a "
             "diverged student, a collapsed generator or chance agreement; each is "
             "marked in the run list below); their numbers are in the table.", ""]
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
    curves = [
        ("test_accuracy", lambda r: r.test_accuracy, "Test accuracy", "accuracy (%)",
         teacher_mean),
        ("cumulative_mean_accuracy", lambda r: r.cumulative_mean_accuracy,
         "Cumulative mean accuracy", "cumulative mean accuracy (%)", teacher_mean),
        ("alignment", lambda r: r.alignment, "Gradient alignment cos(∇L_acq, ∇L_ret)",
         "cosine", None),
    ]
    for name, curve_of, title, ylabel, reference in curves:
      path = out / f"{dataset}_{name}.png"
      if figures.plot_curves(by_method, curve_of, f"{title} ({dataset})", ylabel, path,
                             reference):
        written.append(path)
        md += [f"![{title}]({path.name})", ""]
      else:
        md += [f"No run logs {name} (no {title.lower()} figure).", ""]
    md += ["Runs:", ""]
    md += [f"- `{r.method}` seed {r.seed}: {r.num_epochs}"
           f"{f' of {r.planned_epochs}' if r.unfinished else ''} epochs, "
           f"`{_shown(r.path)}`"
           + (f" **COLLAPSED: {r.collapsed.removeprefix('collapsed: ')}**"
              if r.collapsed else "")
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
          "files": [md_path, csv_path, *paired, *written],
          "collapsed": [str(r.path) for r in runs if r.collapsed]}

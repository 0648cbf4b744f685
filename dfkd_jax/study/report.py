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

from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.study import figures
from dfkd_jax.study import paired_stats
from dfkd_jax.study import selection_report
from dfkd_jax.study import study_runs
from dfkd_jax.study import time_report
from dfkd_jax.study import time_to_accuracy

SUMMARY_FILE = summary_lib.SUMMARY_FILE
TABLE_MARKDOWN = "table1.md"
TABLE_CSV = "table1.csv"
PAIRED_MARKDOWN = "paired.md"
PAIRED_CSV = "paired.csv"
SELECTION_CSV = "selection.csv"


# The cells shared with the time table (:mod:`dfkd_jax.study.time_to_accuracy`).
Stat = study_runs.Stat
mean_std = study_runs.mean_std
format_stat = study_runs.format_stat
seeds_text = study_runs.seeds_text
_optional_stat = study_runs.optional_stat


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


def paired_comparisons(grouped: Mapping[str, Mapping[str, Sequence[study_runs.Run]]],
                       pairs: Sequence[tuple[str, str]], interval: str = "t"
                       ) -> tuple[list[tuple[str, paired_stats.Comparison]],
                                  dict[str, list[str]]]:
  """Each pair's comparison per dataset (:func:`dfkd_jax.study.paired_stats.compare`,
  not yet adjusted), and per dataset the pairs with runs but under 2 shared seeds."""
  found, skipped = [], {}
  for dataset, by_method in grouped.items():
    for a, b in pairs:
      comparison = paired_stats.compare(by_method, a, b, interval)
      if comparison is not None:
        found.append((dataset, comparison))
      elif a in by_method and b in by_method:
        skipped.setdefault(dataset, []).append(f"{a} − {b}")
  return found, skipped


def write_paired(grouped: Mapping[str, Mapping[str, Sequence[study_runs.Run]]],
                 found: Sequence[tuple[str, paired_stats.Comparison]],
                 skipped: Mapping[str, Sequence[str]], out: pathlib.Path,
                 interval: str = "t", family: str | None = None) -> list[pathlib.Path]:
  """Writes ``paired.md`` / ``paired.csv`` (:mod:`dfkd_jax.study.paired_stats`) of the
  comparisons of :func:`paired_comparisons`, already Holm-adjusted over the report's
  family: every cell written (all datasets, pairs and columns), and the time table's
  cells when there are any (``family`` says so in words).

  Returns:
    The written paths; none (and nothing written) when no pair shares 2 seeds.
  """
  if not found:
    return []
  md = ["# Paired differences between methods", "",
        paired_stats.description(paired_stats.family_size([c for _, c in found]),
                                 interval, family), ""]
  records = []
  for dataset in grouped:
    comparisons = [c for d, c in found if d == dataset]
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
                 log: Callable[[str], None] = print,
                 time_budgets: Sequence[float] | None = None,
                 cpu_cores: int | None = None,
                 time_clock: str | None = None,
                 hosts: Mapping[str, str] | None = None) -> dict[str, Any]:
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
    time_budgets: core-minutes per seed at which ``time_to_accuracy.md`` / ``.json``
      give each method's accuracy and the pairs' verdicts (their cells join the Holm
      family of ``paired.md``), with a figure per dataset
      (:mod:`dfkd_jax.study.time_to_accuracy`); ``None``: no time table.
    cpu_cores: the cores of runs whose summary does not record them (else such runs
      are left out of the time table); only with ``time_budgets``.
    time_clock: what charges a run in the time table: ``"cpu"`` (``None``: the
      default) its ``train_cpu_seconds`` where recorded, else wall seconds x cores;
      ``"wall"`` always wall seconds x cores; only with ``time_budgets``.
    hosts: per method the host of its runs whose summary does not record one
      (:func:`dfkd_jax.study.time_to_accuracy.with_hosts`); two methods are compared
      by time only when their runs name one host; only with ``time_budgets``.

  Returns:
    ``{"runs": [...], "files": [written paths], "collapsed": [runs flagged collapsed]}``.

  Raises:
    FileNotFoundError, ValueError: as :func:`dfkd_jax.study.study_runs.load_runs`, a
      method of ``pairs`` or ``hosts`` that no run has, or a bad time budget,
      ``cpu_cores`` or ``time_clock``, before anything is written.
  """
  time_to_accuracy.check_flags(time_budgets, cpu_cores, time_clock, hosts)
  if interval not in paired_stats.INTERVALS:
    raise ValueError(f"unknown interval {interval!r}; valid: "
                     f"{', '.join(paired_stats.INTERVALS)}")
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out={out_dir} is a file, not a folder; pass a folder to write "
                     "the tables and figures in (it is created)")
  runs = study_runs.load_runs(workdirs, log)
  if hosts:
    runs = time_to_accuracy.with_hosts(runs, hosts)
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
  time_study = (None if time_budgets is None else time_to_accuracy.TimeStudy.of(
      grouped, sorted(set(time_budgets)), pairs, interval, cpu_cores,
      time_clock or "cpu"))
  out.mkdir(parents=True, exist_ok=True)
  written = []

  md = ["# Results (LRA Table 1 layout)", "",
        "Each cell is the mean ± the sample standard deviation over the runs (seeds) of "
        "a method; μ[S_Acc] >nth / σ²[S_Acc] >nth are the mean / variance (%, %²) of "
        "the per-epoch test accuracy over the epochs above the nth epoch percentile; "
        "Acc_max is the best epoch's accuracy; Acc_sel (runs that record a data-free "
        "selection) the accuracy of the epoch their criterion kept without labels, "
        "Acc_last the last epoch's.", ""]
  records, selection_records, teachers = [], [], {}
  for dataset, rows in tables.items():
    by_method = grouped[dataset]
    md += [f"## {dataset}", ""]
    teacher = _optional_stat(r.teacher_accuracy for rs in by_method.values() for r in rs)
    teachers[dataset] = None if teacher is None else teacher.mean
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
      path = out / f"{figures.file_stem(dataset)}_{name}.png"
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

  found, skipped = paired_comparisons(grouped, pairs, interval)
  found, time_study, family = time_report.adjust_family(found, time_study,
                                                       PAIRED_MARKDOWN)
  paired = write_paired(grouped, found, skipped, out, interval, family)
  if paired:
    md += [f"Paired differences between methods over shared seeds: "
           f"[{PAIRED_MARKDOWN}]({PAIRED_MARKDOWN}).", ""]
  timed = []
  if time_study is not None:
    timed = time_report.write(time_study, out, interval, family, teachers)
    md += [f"Time to accuracy (core-minutes per seed): "
           f"[{time_to_accuracy.TIME_MARKDOWN}]({time_to_accuracy.TIME_MARKDOWN}).", ""]
    left_out = sum(len(runs) for runs in time_study.left_out.values())
    if left_out:
      log(f"time to accuracy: {left_out} run(s) left out, without train_seconds or "
          f"cpu_cores (listed in {out / time_to_accuracy.TIME_MARKDOWN})")
  md_path = out / TABLE_MARKDOWN
  md_path.write_text("\n".join(md))
  csv_path = out / TABLE_CSV
  _write_csv(csv_path, records)
  if selection_records:
    written.insert(0, out / SELECTION_CSV)
    _write_csv(out / SELECTION_CSV, selection_records)
  return {"runs": [str(r.path) for r in runs],
          "files": [md_path, csv_path, *paired, *timed, *written],
          "collapsed": [str(r.path) for r in runs if r.collapsed]}

"""The time to accuracy's files: ``time_to_accuracy.md``, ``time_to_accuracy.json`` and
a figure per dataset, ``<dataset>_time_to_accuracy.png``, from a
:class:`~dfkd_jax.study.time_to_accuracy.TimeStudy` (which holds the definitions).

The Markdown file states the cost (by which clock: process CPU seconds where recorded,
else wall seconds x cores; ``--time_clock=wall``: always the latter) and the budgets'
meaning, then per dataset: the table (a row per method, a column per budget, a Clock
column saying which clock charged its runs), the runs whose cores ``--cpu_cores`` gave,
a line when a dataset's runs were charged by different clocks, the runs left out (one
line), the figure, and per pair its verdicts at each budget with Holm's correction over
the report's family. The JSON file holds the same numbers, each seed's accuracy at each
budget and the clock of each run (``clock``).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from dfkd_jax.study import figures
from dfkd_jax.study import paired_stats
from dfkd_jax.study import study_runs
from dfkd_jax.study import time_to_accuracy as tta


# ---------------------------------------------------------------------------
# The table, the pairs' verdicts and their family.
# ---------------------------------------------------------------------------


def _budget_cell(stat: study_runs.Stat | None, missing: int) -> str:
  """``72.31 ± 1.20 (n=3)``; ``(n=2; 1 not reached)``; ``not reached``."""
  if stat is None:
    return tta.NOT_REACHED
  note = f"; {missing} {tta.NOT_REACHED}" if missing else ""
  return f"{study_runs.format_stat(stat)} (n={stat.n}{note})"


def _kept_cell(row: tta.TimeRow) -> str:
  """The epochs the criteria kept: ``12 (last)``, ``9-12 (agreement)``; ``-``: none."""
  epochs = [e for e in row.selected_epochs if e is not None]
  if not epochs:
    return "-"
  lo, hi = min(epochs), max(epochs)
  criteria = "/".join(sorted({c for c in row.criteria if c is not None}))
  return f"{lo if lo == hi else f'{lo}-{hi}'} ({criteria})"


def _clock_cell(row: tta.TimeRow) -> str:
  """The clock that charged the row's runs: ``process CPU``; when they differ, each
  with its runs: ``process CPU: 2 (seeds 0, 1); wall × cores: 1 (seed 2)``."""
  clocks = dict.fromkeys(row.clocks)
  if len(clocks) == 1:
    return row.clocks[0]
  return "; ".join(f"{clock}: " + study_runs.seeds_text(
      [s for s, c in zip(row.seeds, row.clocks) if c == clock]) for clock in clocks)


def markdown_table(rows: Sequence[tta.TimeRow], budgets: Sequence[float]) -> str:
  """The time table: a row per method, a column per budget, and the clock."""
  header = (["Method", "Runs (seeds)"] + [f"Acc ≤ {tta.budget_text(b)}" for b in budgets]
            + ["Acc_max", "Kept epoch (criterion)", "Acc_sel",
               "Core-s / iteration / seed", "Core-min / seed: first epoch, end",
               "Clock"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row.method, study_runs.seeds_text(row.seeds)]
    cells += [_budget_cell(*row.at_budget[b]) for b in budgets]
    cells += [study_runs.format_stat(row.acc_max), _kept_cell(row),
              study_runs.format_stat(row.acc_sel),
              study_runs.format_stat(row.seconds_per_iteration, 3),
              f"{study_runs.format_stat(row.first_minutes, 1)}, "
              f"{study_runs.format_stat(row.end_minutes, 1)}", _clock_cell(row)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def pair_markdown(a: str, b: str,
                  cells: Sequence[tuple[float, paired_stats.Comparison]],
                  skipped: Sequence[float]) -> str:
  """One pair's verdicts: a row per budget compared (``(budget, comparison)``,
  Holm-adjusted), then the budgets not compared."""
  lines = [f"### {a} − {b}", ""]
  if cells:
    fewest = min(len(c.seeds) for _, c in cells)
    interval = next(iter(cells[0][1].differences.values())).interval
    if fewest < paired_stats.FEW_SEEDS:
      lines += [f"**Caveat.** {paired_stats.few_seeds_caveat(fewest, interval)}", ""]
    lines += ["| Budget | n (seeds) | Mean difference | "
              f"{paired_stats.CONFIDENCE:.0%} {'t' if interval == 't' else 'bootstrap'} "
              f"CI | paired t p | Holm p | Wilcoxon p | MDD ({paired_stats.POWER:.0%} "
              "power) |", "|---|---|---|---|---|---|---|---|"]
    for budget, comparison in cells:
      (d,) = comparison.differences.values()
      mean = f"**{d.mean:+.2f}** *" if d.significant else f"{d.mean:+.2f}"
      lines.append(
          f"| ≤ {tta.budget_text(budget)} | "
          f"{study_runs.seeds_text(comparison.seeds)} | {mean} | [{d.ci_low:+.2f}, "
          f"{d.ci_high:+.2f}] | {paired_stats.p_text(d.t_p)} | "
          f"{paired_stats.p_text(d.adjusted_p)} | {paired_stats.p_text(d.wilcoxon_p)} | "
          f"{'-' if d.significant else f'{d.mdd:.2f}'} |")
    lines.append("")
  if skipped:
    lines += [f"Not compared (fewer than {paired_stats.MIN_SHARED_SEEDS} seeds of both "
              f"reached it): ≤ {', '.join(map(tta.budget_text, skipped))} {tta.UNIT}.", ""]
  return "\n".join(lines)


def pair_records(dataset: str, comparison: paired_stats.Comparison,
                 budget: float) -> dict[str, Any]:
  """One cell as a flat record (:func:`dfkd_jax.study.paired_stats.csv_records`) with
  its budget."""
  record, = paired_stats.csv_records(dataset, comparison)
  return {"budget": budget, **record}


def family_text(table_cells: int, time_cells: int, paired_file: str) -> str:
  """The family of Holm's correction when the time cells join it (both files say it)."""
  return (f"all {table_cells + time_cells} cells of {paired_file} and "
          f"{tta.TIME_MARKDOWN} ({table_cells} in {paired_file}: every dataset × pair × "
          f"Table 1 column; {time_cells} in {tta.TIME_MARKDOWN}: every dataset × pair × "
          "time budget)")


def adjust_family(found: Sequence[tuple[str, paired_stats.Comparison]],
                  time_study: tta.TimeStudy | None, paired_file: str
                  ) -> tuple[list[tuple[str, paired_stats.Comparison]],
                             tta.TimeStudy | None, str | None]:
  """Holm over the report's family: the cells ``found`` of ``paired.md``
  (``paired_file``) and, with a time table, those of ``time_to_accuracy.md``: one
  family, so that adding budgets makes the correction stricter in both. Returns both
  adjusted, and the family in words when the time cells join it (else ``None``)."""
  time_cells = [c for _, _, c in time_study.cells] if time_study else []
  adjusted = paired_stats.adjust([c for _, c in found] + time_cells)
  table = [(d, c) for (d, _), c in zip(found, adjusted)]
  if not time_cells:
    return table, time_study, None
  family = family_text(paired_stats.family_size(adjusted[:len(found)]),
                       len(time_cells), paired_file)
  return table, time_study.adjusted(adjusted[len(found):]), family


#: The JSON file's ``cost`` per ``--time_clock``.
COST = {"cpu": (f"train_cpu_seconds / num_seeds core-seconds ({tta.CPU_CLOCK}) where "
                "recorded, else train_seconds * cpu_cores / num_seeds "
                f"({tta.WALL_CLOCK})"),
        "wall": f"train_seconds * cpu_cores / num_seeds core-seconds ({tta.WALL_CLOCK})"}


def cost_text(time_clock: str) -> str:
  """How a run's cost is counted under ``--time_clock`` (``cpu`` or ``wall``)."""
  wall = (f"`train_seconds × cpu_cores / num_seeds` (clock \"{tta.WALL_CLOCK}\": the "
          "program's wall seconds times the CPU cores it could run on, inflated when "
          "other jobs share the machine)")
  if time_clock == "wall":
    how = (f"{wall}, for every run (--time_clock=wall, even where summary.json records "
           "train_cpu_seconds)")
  else:
    how = (f"`train_cpu_seconds / num_seeds` where summary.json records it (clock "
           f"\"{tta.CPU_CLOCK}\": the program's CPU seconds, all its threads, which are "
           "core-seconds whatever else runs on the machine), else " + wall)
  return (f"A run's cost is counted in core-seconds per seed: {how}. Both clocks count "
          "the program's training iterations, compilation included, evaluation "
          "excluded, across resumes; num_seeds is the seeds it ran as replicas. The "
          "Clock column says which clock charged each method's runs.")


def description(family: str | None, interval: str, time_clock: str = "cpu"
                ) -> list[str]:
  """The paragraphs at the top of ``time_to_accuracy.md``: the cost (by
  ``time_clock``), the cells, and (``family``: the Holm family's text; ``None``: no
  paired cell) the verdicts."""
  lines = [
      "# Time to accuracy", "",
      f"{cost_text(time_clock)} Budgets are in "
      f"{tta.UNIT}. \"Acc ≤ B\" is the test accuracy (%) of the last epoch completed "
      "within B: mean ± sample sd over the seeds that reached B, and their number n. A "
      f"budget before a run's first epoch or past its end is {tta.NOT_REACHED}: a run is "
      "never extrapolated. Acc_max is the best epoch's accuracy; the kept epoch is the "
      "one the run's data-free criterion kept (summary.json's selected_epoch), Acc_sel "
      "its accuracy. Core-s / iteration / seed is a run's whole cost over its "
      "iterations (compilation included); the last column the cost of its first epoch "
      "and of the whole run.", ""]
  if family is not None:
    how = ("the 95% paired t interval" if interval == "t" else
           "a 95% percentile bootstrap interval over the seed pairs")
    lines += [
        "Paired verdicts at each budget: only seeds of both methods that reached it "
        f"count (n); each cell is the mean over seeds of A − B with {how}, the "
        "two-sided paired t-test p, and that p adjusted by Holm's method over the "
        f"family of this report: {family}. A difference is marked **bold** * when its "
        f"Holm-adjusted p < {paired_stats.SIGNIFICANCE_LEVEL} and n >= "
        f"{paired_stats.FEW_SEEDS}; MDD (cells not marked) and the Wilcoxon p are those "
        "of paired.md.", ""]
  return lines


def _runs_text(runs: Sequence[study_runs.Run]) -> str:
  """``lra_mb seeds 0, 1; dfkd seed 3``."""
  by_method: dict[str, list[int]] = {}
  for run in runs:
    by_method.setdefault(run.method, []).append(run.seed)
  return "; ".join(f"{m} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}"
                   for m, s in by_method.items())


def notes(timed: Mapping[str, Sequence[tta.Timed]],
          left_out: Sequence[tuple[study_runs.Run, str]]) -> list[str]:
  """A line for the runs charged by wall × cores when others are charged by process
  CPU, one for the runs whose cores ``--cpu_cores`` gave, one for those left out."""
  lines = []
  every = [t for ts in timed.values() for t in ts]
  if len({t.clock for t in every}) > 1:
    lines += [f"Charged by {tta.WALL_CLOCK} (their summary.json has no "
              f"train_cpu_seconds), beside runs charged by {tta.CPU_CLOCK}: "
              f"{_runs_text([t.run for t in every if t.clock == tta.WALL_CLOCK])}. "
              "Wall time counts idle cores and other jobs' load; --time_clock=wall "
              "charges every run by it.", ""]
  hosts = host_labels(timed)
  if hosts:
    lines += ["Timed on more than one host (a core-second of one machine is not one of "
              "another; methods are compared by time only on one host): " + "; ".join(
                  f"{m}: {h}" for m, h in hosts.items()) + ".", ""]
  assumed = [t for ts in timed.values() for t in ts if t.assumed]
  if assumed:
    lines += [f"Cores given by --cpu_cores={assumed[0].cores} (their summary.json does "
              f"not record them): {_runs_text([t.run for t in assumed])}.", ""]
  if left_out:
    whys = dict.fromkeys(why for _, why in left_out)
    lines += ["Left out of the time table: " + "; ".join(
        f"{_runs_text([r for r, w in left_out if w == why])}: {why}" for why in whys)
              + ".", ""]
  return lines


def host_labels(timed: Mapping[str, Sequence[tta.Timed]]) -> dict[str, str]:
  """Per method the hosts its runs were timed on (``Intel(R) Xeon(R) Processor``,
  ``host not recorded``), when the runs of ``timed`` name more than one; else ``{}``."""
  every = [t.run.host for ts in timed.values() for t in ts]
  if len(set(every)) < 2:
    return {}
  return {m: ", ".join(dict.fromkeys(tta.host_text(t.run.host) for t in ts))
          for m, ts in timed.items()}


def figure_panels(timed: Mapping[str, Sequence[tta.Timed]]) -> list[figures.Panel]:
  """Accuracy against core-minutes per seed, and against iterations per seed (epochs
  when a run does not record its iterations per epoch); each method's label names its
  host when the runs were timed on more than one."""
  by_iteration = all(t.iterations is not None for ts in timed.values() for t in ts)
  hosts = host_labels(timed)

  def panel(xlabel, x_of):
    series = {}
    for method, ts in timed.items():
      curves = [(x_of(t), t.run.test_accuracy) for t in ts]
      label = f"{method} ({hosts[method]})" if hosts else method
      series[label] = (curves, tta.step_mean(curves))
    return xlabel, series

  return [panel(tta.UNIT, lambda t: t.core_seconds / 60.0),
          panel("iterations per seed" if by_iteration else
                "epoch (a run does not record iterations_per_epoch)",
                lambda t: t.iterations if by_iteration else
                np.arange(1, t.run.num_epochs + 1))]


def _stat_json(stat: study_runs.Stat | None) -> dict[str, Any]:
  if stat is None:
    return {"mean": None, "sd": None, "n": 0}
  return {"mean": stat.mean, "sd": stat.std, "n": stat.n}


def row_json(row: tta.TimeRow, timed: Sequence[tta.Timed]) -> dict[str, Any]:
  """One method's row as JSON, with every seed's accuracy at each budget."""
  return {
      "method": row.method, "seeds": list(row.seeds),
      "budgets": [{"budget": b, **_stat_json(stat),
                   "not_reached": missing,
                   "per_seed": {str(s): v for s, v in row.per_seed[b].items()}}
                  for b, (stat, missing) in row.at_budget.items()],
      "acc_max": _stat_json(row.acc_max),
      "selected_epochs": list(row.selected_epochs), "criteria": list(row.criteria),
      "acc_sel": _stat_json(row.acc_sel),
      "core_seconds_per_iteration_per_seed": _stat_json(row.seconds_per_iteration),
      "core_minutes_per_seed": {"first_epoch": _stat_json(row.first_minutes),
                                "end": _stat_json(row.end_minutes)},
      "cpu_cores": [t.cores for t in timed],
      "cores_from_flag": [t.assumed for t in timed],
      "clock": [t.clock for t in timed],
      "host": [t.run.host for t in timed]}


def write(study: tta.TimeStudy, out: pathlib.Path, interval: str, family: str | None,
          teachers: Mapping[str, float | None]) -> list[pathlib.Path]:
  """Writes ``time_to_accuracy.md`` / ``.json`` and the figures into ``out``.

  Args:
    study: its cells already Holm-adjusted over the report's family.
    family: that family in words (:func:`family_text`); ``None`` when no cell.
    teachers: per dataset the teacher's accuracy drawn in its figure, or ``None``.

  Returns:
    The written paths.
  """
  md = description(family, interval, study.time_clock)
  data: dict[str, Any] = {"unit": tta.UNIT, "time_clock": study.time_clock,
                          "cost": COST[study.time_clock],
                          "budgets": list(study.budgets), "interval": interval,
                          "family": family, "band": tta.BAND, "datasets": {}}
  written = []
  for dataset, timed in study.timed.items():
    md += [f"## {dataset}", ""]
    rows = [tta.time_row(m, ts, study.budgets) for m, ts in timed.items()]
    if rows:
      md += [markdown_table(rows, study.budgets)]
    else:
      md += ["No run of this dataset records train_seconds and cpu_cores"
             + (" (nor train_cpu_seconds)" if study.time_clock == "cpu" else "")
             + ": no time table.", ""]
    md += notes(timed, study.left_out[dataset])
    if rows:
      path = out / f"{figures.file_stem(dataset)}_{tta.FIGURE}"
      figures.save(figures.step_figure(
          figure_panels(timed), f"Time to accuracy ({dataset}): mean over seeds",
          tta.BAND, teachers.get(dataset), study.budgets, "budgets"), path)
      written.append(path)
      md += [f"![Time to accuracy ({dataset})]({path.name})", ""]
    pairs = []
    for a, b in study.pairs[dataset]:
      cells = [(x, c) for d, x, c in study.cells if d == dataset and (c.a, c.b) == (a, b)]
      md.append(pair_markdown(a, b, cells, study.skipped.get((dataset, a, b), [])))
      pairs += [pair_records(dataset, c, x) for x, c in cells]
    if study.other_hosts.get(dataset):
      md += ["Not compared at any budget (their runs were timed on different hosts): "
             + "; ".join(f"{a} − {b}" for a, b in study.other_hosts[dataset]) + ".", ""]
    if study.untimed[dataset]:
      md += ["Not compared at any budget (a method without timed runs): "
             f"{', '.join(f'{a} − {b}' for a, b in study.untimed[dataset])}.", ""]
    data["datasets"][dataset] = {
        "methods": [row_json(row, timed[row.method]) for row in rows],
        "left_out": [{"method": r.method, "seed": r.seed, "path": str(r.path),
                      "why": why} for r, why in study.left_out[dataset]],
        "pairs": pairs}
  md_path, json_path = out / tta.TIME_MARKDOWN, out / tta.TIME_JSON
  md_path.write_text("\n".join(md))
  json_path.write_text(json.dumps(data, indent=1, allow_nan=False))
  return [md_path, json_path, *written]

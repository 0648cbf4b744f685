"""The report's data-free model selection table: what choosing without labels costs.

For every method and every criterion of :mod:`dfkd_jax.metrics.selection` that its runs
record (plus ``last``, the baseline), over the runs of that method on one dataset:

* the **regret** ``Acc_max - Acc_sel``: the test accuracy (%) lost by keeping the epoch
  the criterion chooses instead of the best epoch (which only a labelled test set can
  find), mean ± sample std over runs;
* **Spearman's rank correlation** between the criterion (signed so that +1 means "the
  better the criterion, the higher the accuracy") and the test accuracy over the epochs
  of a run, mean ± std over the runs where it is defined (3 or more epochs with values,
  neither side constant);
* how many runs the criterion chooses the best epoch for, and how many runs are
  collapsed (chance-level agreement, :func:`dfkd_jax.metrics.selection.collapse`);
* with 2 or more runs: the regret's 95% t interval, and **against the last epoch** the
  paired difference ``regret(criterion) - regret(last)`` over the same runs (negative:
  the criterion loses less than keeping the last epoch) with its 95% t interval, its
  paired t-test p and that p Holm-adjusted over every criterion-vs-last cell of the
  dataset's table (:mod:`dfkd_jax.study.paired_stats`).

Rows named ``all methods`` pool every run of the dataset (each run is one pair: the
criterion's choice and the last epoch of the same run): the basis for choosing the
default criterion.

The choice is recomputed here from each run's recorded per-epoch criteria
(:func:`dfkd_jax.metrics.selection.selected_epoch`), so every criterion is compared on the same
runs whichever was in force when they ran.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from dfkd_jax.metrics import selection
from dfkd_jax.study import paired_stats


@dataclasses.dataclass(frozen=True)
class Row:
  """One method and criterion over its runs (mean, sample std or ``None``, count)."""

  method: str
  criterion: str
  runs: int
  regret: tuple[float, float | None]
  rank_correlation: tuple[float, float | None, int] | None
  best_chosen: int
  collapsed: int
  regrets: tuple[float, ...] = ()
  regret_interval: tuple[float, float] | None = None
  versus_last: paired_stats.Difference | None = None

#: The method name of the rows that pool every run of a dataset.
ALL_METHODS = "all methods"


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def criterion_row(method: str, name: str, runs: Sequence[Any]) -> Row:
  """The :class:`Row` of criterion ``name`` over ``runs`` (:class:`dfkd_jax.study.study_runs.Run`
  with ``criteria`` and ``test_accuracy``)."""
  higher = selection.CRITERIA.get(name).higher_is_better
  regrets, rhos, best = [], [], 0
  for run in runs:
    acc = [float(a) for a in run.test_accuracy]
    values = [None if np.isnan(v) else float(v) for v in run.criteria.get(name, ())]
    chosen = selection.selected_epoch(name, {name: values}, len(acc))
    regrets.append(max(acc) - acc[chosen])
    best += acc[chosen] == max(acc)
    if name != "last":
      rho = selection.rank_correlation(values, acc, higher)
      if rho is not None:
        rhos.append(rho)
  correlation = (*_mean_std(rhos), len(rhos)) if rhos else None
  interval = (paired_stats.t_interval(np.asarray(regrets, np.float64))
              if len(regrets) >= paired_stats.MIN_SHARED_SEEDS else None)
  return Row(method, name, len(runs), _mean_std(regrets), correlation, best,
             sum(run.collapsed is not None for run in runs), tuple(regrets), interval)


def _versus_last(table: Sequence[Row]) -> list[Row]:
  """Sets each criterion row's paired difference against its method's ``last`` row,
  Holm-adjusted over the table's criterion-vs-last cells."""
  last = {row.method: row for row in table if row.criterion == "last"}
  cells = [i for i, row in enumerate(table)
           if row.criterion != "last" and row.runs >= paired_stats.MIN_SHARED_SEEDS]
  differences = {i: paired_stats.paired_difference(table[i].regrets,
                                                   last[table[i].method].regrets)
                 for i in cells}
  adjusted = paired_stats.holm([differences[i].t_p for i in cells]) if cells else []
  out = list(table)
  for i, p in zip(cells, adjusted, strict=True):
    out[i] = dataclasses.replace(
        table[i], versus_last=dataclasses.replace(differences[i], adjusted_p=float(p)))
  return out


def rows(by_method: Mapping[str, Sequence[Any]]) -> list[Row]:
  """Every method's rows, ``last`` first, for the runs that record criteria, then
  (with two or more such methods) the :data:`ALL_METHODS` rows; empty when no run
  records criteria (runs made before selection)."""
  out = []
  selected = {m: [r for r in runs if r.criterion is not None]
              for m, runs in by_method.items()}
  selected = {m: runs for m, runs in selected.items() if runs}
  if len(selected) > 1:
    selected[ALL_METHODS] = [r for runs in selected.values() for r in runs]
  for method, runs in selected.items():
    # Pooled rows: only the criteria every method records (a default must fit all).
    recorded = all if method == ALL_METHODS else any
    names = [n for n in selection.CRITERIA.names()
             if n == "last" or recorded(n in r.criteria for r in runs)]
    out += [criterion_row(method, name, runs) for name in names]
  return _versus_last(out)


def _stat(mean: float, std: float | None, digits: int = 2) -> str:
  return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _interval(row: Row) -> str:
  if row.regret_interval is None:
    return _stat(*row.regret)
  low, high = row.regret_interval
  return f"{row.regret[0]:.2f} [{low:.2f}, {high:.2f}]"


def _versus_last_text(row: Row) -> str:
  d = row.versus_last
  if d is None:
    return "-"
  cell = (f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}] "
          f"{paired_stats.p_text(d.t_p)} / {paired_stats.p_text(d.adjusted_p)}")
  return f"**{cell}**" if d.significant else cell


def markdown(table: Sequence[Row]) -> str:
  """The selection table (one dataset) as Markdown, with its heading and legend."""
  cells = sum(row.versus_last is not None for row in table)
  lines = ["### Data-free model selection", "",
           "Regret = Acc_max − the test accuracy of the epoch the criterion keeps (%, "
           "mean [95% t interval] over runs, or mean ± std with one run; the choice "
           "reads no label). vs last = the paired difference regret(criterion) − "
           "regret(last) over the same runs (negative: better than keeping the last "
           "epoch), [95% t interval] p / p_H, p_H Holm-adjusted over the table's "
           f"{cells} criterion-vs-last cells; **bold**: p_H < 0.05 over "
           f"{paired_stats.FEW_SEEDS} or more runs (fewer are descriptive, never bold). "
           "ρ = Spearman rank "
           "correlation of the criterion with the test accuracy over a run's epochs "
           "(mean ± std over runs where defined). last = the last epoch, the baseline; "
           f"'{ALL_METHODS}' pools every run (the criteria all methods record).",
           "", "| Method | Criterion | Runs | Regret | vs last | ρ (runs) | "
           "Best epoch chosen | Collapsed |", "|---|---|---|---|---|---|---|---|"]
  for row in table:
    rho = ("-" if row.rank_correlation is None else
           f"{_stat(*row.rank_correlation[:2])} ({row.rank_correlation[2]})")
    lines.append(f"| {row.method} | {row.criterion} | {row.runs} | {_interval(row)} | "
                 f"{_versus_last_text(row)} | {rho} | {row.best_chosen}/{row.runs} | "
                 f"{row.collapsed} |")
  return "\n".join(lines) + "\n"


def csv_records(dataset: str, table: Sequence[Row]) -> list[dict[str, Any]]:
  """One flat record per row (empty cells for undefined values)."""
  records = []
  for row in table:
    rho = row.rank_correlation
    records.append({
        "dataset": dataset, "method": row.method, "criterion": row.criterion,
        "runs": row.runs, "regret_mean": row.regret[0],
        "regret_std": "" if row.regret[1] is None else row.regret[1],
        "spearman_mean": "" if rho is None else rho[0],
        "spearman_std": "" if rho is None or rho[1] is None else rho[1],
        "spearman_runs": 0 if rho is None else rho[2],
        "best_epoch_chosen": row.best_chosen, "collapsed": row.collapsed,
        **_interval_record(row)})
  return records


def _interval_record(row: Row) -> dict[str, Any]:
  """The CSV fields of the regret's interval and the difference against ``last``."""
  low, high = row.regret_interval or ("", "")
  d = row.versus_last
  return {"regret_ci_low": low, "regret_ci_high": high,
          "vs_last_mean": "" if d is None else d.mean,
          "vs_last_ci_low": "" if d is None else d.ci_low,
          "vs_last_ci_high": "" if d is None else d.ci_high,
          "vs_last_t_p": "" if d is None else d.t_p,
          "vs_last_holm_p": "" if d is None else d.adjusted_p}

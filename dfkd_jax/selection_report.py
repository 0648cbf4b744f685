"""The report's data-free model selection table: what choosing without labels costs.

For every method and every criterion of :mod:`dfkd_jax.selection` that its runs
record (plus ``last``, the baseline), over the runs of that method on one dataset:

* the **regret** ``Acc_max - Acc_sel``: the test accuracy (%) lost by keeping the epoch
  the criterion chooses instead of the best epoch (which only a labelled test set can
  find), mean ± sample std over runs;
* **Spearman's rank correlation** between the criterion (signed so that +1 means "the
  better the criterion, the higher the accuracy") and the test accuracy over the epochs
  of a run, mean ± std over the runs where it is defined (3 or more epochs with values,
  neither side constant);
* how many runs the criterion chooses the best epoch for, and how many runs are
  collapsed (chance-level agreement, :func:`dfkd_jax.selection.collapse`).

The choice is recomputed here from each run's recorded per-epoch criteria
(:func:`dfkd_jax.selection.selected_epoch`), so every criterion is compared on the same
runs whichever was in force when they ran.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from dfkd_jax import selection


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


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def criterion_row(method: str, name: str, runs: Sequence[Any]) -> Row:
  """The :class:`Row` of criterion ``name`` over ``runs`` (:class:`dfkd_jax.study_runs.Run`
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
  return Row(method, name, len(runs), _mean_std(regrets), correlation, best,
             sum(run.collapsed is not None for run in runs))


def rows(by_method: Mapping[str, Sequence[Any]]) -> list[Row]:
  """Every method's rows, ``last`` first, for the runs that record criteria; empty
  when no run does (runs made before selection)."""
  out = []
  for method, runs in by_method.items():
    runs = [r for r in runs if r.criterion is not None]
    if not runs:
      continue
    names = [n for n in selection.CRITERIA.names()
             if n == "last" or any(n in r.criteria for r in runs)]
    out += [criterion_row(method, name, runs) for name in names]
  return out


def _stat(mean: float, std: float | None, digits: int = 2) -> str:
  return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(table: Sequence[Row]) -> str:
  """The selection table (one dataset) as Markdown, with its heading and legend."""
  lines = ["### Data-free model selection", "",
           "Regret = Acc_max − the test accuracy of the epoch the criterion keeps (%, "
           "mean ± std over runs; the choice reads no label); ρ = Spearman rank "
           "correlation of the criterion with the test accuracy over a run's epochs "
           "(mean ± std over runs where defined); last = the last epoch, the baseline.",
           "", "| Method | Criterion | Runs | Regret | ρ (runs) | Best epoch chosen | "
           "Collapsed |", "|---|---|---|---|---|---|---|"]
  for row in table:
    rho = ("-" if row.rank_correlation is None else
           f"{_stat(*row.rank_correlation[:2])} ({row.rank_correlation[2]})")
    lines.append(f"| {row.method} | {row.criterion} | {row.runs} | "
                 f"{_stat(*row.regret)} | {rho} | {row.best_chosen}/{row.runs} | "
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
        "best_epoch_chosen": row.best_chosen, "collapsed": row.collapsed})
  return records

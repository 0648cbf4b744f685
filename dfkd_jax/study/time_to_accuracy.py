"""Time to accuracy: the student's test accuracy at budgets of core-minutes per seed
(``python -m dfkd_jax.report --time_budgets=15,30,60 [--time_clock=cpu|wall]``).

**Cost.** After epoch ``e`` a run has cost, in core-seconds per seed, by one of two
clocks (:data:`CPU_CLOCK`, :data:`WALL_CLOCK`; each run's is stated in the files):

* *process CPU* (``--time_clock=cpu``, the default, where the summary records it):
  ``train_cpu_seconds[e] / num_seeds``, the program's cumulative process CPU seconds
  (all its threads) of training iterations. CPU seconds are core-seconds already: other
  jobs on the machine and idle cores do not change them.
* *wall x cores* (the runs without ``train_cpu_seconds``, and every run with
  ``--time_clock=wall``): ``train_seconds[e] * cpu_cores / num_seeds``, the program's
  cumulative wall seconds of training iterations times the cores it could run on;
  inflated when other jobs share the machine.

Both count the same spans (compilation included, evaluation excluded, continued across
resumes); ``config.num_seeds`` (1 when absent): the replicas of a program share its
cores and its time. Budgets are in core-minutes per seed.

**Accuracy at a budget** ``B``: the test accuracy of the last epoch whose cost is at
most ``B``. It is *not reached* when the run's first epoch cost more than ``B``, and
when the run ended before ``B`` (its last epoch cost less): a run is never
extrapolated past its end. Per method: mean ± sample sd over the seeds that reached
``B`` and their number n.

**Paired verdicts** at each budget, for the report's pairs: the seeds of both methods
that reached it are paired (:func:`dfkd_jax.study.paired_stats.paired_difference`, at
least 2), one cell per dataset x pair x budget. These cells join the family of
``paired.md`` for Holm's correction (:func:`dfkd_jax.study.paired_stats.adjust`), which
both files state.

**Hosts.** A core-second of one machine is not one of another (the same iteration took
1.9x the CPU seconds on an Intel Xeon host as on an AMD EPYC one), so two methods are
compared at a budget only when all their runs were timed on one host: summary.json's
``host`` (the CPU model or device kind, recorded since it existed) or, for runs that
do not record it, ``--host=METHOD=HOST``. A pair whose runs name different hosts, or a
host beside runs that name none, gets no time cells (listed as such); the table
names each method's host when the runs of a dataset were timed on more than one.

Runs charged by wall x cores whose summary lacks ``train_seconds`` (made before it was
recorded) or ``cpu_cores`` (an accelerator or a multi-process run, or made before it
was recorded; ``--cpu_cores=N`` gives such runs N) are listed, one line per dataset, and
left out.

The report writes ``time_to_accuracy.md``, ``time_to_accuracy.json`` and a figure per
dataset, ``<dataset>_time_to_accuracy.png`` (:mod:`dfkd_jax.study.time_report`): accuracy
against core-minutes per seed and against iterations, a step line per seed (a value
holds until the next epoch), the mean over seeds where all of them have a value
(:func:`step_mean`) and a min-max band.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from dfkd_jax.study import figures
from dfkd_jax.study import paired_stats
from dfkd_jax.study import study_runs

TIME_MARKDOWN = "time_to_accuracy.md"
TIME_JSON = "time_to_accuracy.json"
FIGURE = "time_to_accuracy.png"    # Prefixed by the dataset, as the other figures.
UNIT = "core-minutes per seed"
BAND = "min–max over seeds"
NOT_REACHED = "not reached"
NO_TRAIN_SECONDS = "no train_seconds (made before it was recorded)"
NO_CPU_CORES = ("no cpu_cores (an accelerator or multi-process run, or made before it "
                "was recorded; --cpu_cores=N gives such runs N)")
#: ``--time_clock`` values: ``cpu`` charges process CPU seconds where recorded (else
#: wall x cores), ``wall`` always wall x cores.
TIME_CLOCKS = ("cpu", "wall")
#: The clock a run was charged by, as the files state it.
CPU_CLOCK = "process CPU"
WALL_CLOCK = "wall × cores"


def parse_budgets(text: str) -> tuple[float, ...]:
  """``"15,30,60"`` -> ``(15.0, 30.0, 60.0)``, sorted, without duplicates.

  Raises:
    ValueError: an item that is not a positive finite number, naming it.
  """
  budgets = []
  for item in text.split(","):
    try:
      value = float(item)
    except ValueError:
      value = math.nan
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"--time_budgets item {item.strip()!r} is not a positive number "
                       f"of {UNIT}; pass e.g. --time_budgets=15,30,60")
    budgets.append(value)
  return tuple(sorted(set(budgets)))


def parse_hosts(entries: Sequence[str]) -> dict[str, str]:
  """``["lra_mb=Intel Xeon", ...]`` (``--host=METHOD=HOST``, repeated) -> ``{method:
  host}``.

  Raises:
    ValueError: an entry without ``METHOD=HOST``, or a method given twice, naming it.
  """
  hosts: dict[str, str] = {}
  for entry in entries:
    method, sep, host = entry.partition("=")
    method, host = method.strip(), host.strip()
    if not (sep and method and host):
      raise ValueError(f"--host={entry} is not METHOD=HOST; pass e.g. "
                       "--host='lra_mb=Intel(R) Xeon(R) Processor' for the runs of "
                       "lra_mb whose summary.json does not record their host")
    if method in hosts and hosts[method] != host:
      raise ValueError(f"--host gives {method} two hosts, {hosts[method]!r} and "
                       f"{host!r}; pass one per method")
    hosts[method] = host
  return hosts


def with_hosts(runs: Sequence[study_runs.Run], hosts: Mapping[str, str]
               ) -> list[study_runs.Run]:
  """``runs`` with ``hosts[method]`` as the host of those that record none (a run's
  own record wins; ``METHOD (unfinished)`` runs take their method's).

  Raises:
    ValueError: a method of ``hosts`` that no run has.
  """
  methods = {r.method.removesuffix(study_runs.UNFINISHED) for r in runs}
  unknown = sorted(set(hosts) - methods)
  if unknown:
    raise ValueError(f"--host names method(s) {unknown} that no run has; the runs' "
                     f"methods are {sorted(methods, key=study_runs.method_sort_key)}")
  return [dataclasses.replace(r, host=hosts[m]) if r.host is None and m in hosts else r
          for r in runs
          for m in [r.method.removesuffix(study_runs.UNFINISHED)]]


def host_text(host: str | None) -> str:
  return "host not recorded" if host is None else host


def check_flags(time_budgets: Sequence[float] | None, cpu_cores: int | None,
                time_clock: str | None = None,
                hosts: Mapping[str, str] | None = None) -> None:
  """One-line errors for ``--time_budgets``, ``--cpu_cores``, ``--time_clock`` and
  ``--host`` values."""
  if hosts and time_budgets is None:
    raise ValueError(f"--host={next(iter(hosts))}={next(iter(hosts.values()))} is for "
                     "the time table; pass --time_budgets too (e.g. "
                     "--time_budgets=15,30,60)")
  for budget in time_budgets or ():
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
      raise ValueError(f"time budget {budget!r} is not a positive number of "
                       f"{UNIT}; pass e.g. --time_budgets=15,30,60")
  if time_budgets is not None and not time_budgets:
    raise ValueError("--time_budgets is empty; pass e.g. --time_budgets=15,30,60")
  if cpu_cores is not None and (isinstance(cpu_cores, bool) or cpu_cores < 1):
    raise ValueError(f"--cpu_cores={cpu_cores} is not a positive number of cores; pass "
                     "the cores of the runs whose summary.json does not record them")
  if cpu_cores is not None and time_budgets is None:
    raise ValueError(f"--cpu_cores={cpu_cores} is for the time table; pass "
                     "--time_budgets too (e.g. --time_budgets=15,30,60)")
  if time_clock is not None and time_clock not in TIME_CLOCKS:
    raise ValueError(f"--time_clock={time_clock} is not a clock; pass cpu (process CPU "
                     "seconds where recorded, else wall x cores) or wall (always wall x "
                     "cores)")
  if time_clock is not None and time_budgets is None:
    raise ValueError(f"--time_clock={time_clock} is for the time table; pass "
                     "--time_budgets too (e.g. --time_budgets=15,30,60)")


def budget_text(budget: float) -> str:
  """``15.0`` -> ``"15"``, ``7.5`` -> ``"7.5"``."""
  return f"{budget:g}"


@dataclasses.dataclass(frozen=True)
class Timed:
  """A run with its cost: ``core_seconds[e]`` per seed after epoch ``e + 1``.

  Attributes:
    cores: ``cpu_cores``, or ``--cpu_cores`` for a run without it (``assumed``);
      ``None`` for a run charged by process CPU that does not record them.
    clock: what charged it, :data:`CPU_CLOCK` or :data:`WALL_CLOCK`.
  """

  run: study_runs.Run
  cores: int | None
  assumed: bool
  core_seconds: np.ndarray
  clock: str = WALL_CLOCK

  @property
  def iterations(self) -> np.ndarray | None:
    """Iterations per seed after each epoch (``None``: not recorded)."""
    per_epoch = self.run.iterations_per_epoch
    return None if per_epoch is None else per_epoch * np.arange(
        1, self.run.num_epochs + 1)

  @property
  def seconds_per_iteration(self) -> float | None:
    """Core-seconds per iteration per seed over the whole run (compilation included)."""
    iterations = self.iterations
    return None if iterations is None else float(self.core_seconds[-1] / iterations[-1])


def core_seconds(run: study_runs.Run, cores: int) -> np.ndarray:
  """``train_seconds * cores / num_seeds``: the run's core-seconds per seed per epoch
  by wall x cores."""
  return run.train_seconds * cores / run.num_seeds


def cpu_core_seconds(run: study_runs.Run) -> np.ndarray:
  """``train_cpu_seconds / num_seeds``: the run's core-seconds per seed per epoch by
  process CPU."""
  return run.train_cpu_seconds / run.num_seeds


def timed_runs(runs: Sequence[study_runs.Run], cpu_cores: int | None = None,
               time_clock: str = "cpu"
               ) -> tuple[list[Timed], list[tuple[study_runs.Run, str]]]:
  """The runs with a cost, and the others with why not (:data:`NO_TRAIN_SECONDS`,
  :data:`NO_CPU_CORES`). ``time_clock="cpu"`` charges a run that records
  ``train_cpu_seconds`` by them, the others (and all with ``"wall"``) by wall x cores;
  ``cpu_cores`` stands for the cores of runs without them."""
  timed, left_out = [], []
  for run in runs:
    cores = run.cpu_cores or cpu_cores
    if time_clock == "cpu" and run.train_cpu_seconds is not None:
      timed.append(Timed(run, run.cpu_cores, False, cpu_core_seconds(run), CPU_CLOCK))
    elif run.train_seconds is None:
      left_out.append((run, NO_TRAIN_SECONDS))
    elif cores is None:
      left_out.append((run, NO_CPU_CORES))
    else:
      timed.append(Timed(run, cores, run.cpu_cores is None, core_seconds(run, cores),
                         WALL_CLOCK))
  return timed, left_out


def step_value(x: np.ndarray, y: np.ndarray, at: float) -> float | None:
  """``y`` of the last point with ``x <= at``; ``None`` before ``x[0]`` or after
  ``x[-1]`` (no extrapolation). ``x`` is non-decreasing."""
  if at < x[0] or at > x[-1]:
    return None
  return float(y[np.searchsorted(x, at, side="right") - 1])


def accuracy_at(timed: Timed, budget: float) -> float | None:
  """The test accuracy of the last epoch completed within ``budget`` core-minutes per
  seed, or ``None``: not reached (first epoch later, or the run ended before it)."""
  return step_value(timed.core_seconds, timed.run.test_accuracy, budget * 60.0)


def step_mean(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> figures.StepMean | None:
  """The mean and min-max of step-interpolated curves ``(x, y)`` on the union of their
  ``x`` where all of them have a value (from the latest start to the earliest end);
  ``None`` when there is no such x."""
  low, high = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
  if low > high:
    return None
  grid = np.unique(np.concatenate([x[(x >= low) & (x <= high)] for x, _ in curves]))
  values = np.array([[step_value(x, y, g) for g in grid] for x, y in curves])
  return figures.StepMean(grid, values.mean(axis=0), values.min(axis=0),
                          values.max(axis=0))


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimeRow:
  """One method's row: per budget the accuracy over the seeds that reached it and the
  seeds that did not; Acc_max, the kept epochs and their accuracy; the cost and the
  clock that charged each seed."""

  method: str
  seeds: tuple[int, ...]
  at_budget: dict[float, tuple[study_runs.Stat | None, int]]
  per_seed: dict[float, dict[int, float | None]]
  acc_max: study_runs.Stat
  selected_epochs: tuple[int | None, ...]
  criteria: tuple[str | None, ...]
  acc_sel: study_runs.Stat | None
  seconds_per_iteration: study_runs.Stat | None
  first_minutes: study_runs.Stat
  end_minutes: study_runs.Stat
  clocks: tuple[str, ...] = ()


def time_row(method: str, timed: Sequence[Timed], budgets: Sequence[float]) -> TimeRow:
  """Aggregates one method's timed runs (mean ± sd over seeds)."""
  per_seed = {b: {t.run.seed: accuracy_at(t, b) for t in timed} for b in budgets}
  at_budget = {b: (study_runs.optional_stat(values.values()),
                   sum(v is None for v in values.values()))
               for b, values in per_seed.items()}
  runs = [t.run for t in timed]
  return TimeRow(
      method=method, seeds=tuple(r.seed for r in runs), at_budget=at_budget,
      per_seed=per_seed, acc_max=study_runs.mean_std([r.acc_max for r in runs]),
      selected_epochs=tuple(r.selected_epoch for r in runs),
      criteria=tuple(r.criterion for r in runs),
      acc_sel=study_runs.optional_stat(r.selected_accuracy for r in runs),
      seconds_per_iteration=study_runs.optional_stat(
          t.seconds_per_iteration for t in timed),
      first_minutes=study_runs.mean_std([t.core_seconds[0] / 60 for t in timed]),
      end_minutes=study_runs.mean_std([t.core_seconds[-1] / 60 for t in timed]),
      clocks=tuple(t.clock for t in timed))


# ---------------------------------------------------------------------------
# Paired verdicts at each budget.
# ---------------------------------------------------------------------------


def column(budget: float) -> str:
  """The cell's column name in the records: ``acc_at_15min``."""
  return f"acc_at_{budget_text(budget)}min"


def compare_at_budgets(by_method: Mapping[str, Sequence[Timed]], a: str, b: str,
                       budgets: Sequence[float], interval: str = "t"
                       ) -> tuple[list[tuple[float, paired_stats.Comparison]],
                                  list[float]]:
  """``a - b`` at each budget over the seeds of both that reached it: ``(budget, a
  one-cell Comparison)`` per budget with at least
  :data:`~dfkd_jax.study.paired_stats.MIN_SHARED_SEEDS` of them, and the budgets
  with fewer (not compared)."""
  runs_a = {t.run.seed: t for t in by_method.get(a, ())}
  runs_b = {t.run.seed: t for t in by_method.get(b, ())}
  comparisons, skipped = [], []
  for budget in budgets:
    values = {s: (accuracy_at(runs_a[s], budget), accuracy_at(runs_b[s], budget))
              for s in sorted(set(runs_a) & set(runs_b))}
    values = {s: v for s, v in values.items() if None not in v}
    if len(values) < paired_stats.MIN_SHARED_SEEDS:
      skipped.append(budget)
      continue
    difference = paired_stats.paired_difference([v[0] for v in values.values()],
                                                [v[1] for v in values.values()],
                                                interval)
    comparisons.append((budget, paired_stats.Comparison(a, b, tuple(values),
                                                        {column(budget): difference})))
  return comparisons, skipped


# ---------------------------------------------------------------------------
# The study: its runs with a cost and the paired cells.
# ---------------------------------------------------------------------------


Grouped = Mapping[str, Mapping[str, Sequence[study_runs.Run]]]


@dataclasses.dataclass
class TimeStudy:
  """The time table of a report: per dataset its timed runs by method, the runs left
  out (with why), the pairs with timed runs of both and those with runs of both but
  timed runs of one at most; the paired cells ``(dataset, budget, comparison)``, the
  budgets not compared per ``(dataset, a, b)``, ``--time_clock``, and the pairs whose
  runs were timed on different hosts (not compared by time)."""

  budgets: tuple[float, ...]
  timed: dict[str, dict[str, list[Timed]]]
  left_out: dict[str, list[tuple[study_runs.Run, str]]]
  pairs: dict[str, list[tuple[str, str]]]
  untimed: dict[str, list[tuple[str, str]]]
  cells: list[tuple[str, float, paired_stats.Comparison]]
  skipped: dict[tuple[str, str, str], list[float]]
  time_clock: str = "cpu"
  other_hosts: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, grouped: Grouped, budgets: Sequence[float],
         pairs: Sequence[tuple[str, str]], interval: str = "t",
         cpu_cores: int | None = None, time_clock: str = "cpu") -> "TimeStudy":
    """Costs the runs of ``grouped`` (:func:`timed_runs`) and compares ``pairs`` at
    each budget (:func:`compare_at_budgets`; the cells' ``adjusted_p`` is their own
    until :meth:`adjusted`) when all their timed runs name one host."""
    study = cls(tuple(budgets), {}, {}, {}, {}, [], {}, time_clock)
    for dataset, by_method in grouped.items():
      study.timed[dataset], study.left_out[dataset] = {}, []
      study.pairs[dataset], study.untimed[dataset] = [], []
      study.other_hosts[dataset] = []
      for method, runs in by_method.items():
        timed, left_out = timed_runs(runs, cpu_cores, time_clock)
        if timed:
          study.timed[dataset][method] = timed
        study.left_out[dataset] += left_out
      for a, b in pairs:
        if a in study.timed[dataset] and b in study.timed[dataset]:
          both = [*study.timed[dataset][a], *study.timed[dataset][b]]
          if len({t.run.host for t in both}) > 1:
            study.other_hosts[dataset].append((a, b))
            continue
          study.pairs[dataset].append((a, b))
          cells, skipped = compare_at_budgets(study.timed[dataset], a, b, budgets,
                                              interval)
          study.cells += [(dataset, x, c) for x, c in cells]
          if skipped:
            study.skipped[dataset, a, b] = skipped
        elif a in by_method and b in by_method:
          study.untimed[dataset].append((a, b))
    return study

  def adjusted(self, comparisons: Sequence[paired_stats.Comparison]) -> "TimeStudy":
    """The study with its cells replaced by ``comparisons`` (same order): Holm-adjusted
    over the report's family."""
    cells = [(d, b, c) for (d, b, _), c in zip(self.cells, comparisons, strict=True)]
    return dataclasses.replace(self, cells=cells)

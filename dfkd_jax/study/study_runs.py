"""A study's runs: the ``summary.json`` files under run directories, validated and
grouped by dataset and method, for :mod:`dfkd_jax.report`.

A directory that holds ``summary.json`` is one run; any other directory is searched
recursively, symbolic links followed; ``LABEL=DIR`` names the runs under ``DIR``
``LABEL`` instead of their method (an ablation gets its own row). Replicas marked failed
are left out, named; unfinished runs (fewer epochs than their config asks for) get rows
of their own, ``METHOD (unfinished)``, with a warning. Also the statistics over runs
(:class:`Stat`: mean ± sample std) and the cells that print them, which Table 1 and the
time table share.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dfkd_jax.metrics import summary as summary_lib

SUMMARY_FILE = summary_lib.SUMMARY_FILE
#: What the method of an unfinished run gets (:func:`load_runs`): its own row.
UNFINISHED = " (unfinished)"
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
    planned_epochs: the epochs its config asks for (``config.num_epochs``), or ``None``
      where the summary does not record it.
    selected_epoch: the 1-based epoch its criterion kept, or ``None``.
    train_seconds: ``[E]`` the program's cumulative training seconds per epoch, or
      ``None`` (runs made before it was recorded).
    cpu_cores: the program's CPU cores, or ``None`` (not recorded).
    train_cpu_seconds: ``[E]`` the program's cumulative process CPU seconds of training
      per epoch, or ``None`` (not recorded: not a CPU run in one process, or made
      before it was recorded).
    num_seeds: the seeds of its program (``config.num_seeds``; 1 when absent).
    iterations_per_epoch: ``config.iterations_per_epoch``, or ``None`` when absent.
    host: the machine its seconds were measured on (summary.json's ``host``, or the
      report's ``--host`` for a run that does not record it), or ``None``.
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
  planned_epochs: int | None = None
  selected_epoch: int | None = None
  train_seconds: np.ndarray | None = None
  cpu_cores: int | None = None
  num_seeds: int = 1
  iterations_per_epoch: int | None = None
  train_cpu_seconds: np.ndarray | None = None
  host: str | None = None

  @property
  def num_epochs(self) -> int:
    return int(self.test_accuracy.size)

  @property
  def unfinished(self) -> bool:
    """Fewer epochs than its config asks for: stopped early, killed or still running."""
    return self.planned_epochs is not None and self.num_epochs < self.planned_epochs

  @property
  def acc_last(self) -> float:
    """The last epoch's test accuracy (``Acc_last``)."""
    return float(self.test_accuracy[-1])


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


def find_summaries(workdirs: Iterable[str | os.PathLike],
                   log: Callable[[str], None] = print) -> list[pathlib.Path]:
  """The ``summary.json`` files of ``workdirs``, in a stable order, without duplicates.

  A directory that holds ``summary.json`` is one run; any other directory is searched
  recursively, following symbolic links (a folder of links to runs kept elsewhere; a
  link back up the tree is not followed twice); a path to a ``summary.json`` file is
  taken as it is. A link to nothing is skipped with a line to ``log``.

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
               else _summaries_below(path, log))
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


def _summaries_below(root: pathlib.Path,
                     log: Callable[[str], None]) -> list[pathlib.Path]:
  """Every ``summary.json`` below ``root``, symbolic links followed, each folder once."""
  found, seen = [], set()
  for folder, dirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:  # A link to a folder already searched (or to an ancestor).
      dirs[:] = []
      continue
    seen.add(real)
    dirs.sort()
    for name in sorted(dirs + files):
      entry = os.path.join(folder, name)
      if os.path.islink(entry) and not os.path.exists(entry):
        log(f"warning: skipped {entry}: a symbolic link to {os.readlink(entry)}, "
            "which does not exist")
    if SUMMARY_FILE in files:
      found.append(pathlib.Path(folder) / SUMMARY_FILE)
  return sorted(found)


def parse_summary(data: Any, path: str | os.PathLike) -> Run:
  """Validates one decoded ``summary.json`` (:class:`~dfkd_jax.metrics.summary.Summary`) as a run.

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
             collapsed=summary.collapsed,
             planned_epochs=_config_int(summary, "num_epochs"),
             selected_epoch=summary.selected_epoch,
             train_seconds=(np.asarray(summary.train_seconds, np.float64)
                            if summary.train_seconds else None),
             cpu_cores=summary.cpu_cores,
             num_seeds=_config_int(summary, "num_seeds") or 1,
             iterations_per_epoch=_config_int(summary, "iterations_per_epoch"),
             train_cpu_seconds=(np.asarray(summary.train_cpu_seconds, np.float64)
                                if summary.train_cpu_seconds else None),
             host=summary.host)


def _config_int(summary: summary_lib.Summary, key: str) -> int | None:
  """``config[key]`` when it is a positive integer, else ``None``."""
  value = summary.config.get(key) if isinstance(summary.config, dict) else None
  return (value if isinstance(value, int) and not isinstance(value, bool) and value > 0
          else None)


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
  of the tables, with a line naming it and why: its curve stops early. An unfinished
  run (fewer epochs than its ``config.num_epochs``: stopped early, killed or still
  running) is kept apart, as the method ``METHOD (unfinished)``, with a warning line:
  its Acc_max, epoch percentiles and last epoch are those of a shorter curve, so it
  enters no statistic (mean, std, paired difference, selection) of the finished runs.

  Raises:
    FileNotFoundError, ValueError: as :func:`find_summaries` and :func:`load_summary`;
      also two runs of the same dataset, method and seed (naming both paths).
  """
  runs, loaded = [], set()
  for workdir in workdirs:
    label, workdir = split_label(workdir)
    for path in find_summaries([workdir], log):
      if path in loaded:
        continue
      loaded.add(path)
      summary = summary_lib.Summary.load(path)
      if summary.failed is not None:
        log(f"left out {path}: the run failed ({summary.failed}) after "
            f"{summary.epochs_completed} epoch(s)")
        continue
      run = _run(summary, path)
      run = run if label is None else dataclasses.replace(run, method=label)
      if run.unfinished:
        log(f"warning: {path} is unfinished: {run.num_epochs} of {run.planned_epochs} "
            "epochs (stopped early, or still running); it has its own row, "
            f"{run.method + UNFINISHED!r}, outside the statistics of {run.method!r}")
        run = dataclasses.replace(run, method=run.method + UNFINISHED)
      runs.append(run)
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


def method_sort_key(method: str) -> tuple[int, str, bool]:
  """Position of ``method`` in :data:`METHOD_ORDER`; unknown names after, by name; the
  unfinished runs of a method right after it."""
  base = method.removesuffix(UNFINISHED)
  if base in METHOD_ORDER:
    return (METHOD_ORDER.index(base), "", method != base)
  return (len(METHOD_ORDER), base, method != base)


def group_runs(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
  """``{dataset: {method: [runs by seed]}}``, methods in table order."""
  out: dict[str, dict[str, list[Run]]] = {}
  for run in runs:
    out.setdefault(run.dataset, {}).setdefault(run.method, []).append(run)
  return {dataset: {m: sorted(by_method[m], key=lambda r: r.seed)
                    for m in sorted(by_method, key=method_sort_key)}
          for dataset, by_method in sorted(out.items())}


# ---------------------------------------------------------------------------
# Statistics over runs and their cells, shared by the report's tables.
# ---------------------------------------------------------------------------


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


def optional_stat(values) -> Stat | None:
  """:func:`mean_std` of the values that are not ``None``; ``None`` when none is."""
  values = [v for v in values if v is not None]
  return mean_std(values) if values else None


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

"""A run's ``summary.json``: the one contract between the trainer and the report.

:class:`Summary` is written by :mod:`dfkd_jax.run.trainer` after every epoch and read by
:mod:`dfkd_jax.report` (and any user tool); ``docs/contracts.md`` describes the fields.
:meth:`Summary.to_json` and :meth:`Summary.from_json` are the only places the JSON form
is written or parsed (``from_json`` rejects a malformed file with an error naming it and
the field).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Sequence

from dfkd_jax.metrics import curves
from dfkd_jax.metrics import selection

SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class Summary:
  """One run's results (the fields of ``summary.json``).

  Attributes:
    method: the method's name (any string; the report does not restrict it).
    dataset: the dataset the student was evaluated on.
    seed: the run's seed.
    teacher_accuracy: the teacher's test accuracy (%), or ``None``.
    test_accuracy: per-epoch test accuracy (%).
    acc_max: the best of ``test_accuracy`` (``None`` before the first epoch).
    learning_evolution: ``{percentile: (mean, var)}`` (LRA Table 1,
      :func:`dfkd_jax.metrics.curves.learning_evolution`).
    cumulative_mean_accuracy: the running mean of ``test_accuracy``.
    alignment: per-epoch mean of cos(grad L_acq, grad L_ret) (``None`` for epochs
      without retention steps), or ``None`` when no epoch has one.
    student_steps_per_second: training throughput (compilation excluded), or ``None``.
    epochs_completed: epochs evaluated so far.
    config: the run's config as a dict.
    failed: why the run stopped early (a replica whose loss became NaN/Inf while the
      others went on; its curves end at its last good epoch), or ``None``.
    criteria: per data-free selection criterion (:mod:`dfkd_jax.metrics.selection`), its
      per-epoch values (``None`` where not measured); empty for runs made before
      criteria existed.
    criterion: the criterion in force, or ``None`` (runs made before selection).
    selected_epoch: the 1-based epoch the criterion chose (never by a label), or
      ``None``.
    selected_accuracy: the test accuracy (%) of that epoch, for evaluation only.
    collapsed: why the run is collapsed (chance-level agreement), or ``None``.
    train_seconds: per completed epoch, the program's cumulative seconds of training
      iterations (compilation included, evaluation excluded; a program of N replicas:
      all N together), or empty (runs made before it was recorded).
    cpu_cores: the CPU cores the program had (``len(os.sched_getaffinity(0))`` at its
      first start), or ``None``: not a CPU run, a multi-process run, or a run made
      before it was recorded. A seed's cost in core-seconds is ``train_cpu_seconds /
      config.num_seeds`` where recorded, else ``train_seconds * cpu_cores /
      config.num_seeds``.
    train_cpu_seconds: per completed epoch, the program's cumulative process CPU
      seconds (``time.process_time()``, all its threads) over the same spans as
      ``train_seconds``: core-seconds, whatever else loads the machine; empty when not
      recorded (not a CPU run in one process, or a run made, or first started, before
      it was recorded).
    host: the machine the run's seconds were measured on (the CPU model, or the
      accelerator's device kind), or ``None`` (a run made before it was recorded). The
      report compares the time of two methods only on one host.
  """

  method: str
  dataset: str
  seed: int
  teacher_accuracy: float | None
  test_accuracy: tuple[float, ...]
  acc_max: float | None
  learning_evolution: dict[int, tuple[float, float]]
  cumulative_mean_accuracy: tuple[float, ...]
  alignment: tuple[float | None, ...] | None
  student_steps_per_second: float | None
  epochs_completed: int
  config: dict[str, Any]
  failed: str | None = None
  criteria: dict[str, tuple[float | None, ...]] = dataclasses.field(default_factory=dict)
  criterion: str | None = None
  selected_epoch: int | None = None
  selected_accuracy: float | None = None
  collapsed: str | None = None
  train_seconds: tuple[float, ...] = ()
  cpu_cores: int | None = None
  train_cpu_seconds: tuple[float, ...] = ()
  host: str | None = None

  @classmethod
  def of_run(cls, *, method: str, dataset: str, seed: int,
             teacher_accuracy: float | None, test_accuracy: Sequence[float],
             alignment: Sequence[float | None], student_steps_per_second: float | None,
             config: dict[str, Any], failed: str | None = None,
             criteria: dict[str, Sequence[float | None]] | None = None,
             criterion: str | None = None, collapsed: str | None = None,
             train_seconds: Sequence[float] = (),
             cpu_cores: int | None = None,
             train_cpu_seconds: Sequence[float] = (),
             host: str | None = None) -> "Summary":
    """The summary of a run's per-epoch history (metrics by :mod:`dfkd_jax.metrics.curves`);
    ``criterion`` (of ``criteria``) chooses ``selected_epoch``
    (:func:`dfkd_jax.metrics.selection.selected_epoch`)."""
    acc = tuple(float(a) for a in test_accuracy)
    if acc:
      metrics = curves.summarize(acc)
      evolution = {int(k): (v["mean"], v["var"])
                   for k, v in metrics["learning_evolution"].items()}
      acc_max, cumulative = metrics["acc_max"], tuple(metrics["cumulative_mean_accuracy"])
    else:
      evolution, acc_max, cumulative = {}, None, ()
    aligned = tuple(alignment) if any(a is not None for a in alignment) else None
    criteria = {k: tuple(v) for k, v in (criteria or {}).items()}
    chosen = (selection.selected_epoch(criterion, criteria, len(acc))
              if criterion is not None else None)
    return cls(method, dataset, seed, teacher_accuracy, acc, acc_max, evolution,
               cumulative, aligned, student_steps_per_second, len(acc), config, failed,
               criteria, criterion, None if chosen is None else chosen + 1,
               None if chosen is None else acc[chosen], collapsed,
               tuple(float(t) for t in train_seconds), cpu_cores,
               tuple(float(t) for t in train_cpu_seconds), host)

  def to_json(self) -> dict[str, Any]:
    """The JSON object of ``summary.json`` (``alignment``, ``failed``, ``train_seconds``,
    ``train_cpu_seconds``, ``cpu_cores`` and ``host`` only when set)."""
    out = {"method": self.method, "dataset": self.dataset, "seed": self.seed,
           "teacher_accuracy": self.teacher_accuracy,
           "test_accuracy": list(self.test_accuracy), "acc_max": self.acc_max,
           "learning_evolution": {str(k): {"mean": m, "var": v}
                                  for k, (m, v) in self.learning_evolution.items()},
           "cumulative_mean_accuracy": list(self.cumulative_mean_accuracy)}
    if self.alignment is not None:
      out["alignment"] = list(self.alignment)
    out.update(student_steps_per_second=self.student_steps_per_second,
               epochs_completed=self.epochs_completed, config=self.config)
    if self.train_seconds:
      out["train_seconds"] = list(self.train_seconds)
    if self.train_cpu_seconds:
      out["train_cpu_seconds"] = list(self.train_cpu_seconds)
    if self.cpu_cores is not None:
      out["cpu_cores"] = self.cpu_cores
    if self.host is not None:
      out["host"] = self.host
    if self.failed is not None:
      out["failed"] = self.failed
    if self.criterion is not None:
      out.update(criteria={k: list(v) for k, v in self.criteria.items()},
                 criterion=self.criterion, selected_epoch=self.selected_epoch,
                 selected_accuracy=self.selected_accuracy, collapsed=self.collapsed)
    return out

  @classmethod
  def from_json(cls, data: Any, path: str | os.PathLike = SUMMARY_FILE) -> "Summary":
    """Validates one decoded ``summary.json``.

    Raises:
      ValueError: a missing or malformed field, naming ``path`` and the field.
    """
    return _parse(data, path)

  def write(self, path: str | os.PathLike) -> None:
    """Writes the file atomically (a reader never sees half a summary)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Summary":
    """Reads and validates ``path``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not JSON, or not this contract; the message names the path.
    """
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found")
    try:
      data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
    return cls.from_json(data, path)


REQUIRED = ("method", "dataset", "seed", "test_accuracy", "acc_max",
            "learning_evolution", "cumulative_mean_accuracy")


def _number(value, what: str, path, allow_none: bool = False) -> float | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
      value):
    raise ValueError(f"{path}: {what} must be a finite number, got {value!r}")
  return float(value)


def _curve(value, what: str, path, allow_none: bool = False) -> tuple:
  if not isinstance(value, list):
    raise ValueError(f"{path}: {what} must be a list (one value per epoch), got "
                     f"{type(value).__name__}")
  return tuple(None if v is None and allow_none else _number(v, f"{what}[{i}]", path)
               for i, v in enumerate(value))


def _parse(data: Any, path) -> Summary:
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
  missing = [k for k in REQUIRED if k not in data]
  if missing:
    raise ValueError(f"{path}: missing field(s) {missing}; is it a summary.json written "
                     "by `python -m dfkd_jax.train`?")
  for key in ("method", "dataset"):
    if not isinstance(data[key], str) or not data[key]:
      raise ValueError(f"{path}: {key} must be a non-empty string, got {data[key]!r}")
  if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
    raise ValueError(f"{path}: seed must be an integer, got {data['seed']!r}")
  acc = _curve(data["test_accuracy"], "test_accuracy", path)
  cumulative = _curve(data["cumulative_mean_accuracy"], "cumulative_mean_accuracy", path)
  if len(cumulative) != len(acc):
    raise ValueError(f"{path}: cumulative_mean_accuracy has {len(cumulative)} values but "
                     f"test_accuracy has {len(acc)}")
  evolution = data["learning_evolution"]
  if not isinstance(evolution, dict) or (acc and not evolution):
    raise ValueError(f"{path}: learning_evolution must be a non-empty object "
                     "{percentile: {mean, var}}")
  parsed = {}
  for key, cell in evolution.items():
    if not str(key).isdigit() or not isinstance(cell, dict) or not {"mean", "var"} <= set(
        cell):
      raise ValueError(f"{path}: learning_evolution[{key!r}] must be an integer "
                       f"percentile mapped to {{'mean', 'var'}}, got {cell!r}")
    parsed[int(key)] = (_number(cell["mean"], f"learning_evolution[{key!r}].mean", path),
                        _number(cell["var"], f"learning_evolution[{key!r}].var", path))
  alignment = None
  if data.get("alignment") is not None:
    alignment = _curve(data["alignment"], "alignment", path, allow_none=True)
    if len(alignment) != len(acc):
      raise ValueError(f"{path}: alignment has {len(alignment)} values but test_accuracy "
                       f"has {len(acc)}")
  config = data.get("config", {})
  if not isinstance(config, dict):
    raise ValueError(f"{path}: config must be an object, got {type(config).__name__}")
  failed = data.get("failed")
  if failed is not None and not isinstance(failed, str):
    raise ValueError(f"{path}: failed must be a string (why the run stopped), got "
                     f"{failed!r}")
  return Summary(
      **_selection(data, acc, path),
      method=data["method"], dataset=data["dataset"], seed=data["seed"],
      teacher_accuracy=_number(data.get("teacher_accuracy"), "teacher_accuracy", path,
                               allow_none=True),
      test_accuracy=acc,
      acc_max=_number(data["acc_max"], "acc_max", path, allow_none=not acc),
      learning_evolution=dict(sorted(parsed.items())),
      cumulative_mean_accuracy=cumulative, alignment=alignment,
      student_steps_per_second=_number(data.get("student_steps_per_second"),
                                       "student_steps_per_second", path,
                                       allow_none=True),
      epochs_completed=int(data.get("epochs_completed", len(acc))), config=config,
      failed=failed, train_seconds=_seconds(data, "train_seconds", acc, path),
      cpu_cores=_cpu_cores(data.get("cpu_cores"), path),
      train_cpu_seconds=_seconds(data, "train_cpu_seconds", acc, path),
      host=_host(data.get("host"), path))


def _seconds(data: dict[str, Any], key: str, acc: tuple, path) -> tuple[float, ...]:
  """``train_seconds`` or ``train_cpu_seconds``: one number per epoch of
  ``test_accuracy``, or absent/null (a run made before it was recorded)."""
  if data.get(key) is None:
    return ()
  seconds = _curve(data[key], key, path)
  if len(seconds) != len(acc):
    raise ValueError(f"{path}: {key} has {len(seconds)} values but test_accuracy has "
                     f"{len(acc)}")
  return seconds


def _cpu_cores(value, path) -> int | None:
  """``cpu_cores``: a positive integer, or absent/null (not a CPU run, a multi-process
  run, or made before it was recorded)."""
  if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                            or value < 1):
    raise ValueError(f"{path}: cpu_cores must be a positive integer (the CPU cores the "
                     f"run had) or null, got {value!r}")
  return value


def _host(value, path) -> str | None:
  """``host``: a non-empty string, or absent/null (made before it was recorded)."""
  if value is not None and (not isinstance(value, str) or not value.strip()):
    raise ValueError(f"{path}: host must be a non-empty string (the CPU model or "
                     f"device kind the run was timed on) or null, got {value!r}")
  return value


def _selection(data: dict[str, Any], acc: tuple, path) -> dict[str, Any]:
  """The data-free selection fields (absent in summaries made before them)."""
  criteria = data.get("criteria") or {}
  if not isinstance(criteria, dict):
    raise ValueError(f"{path}: criteria must be an object {{name: [per epoch]}}")
  parsed = {str(k): _curve(v, f"criteria[{k!r}]", path, allow_none=True)
            for k, v in criteria.items()}
  criterion = data.get("criterion")
  if criterion is not None and not isinstance(criterion, str):
    raise ValueError(f"{path}: criterion must be a string, got {criterion!r}")
  epoch = data.get("selected_epoch")
  if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)
                            or not 1 <= epoch <= len(acc)):
    raise ValueError(f"{path}: selected_epoch must be an epoch in 1..{len(acc)}, got "
                     f"{epoch!r}")
  collapsed = data.get("collapsed")
  if collapsed is not None and not isinstance(collapsed, str):
    raise ValueError(f"{path}: collapsed must be a string or null, got {collapsed!r}")
  return dict(criteria=parsed, criterion=criterion, selected_epoch=epoch,
              selected_accuracy=_number(data.get("selected_accuracy"),
                                        "selected_accuracy", path, allow_none=True),
              collapsed=collapsed)

"""What a run records and writes besides checkpoints: its :class:`History`, the
:class:`Layout` of one seed's or many seeds' outputs, and :class:`Outputs`
(``metrics.jsonl``, ``summary.json``, TensorBoard, the epoch log line).

The host loop (:mod:`dfkd_jax.run.trainer`) keeps one History per replica whether there is
one seed or many; only :class:`Layout` knows the difference. The files are the contract
of ``docs/contracts.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from dfkd_jax.metrics import selection
from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.run.run_setup import Setup

SUMMARY_FILE = summary_lib.SUMMARY_FILE
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass
class History:
  """The host-side record of a run, saved (as JSON) with every checkpoint.

  Attributes:
    teacher_accuracy: the teacher's test accuracy (%), measured once.
    test_accuracy: the student's test accuracy (%) after each completed epoch.
    alignment: per completed epoch, the mean gradient cosine of its retention steps.
    student_steps_per_second: throughput so far (compilation excluded).
    epoch_cosines: the gradient cosines of the epoch in progress, so that a run resumed
      mid-epoch ends with the uninterrupted run's epoch mean.
    failed: why a replica stopped (a loss or its images became NaN/Inf), or ``None``;
      a failed replica records nothing more.
    criteria: per data-free selection criterion (:mod:`dfkd_jax.metrics.selection`), its value
      after each completed epoch (``None``: not measured, e.g. epochs of a run resumed
      from a checkpoint made before criteria existed, or NaN).
    collapsed: why the run is collapsed (:func:`dfkd_jax.metrics.selection.collapse`, decided
      anew at every epoch's end from the criteria and health signals), or ``None``.
    train_seconds: after each completed epoch, the seconds this program has spent in
      training iterations so far (each start's compiling first call included;
      evaluation, probes and checkpoints excluded; resumed runs add up). A program of
      N replicas records the time of all N.
    clock: the same count at the last save (the epoch in progress included), which a
      resumed run continues from.
    train_cpu_seconds: after each completed epoch, the process CPU seconds
      (``time.process_time()``, all its threads) this program has spent in the same
      spans as ``train_seconds``, resumed runs adding up; recorded on CPU in one process
      only (elsewhere the process's CPU time is not the cost), else empty.
    cpu_clock: the same count at the last save, which a resumed run continues from; or
      ``None``: not counted from the run's start (a checkpoint made before it was
      recorded, or a run not on CPU in one process), so ``train_cpu_seconds`` stays
      empty.
    cpu_cores: the CPU cores the program had at its first start (for a checkpoint made
      before they were recorded: at its first resume;
      :func:`dfkd_jax.run.trainer.cpu_cores`), or ``None`` (not a CPU run, or a
      multi-process one).
    host: the machine the run started on (:func:`dfkd_jax.run.trainer.host_name`: the
      CPU model, or the accelerator's device kind; for a checkpoint made before it was
      recorded: at its first resume), or ``None`` (not yet started).
  """

  teacher_accuracy: float | None = None
  test_accuracy: list[float] = dataclasses.field(default_factory=list)
  alignment: list[float | None] = dataclasses.field(default_factory=list)
  student_steps_per_second: float | None = None
  epoch_cosines: list[float] = dataclasses.field(default_factory=list)
  failed: str | None = None
  criteria: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
  collapsed: str | None = None
  train_seconds: list[float] = dataclasses.field(default_factory=list)
  clock: float = 0.0
  cpu_cores: int | None = None
  train_cpu_seconds: list[float] = dataclasses.field(default_factory=list)
  cpu_clock: float | None = 0.0
  host: str | None = None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "History":
    """A saved History; one saved before ``cpu_clock`` existed has ``cpu_clock=None``
    (its CPU seconds so far were not counted, so the run records none)."""
    fields = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
    fields.setdefault("cpu_clock", None)
    return cls(**fields)

  def end_epoch(self, accuracy: float, criteria: dict[str, float] | None = None,
                num_classes: int = 0, collapse_epochs: int = 0,
                finished: bool = True, criterion: str = "last",
                untrained_epochs: int = 0) -> None:
    """Records a finished epoch: its accuracy, its cosines' mean and its criteria and
    health signals (one missing for earlier epochs is padded with ``None``); marks the
    run collapsed when they say so (:func:`dfkd_jax.metrics.selection.collapse`; ``finished``:
    this is the run's last epoch; ``criterion``: the one in force; the first
    ``untrained_epochs`` are a warm-up without student steps, never collapsed)."""
    done = len(self.test_accuracy)
    self.test_accuracy.append(accuracy)
    self.alignment.append(float(np.mean(self.epoch_cosines)) if self.epoch_cosines
                          else None)
    self.epoch_cosines = []
    for name, value in (criteria or {}).items():
      values = self.criteria.setdefault(name, [])
      values.extend([None] * (done - len(values)))
      values.append(_json_float(value))
    if "agreement" in self.criteria or "fault" in self.criteria:
      self.collapsed = selection.collapse(self.criteria, num_classes, collapse_epochs,
                                          len(self.test_accuracy), finished,
                                          criterion, untrained_epochs)


def histories_from_json(d: dict[str, Any], num_replicas: int) -> list[History]:
  histories = ([History.from_json(h) for h in d["replicas"]] if "replicas" in d
               else [History.from_json(d)])
  if len(histories) != num_replicas:
    raise ValueError(f"the checkpoint holds {len(histories)} replica(s), the config "
                     f"{num_replicas} (config.num_seeds)")
  return histories


def summary(record: dict[str, Any] | ml_collections.ConfigDict, history: History,
            seed: int | None = None) -> summary_lib.Summary:
  """The :class:`~dfkd_jax.metrics.summary.Summary` of the run with config ``record``
  (``config.to_dict()``; a ConfigDict is converted), or of its replica with ``seed``
  (its config then records that seed); see ``docs/contracts.md``."""
  if isinstance(record, ml_collections.ConfigDict):
    record = record.to_dict()
  record = dict(record)
  if seed is not None:
    record["seed"] = seed
  return summary_lib.Summary.of_run(
      method=record["method"], dataset=record["dataset"], seed=record["seed"],
      teacher_accuracy=history.teacher_accuracy, test_accuracy=history.test_accuracy,
      alignment=history.alignment,
      student_steps_per_second=history.student_steps_per_second,
      config=record, failed=history.failed, criteria=history.criteria,
      criterion=record.get("selection", {}).get("criterion", "last"),
      collapsed=history.collapsed, train_seconds=history.train_seconds,
      cpu_cores=history.cpu_cores, train_cpu_seconds=history.train_cpu_seconds,
      host=history.host)


def replica_dir(workdir: pathlib.Path, seed: int) -> pathlib.Path:
  """Where replica ``seed`` of a ``num_seeds > 1`` run writes its summary."""
  return workdir / f"seed_{seed}"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the outputs of replica ``k`` go, and the run's result layout: the only
  places where one seed and many differ.

  One seed: ``WORKDIR/summary.json``, ``WORKDIR/tensorboard``, metric lines without ids,
  the summary itself as the result. Many: ``WORKDIR/seed_<s>/summary.json``,
  ``WORKDIR/tensorboard/seed_<s>``, ``replica`` and ``seed`` fields per metric line,
  ``{"replicas": [summary, ...]}``.
  """

  workdir: pathlib.Path
  seeds: tuple[int, ...]

  @property
  def replicas(self) -> bool:
    return len(self.seeds) > 1

  def summary_path(self, k: int) -> pathlib.Path:
    if not self.replicas:
      return self.workdir / SUMMARY_FILE
    return replica_dir(self.workdir, self.seeds[k]) / SUMMARY_FILE

  def summary_seed(self, k: int) -> int | None:
    """The seed replica ``k``'s summary records (``None``: the config's)."""
    return self.seeds[k] if self.replicas else None

  def tensorboard_dir(self, k: int) -> pathlib.Path:
    if not self.replicas:
      return self.workdir / "tensorboard"
    return self.workdir / "tensorboard" / f"seed_{self.seeds[k]}"

  def metric_ids(self, k: int) -> dict[str, int]:
    return {"replica": k, "seed": self.seeds[k]} if self.replicas else {}

  def make_dirs(self) -> None:
    for seed in self.seeds if self.replicas else ():
      replica_dir(self.workdir, seed).mkdir(exist_ok=True)

  def result(self, summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's result: the summary, or ``{"replicas": [...]}``."""
    return {"replicas": list(summaries)} if self.replicas else summaries[0]

  def history_json(self, histories: Sequence[History]) -> dict[str, Any]:
    """A checkpoint's ``history``: one History's JSON, or ``{"replicas": [...]}``."""
    return self.result([h.to_json() for h in histories])


def _json_float(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------
# Outputs: metrics.jsonl, summary.json, TensorBoard, log lines.
# ---------------------------------------------------------------------------


def _tensorboard_writer(folder: pathlib.Path, enabled: bool):
  """A tensorboardX writer into ``folder`` (no TensorFlow needed), or None."""
  if not enabled:
    return None
  import tensorboardX  # pylint: disable=g-import-not-at-top
  return tensorboardX.SummaryWriter(str(folder))


class Outputs:
  """What a run writes besides checkpoints; only process 0 writes (others: no-ops).

  TensorBoard event files (``WORKDIR/tensorboard``, or ``WORKDIR/tensorboard/seed_<s>``
  per replica; tensorboardX) get every iteration's metrics and each epoch's
  ``epoch/test_accuracy``, ``epoch/alignment`` and ``epoch/<criterion>``, at the
  iteration count; ``metrics.jsonl`` stays the contract. ``metrics.jsonl`` gets one
  line per iteration (per replica, with ``replica`` and ``seed`` fields), flushed
  before any checkpoint that covers it; on resume the lines after the checkpoint's
  iteration are dropped (the run redoes them). ``summary.json`` (per replica:
  ``seed_<s>/summary.json``) is rewritten after every epoch.
  """

  def __init__(self, layout: Layout, setup: Setup, log, primary: bool,
               completed_iterations: int):
    self.layout, self.log, self.primary = layout, log, primary
    self.record, self.seeds = setup.record, list(layout.seeds)
    self.per_epoch, self.num_epochs = setup.iterations_per_epoch, setup.num_epochs
    self.num_classes = setup.num_classes
    self.untrained_epochs = setup.untrained_epochs
    self._metrics = None
    self._tensorboard = [None] * len(self.seeds)
    if primary:
      _truncate_metrics(layout.workdir / METRICS_FILE, completed_iterations,
                        self.per_epoch)
      self._metrics = open(layout.workdir / METRICS_FILE, "a")
      left = completed_iterations < self.num_epochs * self.per_epoch
      self._tensorboard = [_tensorboard_writer(layout.tensorboard_dir(k),
                                               setup.tensorboard and left)
                           for k in range(len(self.seeds))]
      if setup.tensorboard and left:
        tensorboard = layout.workdir / "tensorboard"
        log(f"TensorBoard: every iteration's metrics in {tensorboard} "
            f"(view them with: tensorboard --logdir {tensorboard})")
      layout.make_dirs()

  def summary_path(self, k: int) -> pathlib.Path:
    return self.layout.summary_path(k)

  def _summary(self, k: int, history: History) -> summary_lib.Summary:
    return summary(self.record, history, self.layout.summary_seed(k))

  def _scalars(self, writer, step: int, scalars) -> None:
    for name, value in scalars.items():
      value = _json_float(value) if value is not None else None
      if value is not None:
        writer.add_scalar(name, value, step)

  def iteration(self, epoch: int, i: int, per_replica: Sequence[dict],
                skip: Sequence[int] = ()) -> None:
    """Writes an iteration's metrics (:func:`_per_replica`: one dict per replica)
    but those of the replicas in ``skip`` (failed at an earlier iteration)."""
    step = epoch * self.per_epoch + i + 1
    for k, values in enumerate(per_replica):
      if k in skip:
        continue
      if self._tensorboard[k]:
        self._scalars(self._tensorboard[k], step, values)
      if self._metrics:
        record = {"epoch": epoch + 1, "iteration": i + 1, **self.layout.metric_ids(k),
                  **{n: _json_float(v) for n, v in values.items()}}
        self._metrics.write(json.dumps(record) + "\n")
    if self._metrics:
      self._metrics.flush()

  def epoch(self, epoch: int, histories: Sequence[History], metrics, eta: str) -> None:
    step = (epoch + 1) * self.per_epoch
    for k, history in enumerate(histories):
      if self.primary:
        self._summary(k, history).write(self.summary_path(k))
      if self._tensorboard[k] and history.failed is None:
        # At the epoch's last iteration, beside its losses.
        self._scalars(self._tensorboard[k], step,
                      {"epoch/test_accuracy": history.test_accuracy[-1],
                       "epoch/alignment": history.alignment[-1],
                       **{f"epoch/{name}": values[-1]
                          for name, values in history.criteria.items()}})
        self._tensorboard[k].flush()
    self.log(_epoch_line(epoch, self.num_epochs, histories, self.seeds, metrics, eta,
                         self.num_classes, self.untrained_epochs))

  def finish(self, histories: Sequence[History]) -> dict[str, Any]:
    results = [self._summary(k, h) for k, h in enumerate(histories)]
    if self.primary:
      for k, result in enumerate(results):
        result.write(self.summary_path(k))
    return self.layout.result([r.to_json() for r in results])

  def close(self) -> None:
    if self._metrics:
      self._metrics.close()
    for writer in self._tensorboard:
      if writer:
        writer.close()


def _epoch_line(epoch: int, num_epochs: int, histories: Sequence[History], seeds,
                metrics, eta: str, num_classes: int = 0, untrained_epochs: int = 0) -> str:
  """The log line of a finished epoch: the student's accuracy, or each replica's, and
  what is wrong with a replica's run (collapsed) or with this epoch's student; an epoch
  of the first ``untrained_epochs`` (a warm-up without student steps) says so instead
  of calling its untrained student faulty."""
  if epoch < untrained_epochs:
    eta += (f"; warm-up epoch {epoch + 1} of {untrained_epochs}: synthesis only, the "
            f"student is not trained before epoch {untrained_epochs + 1}")
    num_classes = 0  # No fault to report: the untrained student is the plan.
  teacher = histories[0].teacher_accuracy
  live = [k for k, h in enumerate(histories) if h.failed is None]  # Failed: junk losses.
  loss = float(np.nanmean(np.asarray(metrics["student_loss"]).reshape(-1)[live]
                          if len(histories) > 1 else metrics["student_loss"]))
  if len(histories) == 1:
    h = histories[0]
    return (f"epoch {epoch + 1}/{num_epochs}: student {h.test_accuracy[-1]:.2f}% "
            f"(max {max(h.test_accuracy):.2f}%, teacher {teacher:.2f}%), student loss "
            f"{loss:.4f}{_criteria_text(h)}, {eta}"
            + _collapsed_text(histories, seeds, num_classes))
  accs = ", ".join(f"{h.test_accuracy[-1]:.2f}%" if h.failed is None else "failed"
                   for h in histories)
  return (f"epoch {epoch + 1}/{num_epochs}: students (seeds {seeds[0]}-{seeds[-1]}) "
          f"{accs} (teacher {teacher:.2f}%), mean student loss {loss:.4f}, {eta}"
          + _collapsed_text(histories, seeds, num_classes))


def _criteria_text(history: History) -> str:
  """``, probe agreement 0.93`` when the epoch has one (one run's epoch line)."""
  value = history.criteria.get("agreement", [None])[-1]
  return "" if value is None else f", probe agreement {value:.3f}"


def _collapsed_text(histories: Sequence[History], seeds, num_classes: int = 0) -> str:
  """The epoch line's note on collapsed runs, and on a faulty student of this epoch
  that the selection will not keep (empty when none is)."""
  notes = []
  for k, h in enumerate(histories):
    if h.failed is not None:
      continue
    who = f"seed {seeds[k]} " if len(histories) > 1 else ""
    if h.collapsed:
      notes.append(f"; WARNING {who}{h.collapsed}")
    elif num_classes and h.test_accuracy:
      fault = selection.epoch_faults(h.criteria, num_classes,
                                     len(h.test_accuracy))[-1]
      if fault:
        notes.append(f"; WARNING {who}this epoch's student is faulty: {fault}")
  return "".join(notes)


def _truncate_metrics(path: pathlib.Path, completed_iterations: int,
                      iterations_per_epoch: int) -> None:
  """Drops metric lines after the checkpoint's iteration (a resumed run redoes them)."""
  if not path.exists():
    return

  def iteration(line):
    record = json.loads(line)
    return (record["epoch"] - 1) * iterations_per_epoch + record["iteration"]

  kept = [line for line in path.read_text().splitlines()
          if line and iteration(line) <= completed_iterations]
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in kept))
  os.replace(tmp, path)

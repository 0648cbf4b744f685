"""The adversarial DFKD training loop as a library: ``run(config, workdir)``.

The host side of a run: it builds the :class:`~dfkd_jax.experiment.Setup`, compiles the
iteration of :mod:`dfkd_jax.iteration`, and per epoch of ``iterations_per_epoch``
iterations evaluates the student on the real test set, writes a checkpoint,
``metrics.jsonl`` and ``summary.json``. A SIGTERM (preemption) saves a checkpoint at the
next iteration boundary and raises :class:`Preempted`; checkpoints are numbered by
iterations done.

Rerunning the same command resumes from the latest checkpoint, at its exact iteration;
the result is the same as an uninterrupted run (all randomness derives from the seed and
the iteration counter). Multi-process runs: see :func:`run` and
:mod:`dfkd_jax.distributed`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dfkd_jax import data
from dfkd_jax import distributed
from dfkd_jax import evaluation
from dfkd_jax import experiment
from dfkd_jax import iteration as iteration_lib
from dfkd_jax import parallel


def make_eval_step(module):
  """Jitted ``(variables, images, labels, mask) -> correct`` (eval-mode BatchNorm)."""

  @jax.jit
  def eval_step(variables, images, labels, mask):
    logits = module.apply(variables, images, train=False)
    return evaluation.count_correct(logits, labels, mask)

  return eval_step


def accuracy(eval_step, variables, split, dataset_id, meta, batch_size, mesh) -> float:
  """Exact accuracy (%) on a whole split, batches sharded over the mesh.

  Every process holds the split but preprocesses and feeds only the rows of its own
  devices; the count of correct predictions is reduced over the whole mesh, so each
  process gets the accuracy one process would.
  """
  correct = 0
  for start in range(0, len(split.labels), batch_size):
    def make_rows(rows, start=start):
      return tuple(data.eval_rows(split, dataset_id, start + rows,
                                  image_shape=meta.input_shape,
                                  normalization=(meta.mean, meta.std)))
    images, labels, mask = parallel.global_batch(make_rows, batch_size, mesh)
    correct += int(eval_step(variables, images, labels, mask))
  return 100.0 * correct / len(split.labels)


# ---------------------------------------------------------------------------
# The host loop: evaluation, checkpoints, metrics, summary.
# ---------------------------------------------------------------------------

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN or Inf; the last good checkpoint is left as it was."""


class Preempted(Exception):
  """A preemption notice (SIGTERM) stopped the run after it saved a checkpoint.

  Rerunning the same command resumes from that checkpoint.
  """

  def __init__(self, step: int, checkpoint_dir: pathlib.Path):
    super().__init__(f"preempted: saved iteration {step} to {checkpoint_dir}; rerun the "
                     "same command to resume")
    self.step = step


def _write_json_atomic(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
  os.replace(tmp, path)


def _json_float(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def summary(config, history: dict[str, Any]) -> dict[str, Any]:
  """The ``summary.json`` contract (see ``docs/contracts.md``)."""
  out = {"method": config.method, "dataset": config.dataset, "seed": config.seed,
         "teacher_accuracy": history["teacher_accuracy"]}
  if history["test_accuracy"]:
    out.update(evaluation.summarize(history["test_accuracy"]))
  else:
    out.update(test_accuracy=[], acc_max=None, learning_evolution={},
               cumulative_mean_accuracy=[])
  alignment = history["alignment"]
  if any(a is not None for a in alignment):
    out["alignment"] = alignment
  out["student_steps_per_second"] = history["student_steps_per_second"]
  out["epochs_completed"] = len(history["test_accuracy"])
  out["config"] = config.to_dict()
  return out


def _tensorboard_writer(workdir: pathlib.Path, enabled: bool, log):
  """A ``(step, scalars) -> None`` writer, or ``None`` without TensorFlow."""
  if not enabled:
    return None
  if not all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard")):
    log("TensorBoard event files disabled: tensorflow and tensorboard are not both "
        "installed; metrics.jsonl has the same numbers")
    return None
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

  def write(step, scalars):
    with writer.as_default():
      for name, value in scalars.items():
        if value is not None:
          tf.summary.scalar(name, value, step=step)
    writer.flush()

  return write


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        log: Callable[[str], None] = print, mesh=None) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir`` and returns its summary.

  Checkpoints are numbered by iterations done (``state.step``): one at the end of every
  epoch, and one at the iteration boundary after a preemption notice (SIGTERM). The
  JSON ``history`` saved with each holds the completed epochs' accuracies and the
  current epoch's alignment values so far, so a resumed run continues from the exact
  iteration and ends equal to an uninterrupted one.

  Multi-process (after :func:`dfkd_jax.distributed.initialize`): every process calls
  ``run`` with the same arguments; all take part in the iterations, the evaluation and
  the checkpoints (``workdir`` must be one directory shared by all hosts); only process
  0 logs and writes ``summary.json``, ``metrics.jsonl`` and TensorBoard files.

  Raises:
    ValueError, FileNotFoundError: bad config or missing teacher/dataset, before any
      compilation.
    NonFiniteLossError: a loss became NaN/Inf; the latest checkpoint is the last good one.
    Preempted: SIGTERM; the checkpoint of the current iteration is saved.
  """
  workdir = distributed.filesystem_path(workdir, "workdir").absolute()
  primary = distributed.is_primary()
  if not primary:
    log = lambda message: None  # pylint: disable=unnecessary-lambda-assignment
  with distributed.PreemptionWatch() as preemption:
    return _run(config, workdir, log, mesh, primary, preemption)


def _run(config, workdir: pathlib.Path, log, mesh, primary: bool,
         preemption: distributed.PreemptionWatch) -> dict[str, Any]:
  """The host loop of :func:`run`."""
  setup = experiment.build(config, log, mesh)
  mesh = setup.mesh
  dataset_id = setup.teacher_meta.dataset
  test_split = data.load_split(dataset_id, "test", data_dir=config.data_dir or None)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint_dir = workdir / CHECKPOINT_DIR
  per_epoch = config.iterations_per_epoch

  state = iteration_lib.init_state(setup)
  specs = iteration_lib.state_specs(state)
  state = parallel.put(state, mesh, specs)
  teacher_vars = parallel.replicate(setup.teacher_variables, mesh)
  eval_student = make_eval_step(setup.student)

  manager = ocp.CheckpointManager(
      checkpoint_dir,
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep,
                                           create=True))
  history = {"teacher_accuracy": None, "test_accuracy": [], "alignment": [],
             "student_steps_per_second": None}
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    state, history = restored.state, restored.history
  start = int(jax.device_get(state.step))
  start_epoch = start // per_epoch
  if len(history["test_accuracy"]) != start_epoch:
    raise ValueError(
        f"the checkpoint in {checkpoint_dir} is at iteration {start} = epoch "
        f"{start / per_epoch:g} with config.iterations_per_epoch={per_epoch}, but it "
        f"records {len(history['test_accuracy'])} evaluated epochs; resume with the "
        "config.iterations_per_epoch it was made with")
  if latest is not None and start_epoch >= config.num_epochs:
    log(f"{checkpoint_dir} holds the finished run ({start_epoch} epochs)")
  elif latest is not None:
    log(f"resumed from {checkpoint_dir}: epoch {start_epoch + 1}, iteration "
        f"{start % per_epoch + 1} of {per_epoch}")
  # Alignment (grad cosine) values of the epoch in progress, saved with mid-epoch
  # checkpoints so that a resumed epoch's mean is the uninterrupted one.
  cosines = list(history.pop("epoch_cosines", []))
  if primary:
    _truncate_metrics(workdir / METRICS_FILE, start, per_epoch)

  if history["teacher_accuracy"] is None:
    eval_teacher = make_eval_step(setup.teacher)
    history["teacher_accuracy"] = accuracy(
        eval_teacher, teacher_vars, test_split, dataset_id, setup.teacher_meta,
        config.eval_batch_size, mesh)
    log(f"teacher {setup.teacher_meta.arch}: {history['teacher_accuracy']:.2f}% on the "
        f"{dataset_id} test set")

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave({**history, "epoch_cosines": cosines})))
    manager.wait_until_finished()

  iteration = iteration_lib.make_iteration(setup, state)
  tensorboard = _tensorboard_writer(workdir, config.tensorboard, log) if primary else None
  steps_per_iteration = config.student_steps
  total = config.num_epochs * per_epoch
  train_time, timed_iterations = 0.0, 0
  run_start = time.time()
  with contextlib.ExitStack() as stack:
    metrics_file = (stack.enter_context(open(workdir / METRICS_FILE, "a")) if primary
                    else None)
    for step in range(start, total):
      epoch, i = divmod(step, per_epoch)
      t0 = time.time()
      state, metrics = iteration(state, teacher_vars)
      metrics = jax.device_get(metrics)  # Blocks: one small transfer per iteration.
      if step > start:  # The first call compiles.
        train_time += time.time() - t0
        timed_iterations += 1
      bad = [k for k, v in metrics.items()
             if k in ("generator_loss", "student_loss", "loss_acq")
             and not np.isfinite(v)]
      if bad:
        raise NonFiniteLossError(
            f"{', '.join(bad)} became {[float(metrics[k]) for k in bad]} at epoch "
            f"{epoch + 1}, iteration {i + 1}; the run stopped without saving, and the "
            f"last good checkpoint ({manager.latest_step()}) in "
            f"{checkpoint_dir} is intact. Lower the learning rates or "
            "meta.alpha, or use compute_dtype=float32.")
      if metrics_file:
        record = {"epoch": epoch + 1, "iteration": i + 1,
                  **{k: _json_float(v) for k, v in metrics.items()}}
        metrics_file.write(json.dumps(record) + "\n")
      if int(metrics["retention_steps"]) > 0 and math.isfinite(metrics["grad_cosine"]):
        cosines.append(float(metrics["grad_cosine"]))
      if metrics_file:  # Every line up to a checkpoint is on disk before it.
        metrics_file.flush()
      saved = False
      if i + 1 == per_epoch:
        saved = True
        variables = {"params": state.student.params,
                     "batch_stats": state.student.batch_stats}
        acc = accuracy(eval_student, variables, test_split, dataset_id,
                       setup.teacher_meta, config.eval_batch_size, mesh)
        history["test_accuracy"].append(acc)
        history["alignment"].append(float(np.mean(cosines)) if cosines else None)
        cosines = []
        if timed_iterations:
          history["student_steps_per_second"] = (
              timed_iterations * steps_per_iteration / train_time)
        save(step + 1)
        if primary:
          _write_json_atomic(workdir / SUMMARY_FILE, summary(config, history))
        if tensorboard:
          tensorboard(epoch + 1, {"test_accuracy": acc,
                                  "alignment": history["alignment"][-1],
                                  **{k: _json_float(v) for k, v in metrics.items()}})
        done = step + 1 - start
        eta = (time.time() - run_start) / done * (total - step - 1)
        log(f"epoch {epoch + 1}/{config.num_epochs}: student {acc:.2f}% "
            f"(max {max(history['test_accuracy']):.2f}%, teacher "
            f"{history['teacher_accuracy']:.2f}%), student loss "
            f"{float(metrics['student_loss']):.4f}, ETA {eta / 60:.1f} min")
      # Every process asks at every iteration (the sync protocol needs it).
      if preemption.reached(step + 1) and step + 1 < total:
        if not saved:
          save(step + 1)
        manager.close()
        log(f"preemption notice (SIGTERM): stopped at epoch {epoch + 1}, iteration "
            f"{i + 1} of {per_epoch}, checkpoint saved in {checkpoint_dir}; rerun the "
            "same command to resume")
        raise Preempted(step + 1, checkpoint_dir)
  manager.close()
  result = summary(config, history)
  if primary:
    _write_json_atomic(workdir / SUMMARY_FILE, result)
  return result


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

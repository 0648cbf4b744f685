"""The adversarial DFKD training loop as a library: ``run(config, workdir)``.

The host side of a run: it builds the :class:`~dfkd_jax.run.run_setup.Setup`
(:func:`dfkd_jax.run.experiment.build`; below that nothing reads the config), compiles the
iteration of :mod:`dfkd_jax.run.iteration`, and per epoch of ``iterations_per_epoch``
iterations evaluates the student on the real test set, records the data-free selection
criteria (:mod:`dfkd_jax.run.probe`, :mod:`dfkd_jax.metrics.selection`: one more jitted call, which
reads the training state and never writes it), writes a checkpoint (never rotating out
the one of the epoch the criterion in force keeps), ``metrics.jsonl`` and
``summary.json``. A SIGTERM (preemption) saves a checkpoint at the
next iteration boundary and raises :class:`Preempted`; checkpoints are numbered by
iterations done. Every save runs inside
:meth:`dfkd_jax.parallel.distributed.PreemptionWatch.saving`, so a second Ctrl-C never cuts one
short.

Rerunning the same command resumes from the latest checkpoint, at its exact iteration;
the result is the same as an uninterrupted run (all randomness derives from the seed and
the iteration counter). Multi-process runs: see :func:`run` and
:mod:`dfkd_jax.parallel.distributed`.

Replicas (``config.num_seeds = N > 1``): N runs with seeds ``seed .. seed + N - 1`` in
one program (:func:`dfkd_jax.run.train_state.init_replicas`). The host loop keeps one
History (and one metrics dict per iteration) per replica whether there is one seed or
many; only the output paths and the summary layout differ (:class:`~dfkd_jax.run.run_outputs.Layout`). Each
replica has its own History and
``WORKDIR/seed_<seed>/summary.json`` (the one-run contract), ``metrics.jsonl`` is shared
(a ``replica`` and a ``seed`` field per line), TensorBoard writes
``WORKDIR/tensorboard/seed_<seed>``, and each checkpoint holds all replicas. A replica
whose loss or generated images become NaN/Inf is marked failed in its summary (which
keeps its last good epoch) and the others go on; the run stops only when every replica
has failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import platform
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from dfkd_jax.core import workdir as workdir_lib
from dfkd_jax.data import datasets as data
from dfkd_jax.methods import presets as methods
from dfkd_jax.metrics import selection
from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.parallel import distributed
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import checkpoints as checkpoints_lib
from dfkd_jax.run import evaluation
from dfkd_jax.run import experiment
from dfkd_jax.run import iteration as iteration_lib
from dfkd_jax.run import probe as probe_lib
from dfkd_jax.run import progress
from dfkd_jax.run import run_outputs
from dfkd_jax.run import train_state
from dfkd_jax.run.run_setup import Setup

SUMMARY_FILE = summary_lib.SUMMARY_FILE
CHECKPOINT_DIR = "checkpoints"
# Losses whose non-finite value stops the run (as do non-finite generated images,
# metric nonfinite_images: the losses need not show them).
WATCHED_LOSSES = ("generator_loss", "student_loss", "loss_acq")


class NonFiniteLossError(FloatingPointError):
  """A loss or the generated images became NaN or Inf; the last good checkpoint is left
  as it was."""


class Preempted(Exception):
  """A preemption notice (SIGTERM) stopped the run after it saved a checkpoint.

  Rerunning the same command resumes from that checkpoint.
  """

  def __init__(self, step: int, checkpoint_dir: pathlib.Path,
               exit_code: int = distributed.PREEMPTED_EXIT_CODE):
    super().__init__(f"preempted: saved iteration {step} to {checkpoint_dir}; rerun the "
                     "same command to resume")
    self.step = step
    self.exit_code = exit_code  # 130 after Ctrl-C.


# ---------------------------------------------------------------------------
# The host loop.
# ---------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        log: Callable[[str], None] = print, mesh=None,
        allow_config_change: Sequence[str] = (),
        method: methods.Method | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir`` and returns its summary.

  Checkpoints are numbered by iterations done (``state.step``): one at the end of every
  epoch, and one at the iteration boundary after a preemption notice (SIGTERM). The
  :class:`History` saved with each holds the completed epochs' accuracies and the
  current epoch's alignment values so far, so a resumed run continues from the exact
  iteration and ends equal to an uninterrupted one.

  Multi-process (after :func:`dfkd_jax.parallel.distributed.initialize`): every process calls
  ``run`` with the same arguments; all take part in the iterations, the evaluation and
  the checkpoints (``workdir`` must be one directory shared by all hosts); only process
  0 logs and writes ``summary.json``, ``metrics.jsonl`` and TensorBoard files.

  With ``config.num_seeds > 1`` the result is ``{"replicas": [summary, ...]}``, one
  summary per seed, each also in ``WORKDIR/seed_<seed>/summary.json``.

  A workdir holds one run (:mod:`dfkd_jax.core.workdir`): process 0 locks it for the run,
  and a resume or rerun whose result-deciding fields differ from the recorded run's
  is refused unless the field is in ``allow_config_change`` (``num_epochs`` only).

  ``method`` is :func:`dfkd_jax.run.run_config.validate`'s result for ``config`` on ``mesh``
  when the caller validated already (the entry point, before a first-use teacher);
  without it the config is validated here.

  Raises:
    ValueError, FileNotFoundError: bad config or missing teacher/dataset, before any
      compilation; workdir.ConfigChangedError: the workdir holds another run.
    PermissionError: the workdir cannot be written (before anything is loaded).
    workdir.WorkdirInUseError: another live process trains in the workdir.
    NonFiniteLossError: a loss or the generated images became NaN/Inf; the latest
      checkpoint is the last good one.
    Preempted: SIGTERM; the checkpoint of the current iteration is saved.
  """
  workdir = distributed.filesystem_path(workdir, "workdir").absolute()
  primary = distributed.is_primary()
  if not primary:
    log = lambda message: None  # pylint: disable=unnecessary-lambda-assignment
  workdir_lib.check_writable(workdir)
  workdir_lib.check_allowed(allow_config_change)
  setup = experiment.build(config, log, mesh, method)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.Lock(workdir, enabled=primary), \
      distributed.PreemptionWatch(log) as preemption:
    changed = workdir_lib.check_record(
        workdir, setup.record, dataclasses.asdict(setup.teacher_meta),
        allow_config_change, write=primary, log=log,
        trained=workdir_lib.has_checkpoint(workdir / CHECKPOINT_DIR))
    for field, (old, new) in changed.items():
      log(f"config.{field} changed from {old} to {new} with --allow_config_change "
          f"(recorded in {workdir / workdir_lib.RECORD_FILE})")
    return _run(setup, workdir, log, primary, preemption, _new_program(setup, changed))


def _new_program(setup: Setup, changed: dict[str, tuple[Any, Any]]) -> str | None:
  """Why the iteration compiled for the run the workdir holds does not fit this one:
  a changed field that is compiled into it (``None``: none is).

  Of the fields a resume may change (``--allow_config_change``), ``num_epochs`` is
  compiled into the iteration when it sets the length of the student's cosine
  learning-rate schedule (:func:`dfkd_jax.math.optimizers.student`); the persistent
  compilation cache keys programs by their text, so the earlier length's does not fit.
  """
  schedule = setup.record["student_optimizer"]["schedule"]
  if "num_epochs" not in changed or schedule != "cosine":
    return None
  old, new = changed["num_epochs"]
  return (f"config.num_epochs changed from {old} to {new}, and the student's cosine "
          "learning-rate schedule spans num_epochs: its length is compiled into the "
          "iteration, so the program compiled for the earlier length does not fit")


def _restore(checkpoints: checkpoints_lib.Checkpoints, state, num_replicas: int,
             per_epoch: int, num_epochs: int,
             log) -> tuple[Any, list[run_outputs.History], int]:
  """The state, histories (one per replica) and iteration to start from (the latest
  checkpoint's, if any)."""
  restored = checkpoints.restore(state)
  if restored is None:
    return state, [run_outputs.History() for _ in range(num_replicas)], 0
  state, history = restored
  histories = run_outputs.histories_from_json(history, num_replicas)
  start = int(np.max(jax.device_get(state.step)))  # The same in every replica.
  start_epoch = start // per_epoch
  evaluated = {len(h.test_accuracy) for h in histories if h.failed is None}
  if evaluated and evaluated != {start_epoch}:
    raise ValueError(
        f"the checkpoint in {checkpoints.directory} is at iteration {start} = epoch "
        f"{start / per_epoch:g} with config.iterations_per_epoch={per_epoch}, but it "
        f"records {', '.join(map(str, sorted(evaluated)))} evaluated epochs; resume "
        "with the config.iterations_per_epoch it was made with")
  if start_epoch > num_epochs:
    raise ValueError(f"{checkpoints.directory} holds {start_epoch} evaluated epochs, more "
                     f"than config.num_epochs={num_epochs}; a run cannot be shortened "
                     "below what it has done")
  if start_epoch == num_epochs:
    log(f"{checkpoints.directory} holds the finished run ({start_epoch} epochs)")
  else:
    log(f"resumed from {checkpoints.directory}: epoch {start_epoch + 1}, iteration "
        f"{start % per_epoch + 1} of {per_epoch}")
  return state, histories, start


def _per_replica(metrics, replicas: bool) -> list[dict[str, Any]]:
  """An iteration's host metrics as one dict of scalars per replica (one for one run)."""
  if not replicas:
    return [metrics]
  return [{n: v[k] for n, v in metrics.items()}
          for k in range(len(next(iter(metrics.values()))))]


def _non_finite(metrics) -> str | None:
  """Which watched losses of one replica's metrics are NaN/Inf, or whether its
  generated images are (``nonfinite_images``, the fraction of their values)."""
  values = {n: float(metrics[n]) for n in WATCHED_LOSSES if n in metrics}
  bad = [n for n, v in values.items() if not math.isfinite(v)]
  what = [f"{', '.join(bad)} became {[values[n] for n in bad]}"] if bad else []
  images = float(metrics.get("nonfinite_images", 0.0))
  if not images == 0.0:  # Also a NaN fraction.
    what.append(f"the generated images became non-finite ({images:.1%} of their values "
                f"NaN/Inf)")
  return "; ".join(what) or None


def _check_finite(per_replica: Sequence[dict], epoch: int, i: int,
                  checkpoints: checkpoints_lib.Checkpoints,
                  histories: Sequence[run_outputs.History],
                  seeds: Sequence[int], log, compute_dtype: str = "float32") -> list[int]:
  """Marks a replica whose loss is NaN/Inf failed; stops the run when none is left.

  A failed replica's History keeps its last good epoch and records nothing more. A
  single run is one replica: its NaN stops it (:class:`NonFiniteLossError`).

  Returns:
    The replicas that failed at this iteration.
  """
  where = f"at epoch {epoch + 1}, iteration {i + 1}"
  fix = ("Lower the learning rates or meta.alpha" + (
      "." if compute_dtype == "float32" else ", or use compute_dtype=float32."))
  newly = [(k, bad) for k, (history, metrics) in enumerate(zip(histories, per_replica))
           if history.failed is None and (bad := _non_finite(metrics))]
  for k, bad in newly:
    histories[k].failed = f"{bad} {where}"
  if newly and all(h.failed is not None for h in histories):
    which = "every replica failed, the last: " if len(histories) > 1 else ""
    latest = checkpoints.latest_step()
    kept = (f"the last good checkpoint ({latest}) in {checkpoints.directory} is intact"
            if latest is not None else "no checkpoint was saved before it (a rerun "
            "starts from the beginning)")
    raise NonFiniteLossError(
        f"{which}{newly[-1][1]} {where}; the run stopped without saving, and {kept}. "
        f"{fix}")
  for k, bad in newly:
    log(f"replica {k} (seed {seeds[k]}): {bad} {where}; it is marked failed in its "
        f"summary.json (which keeps its last good epoch), the other replicas go on. "
        f"{fix}")
  return [k for k, _ in newly]


def _accuracy(setup: Setup, eval_step, variables, split) -> float | list[float]:
  """Test accuracy (%) of a classifier fed as the teacher is (its preprocessing); a
  list, one per replica, for a replicas eval step."""
  meta = setup.teacher_meta
  return evaluation.accuracy(eval_step, variables, split, setup.evaluation_dataset,
                             image_shape=meta.input_shape,
                             normalization=(meta.mean, meta.std),
                             batch_size=setup.eval_batch_size, mesh=setup.mesh)


def _first_call(iteration, state, teacher_vars, log, every: float, resumed: bool,
                new_program: str | None):
  """The first iteration, which compiles: said before, during and after, and why a
  resumed run compiles again (``new_program``, :func:`_new_program`; or, when it does
  so without a reason known here, that the cache held no program for it)."""
  hits = progress.compile_cache_hits()
  cache = jax.config.jax_compilation_cache_dir
  where = f"cached in {cache} for later runs" if cache else "no compilation cache"
  first_line = ((f"compiling the training iteration again: {new_program} (minutes on "
                 f"CPU; {where})") if new_program else
                (f"compiling the training iteration (minutes on CPU the first time; "
                 f"{where})"))
  first_line += ("; XLA may print a 'Very slow compile?' notice meanwhile: it is not an "
                 "error")
  with progress.Heartbeat(log, "compiling", first_line, every) as heartbeat:
    state, metrics = iteration(state, teacher_vars)
    metrics = jax.device_get(metrics)
  loaded = progress.compile_cache_hits() > hits
  how = " (loaded from the compilation cache)" if loaded else ""
  log(f"compiled and ran the first iteration in {heartbeat.seconds:.1f} s{how}")
  if resumed and cache and not loaded and not new_program:
    log(f"the resumed run compiled its iteration again: no config field compiled into "
        f"it changed, but the compilation cache in {cache} held no program for it (it "
        "was cleared, jax, the devices or XLA_FLAGS changed, or the earlier compile "
        f"took under {jax.config.jax_persistent_cache_min_compile_time_secs:g} s and "
        "was not kept)")
  return state, metrics


def _progress(epoch, i, per_epoch, num_epochs, throughput, metrics, remaining) -> str:
  """The rate-limited progress line (with replicas, the losses' mean over replicas)."""
  rate = throughput.per_second
  loss = lambda name: float(np.nanmean(metrics[name]))  # pylint: disable=unnecessary-lambda-assignment
  # No rate (nor ETA) until one is measured: the compiling first call does not count.
  return (f"epoch {epoch + 1}/{num_epochs}, iteration {i + 1}/{per_epoch}: "
          + (f"{rate:.2f} it/s, " if rate else "")
          + f"student loss {loss('student_loss'):.4f}, "
          f"generator loss {loss('generator_loss'):.4f}"
          + (f", {throughput.eta(remaining)}" if rate else ""))


def _run(setup: Setup, workdir: pathlib.Path, log, primary: bool,
         preemption: distributed.PreemptionWatch,
         new_program: str | None = None) -> dict[str, Any]:
  """The host loop of :func:`run`: one History per replica, one seed or many;
  ``new_program`` says why a resumed run's iteration is compiled again
  (:func:`_new_program`)."""
  mesh, meta, seeds = setup.mesh, setup.teacher_meta, setup.seeds
  per_epoch, num_epochs = setup.iterations_per_epoch, setup.num_epochs
  total = num_epochs * per_epoch
  replicas = train_state.replicated(setup)
  layout = run_outputs.Layout(workdir, seeds)
  with progress.Heartbeat(log, "preparing the run", "preparing the run: test set, "
                          "models, checkpoints, teacher accuracy ...",
                          setup.progress_seconds):
    test_split = data.load_split(setup.evaluation_dataset, "test",
                                 data_dir=setup.data_dir, image_size=setup.image_size,
                                 log=log)
    state = train_state.init_replicas(setup)
    state = parallel.put(state, mesh,
                         train_state.state_specs(state, setup.replay, replicas))
    teacher_vars = parallel.replicate(setup.teacher_variables, mesh)
    checkpoints = checkpoints_lib.Checkpoints(workdir / CHECKPOINT_DIR,
                                              setup.checkpoints_to_keep, log, primary)
    state, histories, start = _restore(checkpoints, state, len(seeds), per_epoch,
                                       num_epochs, log)
    probe = _probe(setup, checkpoints, start)
    cores = cpu_cores(mesh)
    _record_cores(histories, cores, log)
    _record_host(histories, host_name(mesh), log)
    checkpoints.keep(_selected_steps(histories, setup.criterion, per_epoch))
    if histories[0].teacher_accuracy is None:
      teacher_accuracy = _accuracy(
          setup, evaluation.make_eval_step(setup.teacher), teacher_vars, test_split)
      for history in histories:
        history.teacher_accuracy = teacher_accuracy
      log(f"teacher {meta.arch}: {teacher_accuracy:.2f}% on the "
          f"{setup.evaluation_dataset} test set")
      warning = data.teacher_accuracy_warning(meta, teacher_accuracy,
                                              setup.evaluation_dataset)
      if warning:
        log(warning)
  if replicas:
    log(f"{len(seeds)} replicas in one program: seeds {seeds[0]}-{seeds[-1]}, summaries "
        f"in {run_outputs.replica_dir(workdir, seeds[0]).parent}/seed_<seed>")
  iteration = iteration_lib.make_iteration(setup, state)
  epoch_end = probe_lib.make_epoch_end(setup, state) if probe is not None else None
  eval_student = evaluation.make_eval_step(setup.student, replicas)
  throughput = progress.Throughput()
  progress_line = progress.RateLimited(log, setup.progress_seconds)
  outputs = run_outputs.Outputs(layout, setup, log, primary, start)
  clock = _Clock(histories, cpu=cores is not None)
  with contextlib.closing(outputs):
    for step in range(start, total):
      epoch, i = divmod(step, per_epoch)
      t0, cpu0 = time.time(), time.process_time()
      if step == start:  # The first call compiles.
        state, metrics = _first_call(iteration, state, teacher_vars, log,
                                     setup.progress_seconds, start > 0, new_program)
      else:
        state, metrics = iteration(state, teacher_vars)
        metrics = jax.device_get(metrics)  # Blocks: one small transfer per iteration.
        throughput.add(time.time() - t0)
      clock.add(time.time() - t0, time.process_time() - cpu0)
      per_replica = _per_replica(metrics, replicas)
      newly_failed = _check_finite(per_replica, epoch, i, checkpoints, histories, seeds,
                                   log, setup.compute_dtype.name)
      outputs.iteration(epoch, i, per_replica, skip=[  # Failed before this iteration.
          k for k, h in enumerate(histories) if h.failed and k not in newly_failed])
      progress_line(lambda: _progress(epoch, i, per_epoch, num_epochs, throughput,
                                      metrics, total - step - 1))
      _record_cosines(histories, per_replica)
      saved = i + 1 == per_epoch
      if saved:
        student = {"params": state.student.params,
                   "batch_stats": state.student.batch_stats}
        accuracies = _accuracy(setup, eval_student, student, test_split)
        criteria = [{}] * len(seeds)
        if epoch_end is not None:  # The data-free criteria, on the device.
          probe, values = epoch_end(state, probe, teacher_vars)
          criteria = _per_replica(jax.device_get(values), replicas)
        clock.stamp(epoch_end=True)
        _end_epoch(histories, accuracies if replicas else [accuracies],
                   throughput.per_second, setup, criteria)
        checkpoints.keep(_selected_steps(histories, setup.criterion, per_epoch))
        with preemption.saving(step + 1):  # A second Ctrl-C waits for it.
          checkpoints.save(step + 1, state, layout.history_json(histories), probe)
        outputs.epoch(epoch, histories, metrics, throughput.eta(total - step - 1))
      # Every process asks at every iteration (the sync protocol needs it).
      if preemption.reached(step + 1) and step + 1 < total:
        with preemption.saving(step + 1):
          if not saved:
            clock.stamp(epoch_end=False)
            checkpoints.save(step + 1, state, layout.history_json(histories), probe)
          checkpoints.close()
        log(f"{preemption.notice}: stopped at epoch {epoch + 1}, iteration "
            f"{i + 1} of {per_epoch}, checkpoint saved in {checkpoints.directory}; "
            "rerun the same command to resume")
        raise Preempted(step + 1, checkpoints.directory, preemption.exit_code)
    checkpoints.close()
    return outputs.finish(histories)


def cpu_cores(mesh) -> int | None:
  """The CPU cores this program may run on (``len(os.sched_getaffinity(0))``, which
  ``taskset`` sets), on CPU in one process; ``None`` on accelerators, and for a
  multi-process program, whose processes may share cores or not."""
  if mesh.devices.flat[0].platform != "cpu" or jax.process_count() > 1:
    return None
  if not hasattr(os, "sched_getaffinity"):  # macOS: no affinity, all cores.
    return os.cpu_count()
  return len(os.sched_getaffinity(0))


def host_name(mesh) -> str:
  """The kind of machine whose time the run records (summary.json's ``host``): the CPU
  model on CPU (``/proc/cpuinfo``'s ``model name``, else :func:`platform.processor` or
  :func:`platform.machine`), the device kind on an accelerator (``NVIDIA H100 80GB
  HBM3``, ``TPU v5 lite``). Core-seconds measured on two hosts are not comparable."""
  device = mesh.devices.flat[0]
  if device.platform != "cpu":
    return str(device.device_kind)
  with contextlib.suppress(OSError):
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name" and value.strip():
        return value.strip()
  return platform.processor() or platform.machine() or "unknown CPU"


def _record_once(histories: Sequence[run_outputs.History], field: str, value) -> Any:
  """Sets ``field`` of each History to ``value`` if it holds none yet (the run's first
  start); returns what it held before (``None``: nothing)."""
  recorded = getattr(histories[0], field)
  if recorded is None:
    for history in histories:
      setattr(history, field, value)
  return recorded


def _record_host(histories: Sequence[run_outputs.History], host: str, log) -> None:
  """Records ``host`` in each History once, at the run's first start (for a checkpoint
  made before hosts were recorded: at its first resume); a resume on another host keeps
  the first, with a line (the run's seconds then mix two machines)."""
  recorded = _record_once(histories, "host", host)
  if recorded is not None and recorded != host:
    log(f"warning: this run started on {recorded!r} and resumes on {host!r}; "
        f"summary.json keeps host={recorded!r}, but the seconds of its epochs from here "
        "on are this machine's: its time to accuracy mixes two hosts")


def _record_cores(histories: Sequence[run_outputs.History], cores: int | None,
                  log) -> None:
  """Records ``cores`` in each History once, at the run's first start; a resume on
  another count keeps the first, with a line (its ``train_seconds`` mix both)."""
  recorded = _record_once(histories, "cpu_cores", cores)
  if recorded is not None and recorded != cores:
    log(f"warning: this run started with {recorded} CPU core(s) and resumes with "
        f"{cores}; summary.json keeps cpu_cores={recorded}, so the report's core-seconds "
        "of its epochs from here on are counted at that rate")


class _Clock:
  """Seconds of training iterations, wall (``time.time()``) and process CPU
  (``time.process_time()``, all threads), carried in every History (``clock``,
  ``cpu_clock``) across resumes and stamped into ``train_seconds`` and
  ``train_cpu_seconds`` at each epoch's end.

  The CPU count runs only when ``cpu`` (on CPU in one process: elsewhere the process's
  CPU time is not the run's cost) and every History has counted it from the run's start
  (a checkpoint made before it has ``cpu_clock=None``); otherwise each History's
  ``cpu_clock`` is ``None`` and its ``train_cpu_seconds`` empty (absent from
  summary.json, which then cannot hold a curve shorter than the accuracy's). The same
  holds for the wall clock of a run resumed from a checkpoint made before
  ``train_seconds`` was recorded (fewer stamps than epochs): it records none."""

  def __init__(self, histories: Sequence[run_outputs.History], cpu: bool):
    self.histories = histories
    self.seconds = max(h.clock for h in histories)  # A resumed run goes on from it.
    self.wall = all(len(h.train_seconds) >= len(h.test_accuracy) for h in histories)
    if not self.wall:
      for history in histories:
        history.train_seconds = []
    counted = cpu and all(h.cpu_clock is not None for h in histories)
    self.cpu_seconds = max(h.cpu_clock for h in histories) if counted else None
    if not counted:
      for history in histories:
        history.cpu_clock, history.train_cpu_seconds = None, []

  def add(self, seconds: float, cpu_seconds: float) -> None:
    self.seconds += seconds
    if self.cpu_seconds is not None:
      self.cpu_seconds += cpu_seconds

  def stamp(self, epoch_end: bool) -> None:
    for history in self.histories:
      history.clock = round(self.seconds, 3)
      if self.cpu_seconds is not None:
        history.cpu_clock = round(self.cpu_seconds, 3)
      if epoch_end and history.failed is None:
        if self.wall:
          history.train_seconds.append(history.clock)
        if self.cpu_seconds is not None:
          history.train_cpu_seconds.append(history.cpu_clock)


def _end_epoch(histories: Sequence[run_outputs.History], accuracies: Sequence[float],
               iterations_per_second: float | None, setup: Setup,
               criteria: Sequence[dict[str, float]]) -> None:
  """Records a finished epoch (accuracy, criteria) in each live replica's History."""
  for history, accuracy, values in zip(histories, accuracies, criteria):
    if history.failed is None:
      history.end_epoch(accuracy, values, setup.num_classes, setup.collapse_epochs,
                        finished=len(history.test_accuracy) + 1 == setup.num_epochs,
                        criterion=setup.criterion,
                        untrained_epochs=setup.untrained_epochs)
      if iterations_per_second:
        history.student_steps_per_second = iterations_per_second * setup.student_steps


def _probe(setup: Setup, checkpoints: checkpoints_lib.Checkpoints, start: int):
  """The run's probe set on the mesh (:mod:`dfkd_jax.run.probe`): the restored checkpoint's,
  or a fresh one; ``None`` without criteria (``probe_size`` 0)."""
  if not setup.probe_size:
    return None
  probe = probe_lib.put(probe_lib.init_replicas(setup), setup)
  restored = checkpoints.restore_probe(probe) if start else None
  return probe if restored is None else restored


def _selected_steps(histories: Sequence[run_outputs.History], criterion: str,
                    per_epoch: int) -> set[int]:
  """The checkpoint steps of the epochs the criterion chooses, one per replica."""
  steps = set()
  for history in histories:
    epoch = selection.selected_epoch(criterion, history.criteria,
                                     len(history.test_accuracy))
    if epoch is not None:
      steps.add((epoch + 1) * per_epoch)
  return steps


def _record_cosines(histories: Sequence[run_outputs.History],
                    per_replica: Sequence[dict]) -> None:
  """Keeps each live replica's gradient cosine of an iteration with retention."""
  for history, metrics in zip(histories, per_replica):
    cosine = float(metrics["grad_cosine"])
    if history.failed is None and int(metrics["retention_steps"]) > 0 and math.isfinite(
        cosine):
      history.epoch_cosines.append(cosine)

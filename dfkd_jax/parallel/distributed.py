"""Multi-process start-up and preemption: TPU pod slices, multi-node GPU clusters.

JAX's own distributed runtime does the work; this module decides when to start it and
turns a preemption notice into a stop that every process agrees on.

* :func:`initialize` starts ``jax.distributed`` when the run is multi-process: explicit
  ``coordinator_address / num_processes / process_id``, ``JAX_COORDINATOR_ADDRESS`` in
  the environment, a SLURM job step with more than one task, or a Cloud TPU VM (JAX's
  cluster plugins then find the coordinator, the process count and this process's id).
  A plain single-process run starts nothing.
* :class:`PreemptionWatch` tells the training loop when to checkpoint and exit after a
  SIGTERM (TPU maintenance, SLURM preemption or requeue, ``scancel``). With
  ``jax.distributed`` running, its preemption sync manager owns SIGTERM (it installs
  its own handler) and :func:`jax.experimental.multihost_utils.reached_preemption_sync_point`
  picks the same iteration on every process, even when only one process was signalled;
  in a single process a Python handler sets a flag. A first Ctrl-C (SIGINT) is such a
  notice too (in a multi-process run it is passed on as this process's SIGTERM); a
  second one ends the process at once, even inside a compilation, but never inside a
  checkpoint save (:meth:`PreemptionWatch.saving`): a save under way is finished first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import re
import signal
import threading
from typing import Callable, Mapping

import jax
from jax.experimental import multihost_utils

# Exit status of a run stopped by a preemption notice after saving its checkpoint:
# EX_TEMPFAIL ("try again later"); launchers rerun the same command to resume.
PREEMPTED_EXIT_CODE = 75
# Exit status of a run stopped by Ctrl-C: the shells' 128 + SIGINT.
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


# PCI ids of Cloud TPU chips: Google's vendor id and the chips' device ids (v3, v4,
# v5p, v5e, v6e, TPU7x and PLC, the ids JAX's TPU start-up looks for). The gVNIC network
# card shares the vendor id, so the vendor alone does not say "TPU".
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063",
                              "0x006f", "0x0076"})


def _on_cloud_tpu_vm(pci_devices: str | os.PathLike = "/sys/bus/pci/devices") -> bool:
  """Whether this host has TPU chips attached through PCI."""
  for device in pathlib.Path(pci_devices).glob("*"):
    try:
      vendor = (device / "vendor").read_text().strip()
      device_id = (device / "device").read_text().strip()
    except OSError:
      continue
    if vendor == _GOOGLE_PCI_VENDOR and device_id in _TPU_PCI_DEVICES:
      return True
  return False


def _slurm_tasks(environ: Mapping[str, str]) -> int:
  """Tasks of this SLURM job step (0 outside a step that JAX's SLURM plugin can read)."""
  if not all(v in environ for v in _SLURM_VARS):
    return 0
  # SLURM_NTASKS is the allocation's; an `srun -n K` step inside it runs K tasks.
  return int(environ.get("SLURM_STEP_NUM_TASKS") or environ["SLURM_NTASKS"])


def detect(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, environ: Mapping[str, str] | None = None,
           on_cloud_tpu_vm: Callable[[], bool] | None = None) -> str | None:
  """Why this run is multi-process (a short reason), or ``None`` for a single process.

  Raises:
    ValueError: explicit values that cannot describe a run, naming them and the fix.
  """
  environ = os.environ if environ is None else environ
  explicit = (coordinator_address, num_processes, process_id)
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if process_id is not None and (process_id < 0 or (
      num_processes is not None and process_id >= num_processes)):
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                     f"{num_processes}); processes are numbered 0, 1, ..., N-1")
  if num_processes == 1 and coordinator_address is None:
    return None  # --num_processes=1 forces a single process (e.g. on one TPU VM).
  if any(v is not None for v in explicit):
    if num_processes is None and process_id is not None:
      raise ValueError(f"--process_id={process_id} needs --num_processes too")
    return "flags"
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if _slurm_tasks(environ) > 1:
    return "SLURM"
  if (on_cloud_tpu_vm or _on_cloud_tpu_vm)():
    return "Cloud TPU"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               log: Callable[[str], None] = print) -> bool:
  """Starts ``jax.distributed`` if this run is multi-process (see :func:`detect`).

  Must run before anything touches a JAX backend. Returns whether it started (or had
  already been started) the distributed runtime.
  """
  if jax.distributed.is_initialized():
    return True
  reason = detect(coordinator_address, num_processes, process_id)
  if reason is None:
    return False
  if reason == "SLURM" and num_processes is None:
    num_processes = _slurm_tasks(os.environ)
  # Unset values are filled in by JAX's cluster plugins (SLURM, Cloud TPU, ...).
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  log(f"jax.distributed ({reason}): process {jax.process_index()} of "
      f"{jax.process_count()}, {jax.local_device_count()} local of "
      f"{jax.device_count()} devices")
  return True


def is_primary() -> bool:
  """Whether this process writes summaries and logs (process 0)."""
  return jax.process_index() == 0


class PreemptionWatch:
  """Context manager: ``reached(step)`` is True once all processes should stop.

  Call ``reached`` after every iteration with the iteration counter (increasing by one,
  the same on all processes); when it returns True, save a checkpoint and exit.

  Ctrl-C: Python runs a signal handler only between bytecodes of the main thread, which
  can sit in one XLA compilation or iteration for minutes. So the C-level handler's
  wake-up byte (:func:`signal.set_wakeup_fd`) is read by a thread that answers at once:
  the first Ctrl-C is logged as a stop at the next iteration boundary, a second ends
  the process (exit 130) with one line, without saving more; the checkpoints already
  saved stay and the same command resumes from the latest. A second Ctrl-C during a
  save (the loop wraps every save in :meth:`saving`) waits for that save to finish, so
  no checkpoint is left half-written and none that the save rotates out is lost. After
  a stop by Ctrl-C the process keeps that answer until it ends (the run is stopping
  anyway): a further Ctrl-C while it unwinds or runs its exit handlers ends it at once
  with one line, never with a ``KeyboardInterrupt`` traceback (during the interpreter's
  exit handlers it is ignored: the process is ending).
  """

  def __init__(self, log: Callable[[str], None] = print):
    self._log = log
    self._signalled = False
    self._previous = None
    self._previous_sigint = None
    self._previous_wakeup = None
    self._pipe = None
    self._thread = None
    self._save_lock = threading.Lock()
    self._saving_step = None
    self.distributed = False
    self.interrupted = False  # Ctrl-C (SIGINT) was pressed.

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self._signalled = True

  @property
  def notice(self) -> str:
    """What stopped the run, for its log line."""
    return "Ctrl-C" if self.interrupted else "preemption notice (SIGTERM)"

  @property
  def exit_code(self) -> int:
    return INTERRUPTED_EXIT_CODE if self.interrupted else PREEMPTED_EXIT_CODE

  def __enter__(self) -> "PreemptionWatch":
    self.distributed = jax.distributed.is_initialized()
    if threading.current_thread() is not threading.main_thread():
      return self  # Signal handlers can only be set from the main thread.
    # jax.distributed's preemption notifier already traps SIGTERM; replacing its
    # handler would hide the notice from the other processes.
    if not self.distributed:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # nohup, background jobs.
      self._watch_ctrl_c()
    return self

  def _watch_ctrl_c(self) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    self._pipe = (read_end, write_end)
    # The Python-level handler only replaces KeyboardInterrupt; the thread acts.
    self._previous_sigint = signal.signal(signal.SIGINT, lambda signum, frame: None)
    self._previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._read_signals, args=(read_end,),
                                    daemon=True, name="ctrl-c watch")
    self._thread.start()

  def _read_signals(self, read_end: int) -> None:
    try:
      while chunk := os.read(read_end, 64):
        for signum in chunk:
          if signum == signal.SIGINT:
            self._on_ctrl_c()
    finally:
      os.close(read_end)

  @contextlib.contextmanager
  def saving(self, step: int):
    """Context manager around the save of checkpoint ``step``: a second Ctrl-C that
    arrives meanwhile ends the process only once the save is complete."""
    with self._save_lock:
      self._saving_step = step
      try:
        yield
      finally:
        self._saving_step = None

  def _stop_now(self) -> None:
    """Ends the process (exit 130) with one line, after any save under way."""
    waited = not self._save_lock.acquire(blocking=False)
    if waited:
      step = self._saving_step
      self._save_lock.acquire()  # Never released: the process ends below.
      line = (f"Ctrl-C again: stopped once the checkpoint under way ({step}) was "
              "complete; rerun the same command to resume from it")
    else:
      line = ("Ctrl-C again: stopped at once, without saving; the checkpoints saved "
              "so far are kept: rerun the same command to resume from the latest")
    os.write(2, line.encode() + b"\n")
    os._exit(INTERRUPTED_EXIT_CODE)  # pylint: disable=protected-access

  def _on_ctrl_c(self) -> None:
    if self.interrupted:
      self._stop_now()
    self.interrupted = True
    if self.distributed:  # jax's notifier: every process stops at the same iteration.
      os.kill(os.getpid(), signal.SIGTERM)
    self._log("Ctrl-C: stopping with a checkpoint at the end of the current iteration "
              "(press Ctrl-C again to stop at once, without saving)")

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    if self._pipe is not None:
      # After a Ctrl-C the process is stopping: a further one ends it with one line
      # (the Python-level handler runs between bytecodes of the unwinding main thread
      # and of its exit handlers) instead of a KeyboardInterrupt traceback.
      # Python resets a handled signal to its default while the interpreter finalizes,
      # after the exit handlers: from the first of them on, one is ignored.
      signal.signal(signal.SIGINT, self._after_stop if self.interrupted
                    else self._previous_sigint)
      if self.interrupted:
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
      signal.set_wakeup_fd(self._previous_wakeup)
      os.close(self._pipe[1])  # The thread reads the end of the pipe and stops.
      self._thread.join(timeout=5)
      self._pipe = self._thread = None

  def _after_stop(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self._stop_now()

  def reached(self, step: int) -> bool:
    if self.distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled or self.interrupted


def filesystem_path(path: str | os.PathLike, what: str) -> pathlib.Path:
  """``path`` as a ``pathlib.Path``; a URL (``gs://``, ``s3://``, ...) is a clear error.

  Run directories and teachers are written with local file operations (atomic renames,
  appends), so a bucket must be mounted as a filesystem; a multi-host run needs one that
  every host mounts. Without this check ``pathlib`` would turn ``gs://b/run`` into a
  local folder ``gs:/b/run`` and the run's outputs would silently stay on one host.

  Args:
    path: the directory given by the user.
    what: how the user gave it (a flag or config field), for the message.

  Raises:
    ValueError: ``path`` is a URL.
  """
  text = os.fspath(path)
  if _URL.match(text):
    raise ValueError(
        f"{what}={text!r} is a URL; dfkd_jax writes checkpoints, summaries and teachers "
        "with local file operations. Give a filesystem path: for a cloud bucket, mount "
        "it (e.g. gcsfuse) on every host and pass the mount point")
  return pathlib.Path(text)

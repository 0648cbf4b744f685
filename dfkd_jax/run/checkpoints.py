"""A run's orbax checkpoints: the training state and its JSON history, per step.

* A checkpoint that does not restore (truncated or zeroed data, missing metadata) is
  reported with its cause; the run falls back to the newest one that restores, and
  process 0 moves the bad ones aside to ``<step>.corrupt`` (never deleted) so that the
  user can inspect them.
* Saves are synchronous (the trainer waits for each one anyway). When one fails, the
  writer threads orbax started for it are joined before the error leaves
  :meth:`Checkpoints.save`: none is left to fail again while the interpreter shuts down
  ("cannot schedule new futures after shutdown", a "coroutine was never awaited" warning).
* A save that fails for want of space removes its partial ``<step>.orbax-checkpoint-tmp``
  folder and raises one line naming the last good checkpoint; orbax's and tensorstore's
  own reports of it (a traceback per failed write, ~150 lines) are not printed.

* The keep-latest-N rotation never deletes the steps named by :meth:`Checkpoints.keep`
  (the data-free selection's chosen epochs, :mod:`dfkd_jax.metrics.selection`): an orbax
  preservation policy keeps a checkpoint that is among the latest N *or* kept.
* A checkpoint may hold a third item, ``probe`` (:mod:`dfkd_jax.run.probe`); checkpoints
  made before it existed restore without it.

The trainer owns what the history means (:class:`dfkd_jax.run.run_outputs.History`); here it is
a JSON-able dict.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import shutil
import sys
import threading
import time
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


def disk_full(error: BaseException) -> bool:
  """Whether a save failed for want of space: an ``ENOSPC``/``EDQUOT`` OSError, or
  tensorstore's ``RESOURCE_EXHAUSTED`` (a ValueError whose text holds the OS error)."""
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  text = str(error)
  return "No space left on device" in text or "Disk quota exceeded" in text


class _HeldLibraryErrors(logging.Filter):
  """Holds the error records of orbax (absl logger) and asyncio ("Task exception was
  never retrieved") until the save's outcome is known."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and (
        record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in record.pathname):
      self.records.append(record)
      return False
    return True


_LOGGERS = ("absl", "asyncio")


def _closed_loop_callback(unraisable) -> bool:
  """tensorstore's write callbacks that arrive after orbax closed its event loop."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


class _LateDiskFullReports(logging.Filter):
  """Drops the reports of a failed full-disk save that come after it returned:
  asyncio's "Task/Future exception was never retrieved" of its writes (logged when the
  tasks are collected)."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and disk_full(error))
                or "No space left on device" in record.getMessage())


_LATE_FILTER = _LateDiskFullReports()


def _silence_late_disk_full_reports() -> None:
  """Installed once, after a full-disk failure (the process is about to end with its
  one-line error): the late asyncio reports and tensorstore's "Event loop is closed"
  callbacks of the failed writes are dropped."""
  for name in _LOGGERS:
    if _LATE_FILTER not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_LATE_FILTER)
  drop_closed_loop_callbacks()


def drop_closed_loop_callbacks() -> None:
  """Drops, from now on, tensorstore's "Event loop is closed" callbacks of reads or
  writes that failed (a traceback each at exit, after the caller's one-line error)."""
  if getattr(sys.unraisablehook, "dfkd_jax_drops_closed_loop_callbacks", False):
    return
  next_hook = sys.unraisablehook

  def hook(unraisable):
    if not _closed_loop_callback(unraisable):
      next_hook(unraisable)

  hook.dfkd_jax_drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


_WRITER_JOIN_SECONDS = 60.0


def _join_library_writers(running_before: set[threading.Thread]) -> None:
  """Waits (up to a minute in all) for the threads orbax started during a failed save.

  The first failed write ends the save, while its sibling writes may still run; a writer
  left running when the process exits fails again at interpreter shutdown, with a
  traceback after our one-line error. orbax's writers are its own ``threading.Thread``
  subclasses (the thread pools' workers, which never end, are not), whose own ``join``
  re-raises the thread's error: ``threading.Thread.join`` only waits.
  """
  deadline = time.monotonic() + _WRITER_JOIN_SECONDS
  for thread in threading.enumerate():
    if (thread not in running_before and type(thread).__module__.startswith("orbax.")
        and thread is not threading.current_thread()):
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def _quiet_failed_save():
  """Holds the libraries' reports while saving; re-emits them unless the save failed
  for want of space (then our one line says it all, and
  :func:`_silence_late_disk_full_reports` drops what comes after).
  """
  held = _HeldLibraryErrors()
  loggers = [logging.getLogger(name) for name in _LOGGERS]
  for logger in loggers:
    logger.addFilter(held)
  previous_hook = sys.unraisablehook
  late = []
  sys.unraisablehook = lambda u: late.append(u) if _closed_loop_callback(u) else (
      previous_hook(u))
  full = False
  running_before = set(threading.enumerate())
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # Re-raised below.
    _join_library_writers(running_before)   # Their reports are held too.
    full = disk_full(e)
    raise
  finally:
    for logger in loggers:
      logger.removeFilter(held)
    sys.unraisablehook = previous_hook
    if full:
      _silence_late_disk_full_reports()
    else:
      for record in held.records:
        logging.getLogger(record.name).handle(record)
      for unraisable in late:
        previous_hook(unraisable)


class _KeptSteps(ocp.checkpoint_managers.PreservationPolicy):
  """Preserves the steps in a set the owner updates (read at every rotation)."""

  def __init__(self):
    self.steps: set[int] = set()

  def should_preserve(self, checkpoints, *, context):
    del context
    return [c.step in self.steps for c in checkpoints]


class Checkpoints:
  """The orbax checkpoints of one run: ``state``, a JSON ``history`` and optionally a
  ``probe`` per step; the latest ``max_to_keep`` and the :meth:`keep` steps are kept."""

  def __init__(self, directory: pathlib.Path, max_to_keep: int,
               log: Callable[[str], None], primary: bool):
    self.directory, self.log, self.primary = pathlib.Path(directory), log, primary
    self._kept = _KeptSteps()
    policies = ocp.checkpoint_managers
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False,
            preservation_policy=policies.AnyPreservationPolicy(
                [policies.LatestN(n=max_to_keep), self._kept])))
    self.restored_step: int | None = None

  def keep(self, steps) -> None:
    """Steps never rotated out from now on (those kept before and not named here are
    rotated out as usual at the next save)."""
    self._kept.steps = {int(s) for s in steps}

  def restore_probe(self, probe):
    """The ``probe`` item of the restored step in ``probe``'s structure, or ``None``
    when that checkpoint has none (made before probes existed) or another shape (the
    probe's size changed: a fresh probe is used, with a note)."""
    step = self.restored_step
    if step is None or not (self.directory / str(step) / "probe").is_dir():
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, probe)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          probe=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors.
      cause = (str(e).strip().splitlines() or [""])[0][:200]
      self.log(f"the probe set of checkpoint {step} does not restore ({cause}); the "
               "selection criteria start from a fresh probe")
      return None
    return restored.probe

  def _restore_step(self, step: int, abstract):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    return restored.state, restored.history

  def restore(self, state) -> tuple[Any, dict[str, Any]] | None:
    """``(state, history)`` of the newest checkpoint that restores into ``state``'s
    structure, or ``None`` when there is none."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(step, abstract)
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors.
        cause = (str(e).strip().splitlines() or [""])[0][:300]
        failed.append(step)
        self.log(f"checkpoint {step} in {self.directory} does not restore "
                 f"({type(e).__name__}: {cause}); trying the one before it")
        continue
      if failed:
        self._move_aside(failed)
        self.log(f"resuming from checkpoint {step} instead")
      self.restored_step = step
      return restored
    if failed:
      raise ValueError(f"no checkpoint in {self.directory} restores (steps "
                       f"{', '.join(map(str, failed))}; see the causes above): it holds "
                       "another run or damaged files; use a new --workdir (nothing was "
                       "moved or deleted)")
    return None

  def _move_aside(self, steps) -> None:
    if self.primary:
      for step in steps:
        target = self.directory / f"{step}.corrupt"
        n = 1
        while target.exists():
          target, n = self.directory / f"{step}.corrupt.{n}", n + 1
        os.replace(self.directory / str(step), target)
        self.log(f"moved the damaged checkpoint to {target}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("dfkd_jax: corrupt checkpoints moved")
    self.manager.reload()

  def save(self, step: int, state, history: dict[str, Any], probe=None) -> None:
    """Saves checkpoint ``step`` (with ``probe`` unless ``None``) and waits for it.

    Raises:
      OSError: the filesystem is full (one line, naming the last good checkpoint);
        the partial folder is removed.
      Exception: any other failure, as orbax raised it (its partial folder removed).
    """
    try:
      with _quiet_failed_save():
        items = dict(state=ocp.args.StandardSave(state),
                     history=ocp.args.JsonSave(history))
        if probe is not None:
          items["probe"] = ocp.args.StandardSave(probe)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors.
      for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)
      if not disk_full(e):
        raise
      last = self.latest_step()
      kept = (f"the last good checkpoint ({last}) is intact" if last is not None else
              "no earlier checkpoint exists, so the rerun starts over")
      error = OSError(f"could not save checkpoint {step} to {self.directory} (No space "
                      f"left on device); {kept}: free space and rerun the same command")
      error.errno = errno.ENOSPC
      raise error from None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def close(self) -> None:
    self.manager.close()

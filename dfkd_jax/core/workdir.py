"""A run directory holds exactly one run: its lock and its record of the run's config.

* :class:`Lock` -- one process trains in a workdir at a time. Process 0 takes an
  exclusive POSIX lock (``fcntl.lockf``) on ``WORKDIR/run.lock`` for the whole run; the
  kernel releases it when the process ends, however it ends, so the lock of a dead
  process never blocks a rerun (the file stays, with the last holder's pid and host).
  A second process gets a one-line error naming the holder.
* :func:`check_record` -- ``WORKDIR/run_config.json`` records the resolved config of
  the run the workdir holds and a fingerprint of the fields that decide its result; it
  binds the workdir once the run has saved its first checkpoint (a run that failed
  before, e.g. on missing data, does not block the corrected command).
  Resuming or rerunning with a different value of such a field is an error before
  anything is written, naming the fields, old and new values and the two ways out (a
  new workdir, or ``--allow_config_change=FIELD`` for the fields in
  :data:`CHANGEABLE`). Fields in :data:`FREE` never change a result and may differ.
* :func:`check_writable` -- a clear error for a workdir that cannot be written, before
  the teacher and the test set are loaded.
* :func:`check_output` -- what the tools that write one file or folder (``export
  --out``, ``convert --out``, ``train_teacher --workdir``) may write or replace: never
  an empty path, the current directory or a folder above it, and with ``--overwrite``
  only an earlier output of the same kind (the caller recognises it), never a run
  directory, a folder holding one or a run's own files.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import socket
from typing import Any, Callable, Iterable

LOCK_FILE = "run.lock"
RECORD_FILE = "run_config.json"
# What only a run directory holds (dfkd_jax.run.trainer, dfkd_jax.metrics.summary).
RUN_FILES = (RECORD_FILE, LOCK_FILE, "summary.json", "metrics.jsonl", "checkpoints")

# Fields that do not change a run's numbers: where files are, how often they are kept,
# how the exact evaluation is batched, whether event files are written, the
# first-use teacher recipe (the teacher itself is fingerprinted through its metadata),
# and the data-free selection (its probe never touches training; records made before
# it existed lack it).
FREE = frozenset({"checkpoints_to_keep", "tensorboard", "eval_batch_size", "data_dir",
                  "teacher_dir", "teacher_config", "progress_seconds", "selection"})
# Result-deciding fields that older records lack, with the value their runs had.
ADDED_DEFAULTS = {"num_seeds": 1, "student_optimizer.min_learning_rate": 0.0,
                  "meta.alpha_schedule": "constant"}
# Sections added for methods that older runs could not use (the fast methods'): a
# record without them takes the new config's values, which change no other method.
ADDED_SECTIONS = frozenset({"fast", "bank"})
# The same for the recorded teacher's metadata (teachers without class names).
TEACHER_ADDED_DEFAULTS = {"class_names": []}
# Fields that may change with an explicit --allow_config_change=FIELD: num_epochs extends
# (or shortens) a run. With the cosine schedule the remaining epochs then follow the new
# length, so the result is not the one of a run of that length from scratch.
CHANGEABLE = frozenset({"num_epochs"})


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir's lock."""


class ConfigChangedError(ValueError):
  """The workdir holds a run made with other values of result-deciding fields."""


def check_writable(workdir: pathlib.Path) -> None:
  """Checks that ``workdir`` (or the folder that would hold it) can be written.

  Nothing is created: a run that fails its later checks leaves no folder behind.

  Raises:
    PermissionError: it cannot be written (one line, naming it).
  """
  existing = workdir
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
    what = "is not a folder" if not existing.is_dir() else "is not writable"
    raise PermissionError(f"workdir {workdir}: {existing} {what}; choose another "
                          "--workdir or fix its permissions")


class OutputError(ValueError):
  """An output path that must not be written or replaced; one line, with the fix."""


def is_run_dir(path: pathlib.Path) -> bool:
  """Whether ``path`` is a folder holding a run's files (:data:`RUN_FILES`)."""
  return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def _run_inside(path: pathlib.Path, depth: int = 2) -> pathlib.Path | None:
  """A run directory in ``path``'s subfolders, ``depth`` levels down at most."""
  try:
    children = [c for c in path.iterdir() if c.is_dir() and not c.is_symlink()]
  except OSError:
    return None
  for child in children:
    found = child if is_run_dir(child) else (
        _run_inside(child, depth - 1) if depth > 1 else None)
    if found is not None:
      return found
  return None


def _check_place(text: str, flag: str) -> pathlib.Path:
  """``text`` as an absolute path that is not empty, the current directory or a folder
  above it, and whose nearest existing parent is a folder."""
  if not text.strip():
    raise OutputError(f"{flag} is empty (an unset shell variable?); pass the path to "
                      "write")
  path = pathlib.Path(text).absolute()
  cwd = pathlib.Path.cwd().resolve()
  resolved = path.resolve()
  if resolved == cwd or resolved in cwd.parents:
    where = ("the current directory" if resolved == cwd
             else "a folder above the current one")
    raise OutputError(f"{flag}={text} is {where} ({cwd}); it is never written or "
                      f"replaced: pass a new path, e.g. {flag}={cwd / 'student'}")
  parent = path.parent
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if not parent.is_dir():
    raise OutputError(f"{flag}={text}: {parent} is a file, not a folder; pass a path "
                      "in a folder")
  return path


def check_output(text: str, flag: str, overwrite: bool,
                 earlier_output: Callable[[pathlib.Path], bool], kind: str
                 ) -> pathlib.Path:
  """Checks that ``text`` may be written, before anything is read, compiled or written.

  Args:
    text: the path as the user gave it.
    flag: how the user gave it (``--out``), for the messages.
    overwrite: whether an existing output may be replaced.
    earlier_output: recognises an earlier output of the same kind at a path.
    kind: what that output is, for the messages ("student folder written by
      python -m dfkd_jax.export --format=flax").

  Returns:
    The absolute path.

  Raises:
    OutputError: an empty path, the current directory or a folder above it, a parent
      that is a file, or (with ``overwrite``) anything but an earlier output: one line.
    FileExistsError: ``text`` exists and ``overwrite`` is false.
  """
  path = _check_place(text, flag)
  if not (path.exists() or path.is_symlink()):
    return path
  if not overwrite:
    raise FileExistsError(f"{flag}={path} already exists; pass --overwrite to replace it")
  refuse = f"{flag}={path}"
  fix = (f"--overwrite replaces only an earlier {kind}: choose another {flag} (or "
         "remove it yourself)")
  if path.is_symlink():
    raise OutputError(f"{refuse} is a symbolic link; {fix}")
  if is_run_dir(path):
    raise OutputError(f"{refuse} is a run directory (it holds "
                      f"{next(n for n in RUN_FILES if (path / n).exists())}); {fix}")
  if earlier_output(path):
    return path
  around = next((p for p in path.parents if is_run_dir(p)), None)
  inside = _run_inside(path) if path.is_dir() and around is None else None
  what = (f"lies inside the run directory {around}" if around is not None else
          f"holds the run directory {inside}" if inside is not None else
          f"is not an earlier {kind}")
  raise OutputError(f"{refuse} {what}; {fix}")


class Lock:
  """An exclusive lock on a workdir for the life of this object (``with Lock(...)``)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.path = workdir / LOCK_FILE
    self.enabled = enabled
    self._file = None

  def __enter__(self) -> "Lock":
    if not self.enabled:
      return self
    handle = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      if e.errno not in (errno.EACCES, errno.EAGAIN):
        raise
      raise WorkdirInUseError(
          f"workdir {self.path.parent} is in use by {holder}; wait for that run to end, "
          "stop it, or use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n")
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      fcntl.lockf(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _result_fields(config: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in _flat(config).items() if k.split(".")[0] not in FREE}


def fingerprint(config: dict[str, Any], teacher: dict[str, Any]) -> str:
  """SHA-256 of the result-deciding fields and the teacher's metadata."""
  blob = json.dumps({"config": _result_fields(config), "teacher": teacher},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()


def _show(v) -> str:
  return json.dumps(v, default=str)


def check_allowed(allowed: Iterable[str]) -> set[str]:
  """``allowed`` as a set, checked before anything is loaded or written.

  Raises:
    ValueError: ``allowed`` names a field outside :data:`CHANGEABLE`.
  """
  allowed = set(allowed)
  if allowed - CHANGEABLE:
    raise ValueError(f"--allow_config_change={','.join(sorted(allowed))}: only "
                     f"{', '.join(sorted(CHANGEABLE))} may change in an existing run")
  return allowed


def has_checkpoint(checkpoint_dir: pathlib.Path) -> bool:
  """Whether ``checkpoint_dir`` holds a finished checkpoint (a folder named by its step)."""
  return checkpoint_dir.is_dir() and any(
      p.name.isdigit() and p.is_dir() for p in checkpoint_dir.iterdir())


def check_record(workdir: pathlib.Path, config: dict[str, Any], teacher: dict[str, Any],
                 allowed: Iterable[str] = (), write: bool = True, trained: bool = True,
                 log=lambda message: None) -> dict[str, tuple[Any, Any]]:
  """Compares ``config`` with the run the workdir holds, then records it.

  A workdir without a record (a new run, or one made before records existed) gets one.
  A record binds the workdir only once its run has saved a checkpoint: the record of a
  run that failed or was stopped before (``trained=False``) is replaced, with a note.

  Args:
    workdir: the run directory.
    config: the resolved config (``ConfigDict.to_dict()``).
    teacher: the teacher's metadata (``TeacherMeta`` as a dict).
    allowed: fields of :data:`CHANGEABLE` whose change the user allows.
    write: write the record (process 0 only).
    trained: whether the workdir holds a checkpoint of the recorded run.
    log: where the note on a replaced record goes.

  Returns:
    The allowed fields that changed, each with its recorded and its new value (empty
    for an unchanged run).

  Raises:
    ConfigChangedError: result-deciding fields differ (one line, naming them all).
    ValueError: ``allowed`` names a field outside :data:`CHANGEABLE`.
  """
  # JSON's view of both sides: tuples and lists compare equal after a reload.
  config, teacher = json.loads(json.dumps(config, default=str)), json.loads(
      json.dumps(teacher, default=str))
  allowed = check_allowed(allowed)
  path = workdir / RECORD_FILE
  record = json.loads(path.read_text()) if path.is_file() else None
  if record is not None and "teacher" in record:
    record["teacher"] = {**TEACHER_ADDED_DEFAULTS, **record["teacher"]}
  if record is not None and not trained:
    if _result_fields(record["config"]) != _result_fields(config) or record.get(
        "teacher") != teacher:
      log(f"workdir {workdir} holds no checkpoint: the record of the run that failed or "
          "stopped there before training is replaced by this command's config")
    record = None
  changed = {}
  if record is not None:
    # Fields added after a record was written take their default, the value those runs
    # had (num_seeds: one run), on both sides (a config built without them is the same).
    new = {**ADDED_DEFAULTS, **_result_fields(config)}
    old = {**ADDED_DEFAULTS,
           **{k: v for k, v in new.items() if k.split(".")[0] in ADDED_SECTIONS},
           **_result_fields(record["config"])}
    diffs = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if record.get("teacher") != teacher:
      diffs.append("teacher")
    refused = [k for k in diffs if k not in allowed]
    if refused:
      values = "; ".join(
          f"{k}: {_show(old.get(k) if k != 'teacher' else record.get('teacher'))} -> "
          f"{_show(new.get(k) if k != 'teacher' else teacher)}" for k in refused)
      changeable = [k for k in refused if k in CHANGEABLE]
      way = (f", or pass --allow_config_change={','.join(changeable)}" if changeable
             else "")
      raise ConfigChangedError(
          f"workdir {workdir} holds a run made with other values ({values}); use a new "
          f"--workdir for the new run{way} (see docs/contracts.md)")
    changed = {k: (old.get(k), new.get(k)) for k in diffs if k in allowed}
  if write and (record is None or changed):
    history = (record or {}).get("changes", [])
    if changed:
      history.append({k: [_result_fields(record["config"]).get(k),
                          _result_fields(config).get(k)] for k in changed})
    data = {"fingerprint": fingerprint(config, teacher), "config": config,
            "teacher": teacher, "changes": history}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
  return changed

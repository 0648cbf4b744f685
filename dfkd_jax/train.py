"""Distils a frozen teacher into a student, data-free.

Usage::

  python -m dfkd_jax.train --config=configs/cifar10.py:method=lra_mb --workdir=runs/c10
  python -m dfkd_jax.train --config=configs/digits.py --workdir=runs/digits \\
      --config.num_epochs=3 --config.seed=1
  # 8 seeds (1..8) in one program: runs/digits8/seed_<seed>/summary.json
  python -m dfkd_jax.train --config=configs/digits.py --workdir=runs/digits8 \\
      --config.seed=1 --config.num_seeds=8

Running the same command again resumes from the latest checkpoint in ``--workdir``.

``--config=configs/NAME.py`` works from any folder: a ``configs/...`` path that is not
in the working directory is the repository's (one line names the file used). The test
set the student is evaluated on is ``--config.dataset``: a built-in id (digits, mnist,
fashion_mnist, svhn_cropped, cifar10, cifar100, tiny_imagenet) or your own data,
``folder:PATH`` (ImageFolder layout: ``PATH/test/<class>/*.png``) or ``npz:FILE``
(arrays ``x_test``, ``y_test``); see docs/data.md.

First use: if ``config.teacher_dir`` holds no teacher and ``config.teacher_config``
names a teacher config (the digits quickstart does), the teacher is trained first into
``config.teacher_dir`` (relative paths are relative to the current directory, not to
``--workdir``; the log names the absolute path).

Multi-host (TPU pod slices, SLURM clusters; see launch/README.md): run the same
command on every host. ``jax.distributed`` starts by itself on Cloud TPU and in SLURM
job steps with several tasks, or from the flags::

  python -m dfkd_jax.train ... --coordinator_address=10.0.0.1:8476 \\
      --num_processes=2 --process_id=0     # and --process_id=1 on the other host

A SIGTERM (preemption) saves a checkpoint at the next iteration boundary and exits with
status 75; so does a first Ctrl-C, with status 130 (a second Ctrl-C stops at once
without saving more, after finishing a checkpoint save under way). Rerunning the same
command resumes.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from dfkd_jax.core import workdir
from dfkd_jax.parallel import distributed
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import run_config
from dfkd_jax.run import train_teacher
from dfkd_jax.run import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cifar10.py[:method] (a configs/ path not "
    "in the working directory is the repository's).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and summaries go.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, for a multi-process run (auto-detected on Cloud TPU and "
    "SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes of a multi-process run (1 = force one process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's id in [0, num_processes).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [],
    "Fields that may differ from the run the workdir holds (only num_epochs: extend a "
    "run). Any other difference is refused; see docs/contracts.md.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                 "dfkd_jax", "xla"),
    "JAX's persistent compilation cache: a second run of the same config and shapes "
    "loads the compiled iteration instead of compiling it (tens of MB per config on "
    "CPU; safe to delete). Empty: no cache.")
_PRINT_CONFIG = flags.DEFINE_boolean(
    "print_config", False, "Print the resolved config of this command line and exit "
    "(nothing is loaded or written; every field: docs/config_fields.md).")


def train_teacher_on_first_use(config, log=print) -> None:
  """Trains the teacher of ``config.teacher_config`` if ``config.teacher_dir`` has none.

  Raises:
    FileNotFoundError: a multi-process run without its teacher (every process would
      train one): train it once, in one process, first.
  """
  if not config.teacher_config or run_config.has_teacher(config):
    return
  teacher_dir = run_config.teacher_dir(config)
  if jax.process_count() > 1:
    raise FileNotFoundError(
        f"no teacher at config.teacher_dir={str(teacher_dir)!r}; a multi-process run "
        f"does not train one (every process would): run `python -m "
        f"dfkd_jax.train_teacher --config={config.teacher_config} "
        f"--workdir={teacher_dir}` once, in a single process, first")
  log(f"no teacher at {teacher_dir}: training one with {config.teacher_config} "
      "(first use; later runs reuse it)")
  teacher_config = run_config.load_config_file(config.teacher_config, log,
                                               "config.teacher_config")
  train_teacher.train_and_save(teacher_config, teacher_dir, log=log)


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing, with a one-line error for a bad config file or field
  (:func:`dfkd_jax.run.run_config.parse_flags`)."""
  return run_config.parse_flags(
      argv, fields="every field is listed in docs/config_fields.md; --print_config "
      "shows a command line's config")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = run_config.loaded_config(
      _CONFIG.value, f"the shipped configs are in {run_config.CONFIGS_DIR}")
  if config is None:
    raise app.UsageError("--config is required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  if _PRINT_CONFIG.value:
    try:  # Only values a run would accept.
      run_config.validate(config, parallel.make_mesh())
    except ValueError as e:
      raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    print(config)
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  try:
    workdir.check_allowed(_ALLOW_CONFIG_CHANGE.value)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  sys.stdout.reconfigure(line_buffering=True)  # Progress lines reach a log file at once.
  if _COMPILATION_CACHE_DIR.value:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(_COMPILATION_CACHE_DIR.value))
  try:
    distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
    # Bad values fail before a first-use teacher trains for minutes; the run reuses
    # the validated method and the mesh.
    mesh = parallel.make_mesh()
    method = run_config.validate(_CONFIG.value, mesh)
    train_teacher_on_first_use(_CONFIG.value)
    result = trainer.run(_CONFIG.value, _WORKDIR.value, mesh=mesh, method=method,
                         allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except trainer.Preempted as e:  # run() logged where it saved.
    raise SystemExit(e.exit_code) from None
  except KeyboardInterrupt:  # Ctrl-C before training (the loop saves on Ctrl-C).
    print("Ctrl-C: stopped before training started; nothing of this run was saved "
          "beyond what the workdir already held: rerun the same command to start",
          file=sys.stderr)
    raise SystemExit(distributed.INTERRUPTED_EXIT_CODE) from None
  except (ValueError, OSError, ImportError, workdir.WorkdirInUseError,
          trainer.NonFiniteLossError) as e:  # OSError: permissions, a full disk;
    # ImportError: a PyTorch teacher without torch/torchax installed.
    raise SystemExit(f"error: {' '.join(str(e).split())}") from None
  if not distributed.is_primary():
    return
  if "replicas" in result:  # config.num_seeds > 1.
    best = ", ".join("failed" if r.get("failed") else f"{r['acc_max']:.2f}%"
                     for r in result["replicas"])
    kept = ", ".join("failed" if r.get("failed") else _kept(r)
                     for r in result["replicas"])
    print(f"done: acc_max {best}; kept students {kept} (seeds "
          f"{result['replicas'][0]['seed']}-{result['replicas'][-1]['seed']}), summaries "
          f"in {_WORKDIR.value}/seed_<seed>/{trainer.SUMMARY_FILE}")
    return
  print(f"done: acc_max {result['acc_max']:.2f}%; kept student {_kept(result)}, summary "
        f"in {_WORKDIR.value}/{trainer.SUMMARY_FILE}")


def _kept(summary) -> str:
  """The student the run keeps (and export exports): the epoch its selection criterion
  chose and that epoch's test accuracy, and the collapse warning, if any."""
  text = (f"epoch {summary['selected_epoch']} by {summary['criterion']} "
          f"{summary['selected_accuracy']:.2f}%" if summary.get("selected_epoch")
          else "the last epoch")
  collapsed = summary.get("collapsed")
  return text + (f" (COLLAPSED: {collapsed.removeprefix('collapsed: ')})" if collapsed
                 else "")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

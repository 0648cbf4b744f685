"""Multi-process runs (two local CPU processes, gloo) and preemption (SIGTERM) resume.

The reference is one process with two (fake) CPU devices: the same global batch over
the same two-device mesh, so every cross-device sum has the same two terms as across
two processes and the runs compute the same numbers. Tolerance: accuracies must be
equal (they count test examples); losses may differ by float32 summation noise
(rtol 1e-5; measured: identical).

Processes run under ``timeout -s KILL`` in their own process group (jax.distributed
traps SIGTERM, so a hung run would not die of it) and are SIGKILLed on teardown. They
share a persistent compilation cache (the same programs compile once: ~55 s -> ~13 s
of CPU per process run; numbers are unchanged, the executables are the same).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dfkd_jax.parallel import distributed
from dfkd_jax.run import run_outputs
from dfkd_jax.run import trainer

from test_trainer import teacher_dir  # pylint: disable=unused-import  # fixture

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS, ITERATIONS = 2, 2  # Two epochs: the sharded replay memory is written, then read.
TIMEOUT_S = 600


def train_command(teacher, workdir, *extra):
  """`timeout -s KILL ... python -m dfkd_jax.train` on a tiny digits lra_mb config."""
  overrides = {"teacher_dir": teacher, "teacher_config": "", "latent_dim": 16,
               "batch_size": 32, "num_epochs": EPOCHS,
               "iterations_per_epoch": ITERATIONS, "student_steps": 2,
               "memory.num_slots": 3, "memory.samples_per_slot": 8,
               "memory.push_every_epochs": 1, "tensorboard": False}
  return (["timeout", "-s", "KILL", str(TIMEOUT_S), sys.executable, "-m",
           "dfkd_jax.train", f"--config={REPO / 'configs/digits.py'}:lra_mb",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
          + list(extra))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Processes:
  """Started training processes; all are SIGKILLed (process groups) on exit."""

  def __init__(self, tmp_path, cache_dir):
    self.tmp_path = tmp_path
    self.cache_dir = cache_dir
    self.procs = []

  def start(self, command, name, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(self.cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = self.tmp_path / f"{name}.log"
    with open(log, "w") as out:
      proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    self.procs.append(proc)
    return proc

  def start_group(self, teacher, workdir, name, num_processes=2):
    address = f"127.0.0.1:{free_port()}"
    return [self.start(train_command(teacher, workdir, f"--coordinator_address={address}",
                                     f"--num_processes={num_processes}",
                                     f"--process_id={i}"), f"{name}{i}")
            for i in range(num_processes)]

  def wait(self, procs):
    """Exit codes; the logs' tails if any process failed to finish in time."""
    deadline = time.time() + TIMEOUT_S + 30
    for proc in procs:
      proc.wait(timeout=max(1, deadline - time.time()))
    return [proc.returncode for proc in procs]

  def wait_for_line(self, proc, text, timeout=TIMEOUT_S):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
      if text in proc.log.read_text():
        return
      time.sleep(0.1)
    pytest.fail(f"{text!r} never appeared in {proc.log}:\n{self.tail(proc)}")

  @staticmethod
  def tail(proc):
    return proc.log.read_text()[-3000:]

  def kill_all(self):
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        proc.wait()


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture
def processes(tmp_path, compile_cache):
  procs = Processes(tmp_path, compile_cache)
  yield procs
  procs.kill_all()


@pytest.fixture(scope="module")
def reference(teacher_dir, tmp_path_factory, compile_cache):
  """The uninterrupted run: one process, two CPU devices."""
  workdir = tmp_path_factory.mktemp("reference")
  procs = Processes(workdir, compile_cache)
  try:
    proc = procs.start(train_command(teacher_dir, workdir / "run"), "reference", devices=2)
    assert procs.wait([proc]) == [0], procs.tail(proc)
  finally:
    procs.kill_all()
  return workdir / "run"


def read_run(workdir):
  summary = json.loads((workdir / trainer.SUMMARY_FILE).read_text())
  summary.pop("student_steps_per_second")  # Wall-clock.
  summary.pop("train_seconds")
  summary.pop("train_cpu_seconds", None)  # Process CPU: one process only, as cpu_cores.
  summary.pop("cpu_cores", None)  # One process records its cores, several do not.
  metrics = [json.loads(line) for line in
             (workdir / run_outputs.METRICS_FILE).read_text().splitlines()]
  return summary, metrics


def assert_same_run(workdir, reference_dir):
  summary, metrics = read_run(workdir)
  expected, expected_metrics = read_run(reference_dir)
  assert summary["epochs_completed"] == EPOCHS
  for key in ("test_accuracy", "acc_max", "teacher_accuracy", "learning_evolution",
              "cumulative_mean_accuracy", "config", "method", "seed"):
    assert summary[key] == expected[key], key
  np.testing.assert_allclose(summary["alignment"][1], expected["alignment"][1],
                             rtol=1e-5)
  assert [(m["epoch"], m["iteration"]) for m in metrics] == [
      (m["epoch"], m["iteration"]) for m in expected_metrics]
  for got, want in zip(metrics, expected_metrics):
    for key, value in want.items():
      if value is None:
        assert got[key] is None, key
      else:
        np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_two_processes_match_one_process(teacher_dir, reference, processes, tmp_path):
  workdir = tmp_path / "run"
  group = processes.start_group(teacher_dir, workdir, "process")
  codes = processes.wait(group)
  assert codes == [0, 0], "\n".join(processes.tail(p) for p in group)
  assert "process 1 of 2, 1 local of 2 devices" in group[1].log.read_text()
  # Only process 0 reports; both take part in the checkpoints.
  assert "done: acc_max" in group[0].log.read_text()
  assert "done: acc_max" not in group[1].log.read_text()
  assert (workdir / trainer.CHECKPOINT_DIR / str(EPOCHS * ITERATIONS)).is_dir()
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_and_resumes(teacher_dir, reference, processes,
                                                   tmp_path):
  workdir = tmp_path / "run"
  proc = processes.start(train_command(teacher_dir, workdir), "first", devices=2)
  # The handler is installed before the teacher is evaluated, which precedes the
  # first iteration: the run stops after iteration 1 of epoch 1.
  processes.wait_for_line(proc, "% on the digits test set")
  proc.send_signal(signal.SIGTERM)
  assert processes.wait([proc]) == [distributed.PREEMPTED_EXIT_CODE], processes.tail(proc)
  assert "preemption notice (SIGTERM): stopped at epoch 1, iteration 1" in (
      proc.log.read_text())
  assert sorted(p.name for p in (workdir / trainer.CHECKPOINT_DIR).iterdir()
                if p.name.isdigit()) == ["1"]
  assert not (workdir / trainer.SUMMARY_FILE).exists()  # No epoch finished.

  again = processes.start(train_command(teacher_dir, workdir), "again", devices=2)
  assert processes.wait([again]) == [0], processes.tail(again)
  assert "resumed from" in again.log.read_text()
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both(teacher_dir, reference, processes,
                                                    tmp_path):
  """jax.distributed's preemption sync: both stop at the same iteration and save."""
  workdir = tmp_path / "run"
  group = processes.start_group(teacher_dir, workdir, "first")
  processes.wait_for_line(group[0], "% on the digits test set")
  group[1].send_signal(signal.SIGTERM)
  codes = processes.wait(group)
  assert codes == [distributed.PREEMPTED_EXIT_CODE] * 2, "\n".join(
      processes.tail(p) for p in group)
  steps = [p.name for p in (workdir / trainer.CHECKPOINT_DIR).iterdir()
           if p.name.isdigit()]
  stopped = max(map(int, steps))
  assert 0 < stopped < EPOCHS * ITERATIONS
  assert f"checkpoint saved in {workdir / trainer.CHECKPOINT_DIR}" in (
      group[0].log.read_text())

  group = processes.start_group(teacher_dir, workdir, "again")
  assert processes.wait(group) == [0, 0], "\n".join(processes.tail(p) for p in group)
  assert_same_run(workdir, reference)


@pytest.mark.parametrize("kwargs, environ, tpu, expected", [
    ({}, {}, False, None),
    ({"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1},
     {}, False, "flags"),
    ({"num_processes": 1}, {"JAX_COORDINATOR_ADDRESS": "h:1"}, True, None),
    ({}, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, False, "JAX_COORDINATOR_ADDRESS"),
    ({}, {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
          "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, False, "SLURM"),
    # One task, or the batch script itself (no job step): a single process.
    ({}, {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
          "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, False, None),
    ({}, {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4",
          "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
     False, None),
    ({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, False, None),
    ({}, {}, True, "Cloud TPU"),
])
def test_detect_multi_process(kwargs, environ, tpu, expected):
  assert distributed.detect(**kwargs, environ=environ,
                            on_cloud_tpu_vm=lambda: tpu) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"num_processes": 0}, r"--num_processes=0 must be >= 1"),
    ({"num_processes": 2, "process_id": 2}, r"--process_id=2 must be in \[0, "),
    ({"process_id": -1}, r"--process_id=-1 must be in"),
    ({"process_id": 1}, r"--process_id=1 needs --num_processes"),
])
def test_bad_distributed_flags_are_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.detect(**kwargs, environ={}, on_cloud_tpu_vm=lambda: False)


def test_single_process_run_starts_no_distributed_runtime(monkeypatch):
  for name in ["JAX_COORDINATOR_ADDRESS", *distributed._SLURM_VARS]:  # pylint: disable=protected-access
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)
  assert not distributed.initialize(log=lambda s: None)
  assert not jax.distributed.is_initialized()


def test_cloud_tpu_vm_is_detected_from_the_tpu_chips_pci_ids(tmp_path):
  def device(name, vendor, device_id):
    path = tmp_path / name
    path.mkdir()
    (path / "vendor").write_text(vendor + "\n")
    (path / "device").write_text(device_id + "\n")

  device("0000:00:04.0", "0x1ae0", "0x0042")  # gVNIC: Google's vendor id, no TPU.
  device("0000:00:05.0", "0x8086", "0x1234")
  assert not distributed._on_cloud_tpu_vm(tmp_path)  # pylint: disable=protected-access
  device("0000:00:06.0", "0x1ae0", "0x0063")  # A v5e chip.
  assert distributed._on_cloud_tpu_vm(tmp_path)  # pylint: disable=protected-access

"""What a first-time user sees: compile notices, heartbeat, ETA, cache, TensorBoard."""

import os
import pathlib
import shutil
import struct
import subprocess
import time

import pytest

from dfkd_jax.run import progress
from dfkd_jax.run import trainer

from test_trainer import cli_args, teacher_dir, tiny_config  # pylint: disable=unused-import

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_heartbeat_speaks_at_its_interval_until_the_block_ends():
  lines = []
  with progress.Heartbeat(lines.append, "compiling", "compiling ...", every=0.05):
    time.sleep(0.32)
  count = len(lines)
  time.sleep(0.15)
  assert lines[0] == "compiling ..." and len(lines) == count  # Silent once done.
  assert 4 <= count <= 8 and all("still compiling" in l for l in lines[1:])


def test_eta_leaves_the_compile_out():
  throughput = progress.Throughput()
  assert throughput.eta(10) == "ETA after the next iteration"
  for _ in range(4):
    throughput.add(0.5)  # The compiling first call is never added.
  assert throughput.per_second == 2.0 and throughput.eta(120) == "ETA 1.0 min"


def test_no_rate_until_one_is_measured():
  """Issue 26, item 14: the first progress line has no "0.00 it/s" and no ETA."""
  throughput = progress.Throughput()
  metrics = {"student_loss": 0.5, "generator_loss": 1.5}
  line = trainer._progress(0, 0, 10, 2, throughput, metrics, 19)  # pylint: disable=protected-access
  assert line == ("epoch 1/2, iteration 1/10: student loss 0.5000, generator loss "
                  "1.5000")
  throughput.add(0.25)
  line = trainer._progress(0, 1, 10, 2, throughput, metrics, 18)  # pylint: disable=protected-access
  assert line == ("epoch 1/2, iteration 2/10: 4.00 it/s, student loss 0.5000, generator "
                  "loss 1.5000, ETA 0.1 min")


def _train(config, workdir, cache_dir, *extra, env=None):
  args = cli_args(config, workdir) + [f"--compilation_cache_dir={cache_dir}", *extra]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1200,
                       check=True, env=env)
  return out.stdout + out.stderr


@pytest.mark.slow
def test_second_run_loads_the_iteration_from_the_cache_and_writes_tensorboard(
    teacher_dir, tmp_path):
  config = tiny_config(teacher_dir, "dfkd", num_epochs=1)
  first = _train(config, tmp_path / "a", tmp_path / "xla", "--config.tensorboard=True")
  assert "compiling the training iteration" in first and "not an error" in first
  assert "compiled and ran the first iteration in" in first
  assert "loaded from the compilation cache" not in first
  assert any((tmp_path / "xla").iterdir())
  second = _train(config, tmp_path / "b", tmp_path / "xla")
  assert "(loaded from the compilation cache)" in second  # JAX's own cache-hit event.
  # TensorBoard event files, without TensorFlow's writer: every iteration's losses.
  scalars = _read_scalars(tmp_path / "a" / "tensorboard")
  assert {"student_loss", "generator_loss", "epoch/test_accuracy"} <= set(scalars)
  assert [step for step, _ in scalars["student_loss"]] == [1, 2]
  # The log says where they are (issue 26, item 17) ...
  assert (f"TensorBoard: every iteration's metrics in {tmp_path / 'a' / 'tensorboard'} "
          f"(view them with: tensorboard --logdir {tmp_path / 'a' / 'tensorboard'})"
          in first)
  # ... and rerunning the finished run adds no empty event file (item 13).
  events = sorted((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
  again = _train(config, tmp_path / "a", tmp_path / "xla", "--config.tensorboard=True")
  assert "holds the finished run" in again and "TensorBoard:" not in again
  assert sorted((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*")) == events


def test_extending_num_epochs_says_why_the_iteration_compiles_again(teacher_dir,
                                                                     tmp_path):
  """Issue 40, item 6.6: the cosine schedule's length is compiled into the iteration."""
  config = lambda n: tiny_config(teacher_dir, "dfkd", num_epochs=n, student_steps=1)  # pylint: disable=unnecessary-lambda-assignment
  trainer.run(config(1), tmp_path, log=lambda s: None)
  lines = []
  trainer.run(config(3), tmp_path, log=lines.append, allow_config_change=["num_epochs"])
  assert (f"config.num_epochs changed from 1 to 3 with --allow_config_change (recorded "
          f"in {tmp_path / 'run_config.json'})") in lines
  [first] = [l for l in lines if l.startswith("compiling the training iteration")]
  assert first.startswith(
      "compiling the training iteration again: config.num_epochs changed from 1 to 3, "
      "and the student's cosine learning-rate schedule spans num_epochs: its length is "
      "compiled into the iteration, so the program compiled for the earlier length does "
      "not fit (minutes on CPU; cached in ")
  assert not any("held no program" in l for l in lines)


@pytest.mark.slow
def test_a_resume_that_finds_no_cached_program_says_so(teacher_dir, tmp_path):
  """With a constant schedule num_epochs is not compiled in: an extended run loads the
  iteration from the cache; with the cache emptied it says why it compiled again."""
  config = tiny_config(teacher_dir, "dfkd", num_epochs=1, student_steps=1)
  cache = tmp_path / "xla"
  flags = ["--config.student_optimizer.schedule=constant", "--config.num_epochs=2",
           "--allow_config_change=num_epochs"]
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  for workdir, empty_the_cache in ((tmp_path / "a", False), (tmp_path / "b", True)):
    _train(config, workdir, cache, flags[0], env=env)
    if empty_the_cache:
      shutil.rmtree(cache)
    out = _train(config, workdir, cache, *flags, env=env)
    assert "resumed from" in out and "compiling the training iteration again" not in out
    if empty_the_cache:
      assert "(loaded from the compilation cache)" not in out
      assert (f"the resumed run compiled its iteration again: no config field compiled "
              f"into it changed, but the compilation cache in {cache} held no program "
              "for it (it was cleared, jax, the devices or XLA_FLAGS changed, or the "
              "earlier compile took under 0 s and was not kept)") in out
    else:
      assert "(loaded from the compilation cache)" in out and "held no program" not in out


def _read_scalars(folder):
  """``{tag: [(step, value)]}`` of the event files in ``folder`` (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      length = struct.unpack("<Q", data[offset:offset + 8])[0]
      record = data[offset + 12:offset + 12 + length]  # After length and its CRC.
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_the_readme_says_where_tensorboard_writes():
  """Issue 26, item 17: the outputs page names the folder and how to view it."""
  outputs = " ".join((REPO / "docs/outputs.md").read_text().split())
  assert "`WORKDIR/tensorboard`" in outputs
  assert "`tensorboard --logdir WORKDIR/tensorboard`" in outputs

"""The accelerator kit's pieces that do not need a device (benchmarks/accelerator/).

The whole device script also runs here as its CPU dry run (``check.sh --dry-run``: every
step, tiny shapes; ~95 s on 2 cores), so that it cannot rot.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.accelerator import official_lra
from benchmarks.accelerator import report
from benchmarks.accelerator import steps

REPO = pathlib.Path(__file__).resolve().parents[1]
CHECK = REPO / "benchmarks/accelerator/check.sh"


def _summary(path, **overrides):
  summary = {"teacher_accuracy": 99.5, "test_accuracy": [60.0, 80.0, 75.0],
             "acc_max": 80.0, "epochs_completed": 3, "student_steps_per_second": 12.0}
  summary.update(overrides)
  path.write_text(json.dumps(summary))
  return path


def test_summary_check_accepts_a_finished_run_and_names_what_is_wrong(tmp_path):
  assert steps.check_summary(_summary(tmp_path / "a.json"), epochs=3) == []
  problems = steps.check_summary(
      _summary(tmp_path / "b.json", acc_max=75.0, epochs_completed=2), epochs=3)
  assert any("epochs_completed=2" in p for p in problems)
  assert any("acc_max=75.0" in p for p in problems)
  nan = steps.check_summary(_summary(tmp_path / "c.json", test_accuracy=[1.0, float("nan"), 2.0],
                                     acc_max=2.0), epochs=3)
  assert any("test_accuracy" in p for p in nan)
  assert steps.check_summary(tmp_path / "missing.json", epochs=3) == [
      f"no summary at {tmp_path / 'missing.json'}"]


def _bench(batch, seconds):
  return {"results": [{"method": "lra_mb", "pair": "resnet34", "seconds_per_iteration": seconds,
                       "compile_seconds": 36.0}]}


def test_cifar10_extrapolation_prefers_batch_512_and_scales_batch_64():
  both = report.extrapolate({"bench_resnet34_b512_float32": _bench(512, 0.5),
                             "bench_resnet34_b64_float32": _bench(64, 0.1)}, 200, 72)
  (row,) = both
  assert row["from_batch"] == 512 and row["iterations"] == 14400
  assert row["hours"] == pytest.approx((14400 * 0.5 + 36.0) / 3600)
  (scaled,) = report.extrapolate({"bench_resnet34_b64_bfloat16": _bench(64, 0.1)}, 200, 72)
  assert scaled["compute_dtype"] == "bfloat16" and scaled["from_batch"] == 64
  assert scaled["seconds_per_iteration_at_512"] == pytest.approx(0.8)
  assert report.extrapolate({}, 200, 72) == []


def test_the_cifar10_length_comes_from_the_config():
  assert report.cifar10_iterations() == (200, 72)


def test_missing_modules_of_the_official_code_get_importable_stand_ins():
  name = "dfkd_test_absent_package"
  assert official_lra.stub_missing_modules([name, "json"]) == [name]
  namespace = {}
  exec(f"from {name}.models.resnet import ResNet\nclass Mine(ResNet): pass\nMine(1, k=2)",
       namespace)  # pylint: disable=exec-used
  assert sys.modules["json"].__file__  # A real module is never replaced.


@pytest.mark.parametrize("args, message", [
    (["--official", "/nonexistent"], "is not a checkout of the official LRA code"),
    (["--bogus"], "unknown option --bogus"),
    ([], "usage:"),
])
def test_check_script_refuses_bad_arguments_before_any_step(tmp_path, args, message):
  proc = subprocess.run(["bash", str(CHECK), *args] + ([str(tmp_path / "out")] if args else []),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and message in proc.stderr
  assert not (tmp_path / "out").exists()


def test_check_script_never_writes_into_a_non_empty_folder(tmp_path):
  (tmp_path / "keep.txt").write_text("mine")
  proc = subprocess.run(["bash", str(CHECK), "--dry-run", str(tmp_path)],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "is not empty" in proc.stderr
  assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_the_device_script_dry_run_runs_every_step_on_this_backend(tmp_path):
  out = tmp_path / "dry_run"
  # The script's interpreter is $PYTHON (python3 on the PATH by default): here, the one
  # running the tests, which need not be the PATH's (a venv not activated).
  proc = subprocess.run(["bash", str(CHECK), "--dry-run", str(out)], cwd=REPO,
                        env={**os.environ, "PYTHON": sys.executable},
                        capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((out / "accelerator.json").read_text())
  statuses = {s["name"]: s["status"] for s in result["steps"]}
  assert {"env", "tests", "digits", "bench_lenet5_b512_float32",
          "bench_resnet34_b512_bfloat16"} <= set(statuses)
  # Skipped here: the wheelhouse install (ml_collections is installed) and the official
  # code (no checkout given).
  assert all(v == "ok" for k, v in statuses.items() if k not in ("install", "official")
             ), statuses
  assert statuses["install"] == statuses["official"] == "skipped"
  assert result["digits"]["acc_max"] > 0 and (out / "accelerator.md").read_text()

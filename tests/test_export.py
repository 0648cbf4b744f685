"""`python -m dfkd_jax.export`: a real tiny run's student as ONNX, PyTorch and Flax.

The ONNX file runs in onnxruntime, the PyTorch state_dict in the package's PyTorch
classes of the architectures (`dfkd_jax.interop.torch_models`), the Flax folder through
`dfkd_jax.load_student`; each gives the JAX student's predictions, and the test
accuracy the trainer measured itself.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import orbax.checkpoint as ocp
import pytest
import torch

import dfkd_jax
from dfkd_jax import models
from dfkd_jax.data import datasets as data
from dfkd_jax.interop import convert
from dfkd_jax.interop import export
from dfkd_jax.interop import torch_layout
from dfkd_jax.interop import torch_models
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.run import trainer
from test_trainer import teacher_dir, tiny_config  # pylint: disable=unused-import  # fixture

REPO = pathlib.Path(__file__).resolve().parents[1]


LAST = {"selection.criterion": "last"}


@pytest.fixture(scope="module")
def run_dir(teacher_dir, tmp_path_factory):
  """A finished tiny dfkd run: 2 epochs of 2 iterations, checkpoints 2 and 4."""
  workdir = tmp_path_factory.mktemp("run")
  # Criterion last: the default export is the newest checkpoint (test_selection.py
  # covers the default of another criterion).
  trainer.run(tiny_config(teacher_dir, "dfkd", **LAST), workdir, log=lambda s: None)
  return workdir


@pytest.fixture(scope="module")
def replicas_dir(teacher_dir, tmp_path_factory):
  """A finished tiny mb_dfkd run of 2 replicas, seeds 0 and 1."""
  workdir = tmp_path_factory.mktemp("replicas")
  trainer.run(tiny_config(teacher_dir, "mb_dfkd", seed=0, num_seeds=2, **LAST), workdir,
              log=lambda s: None)
  return workdir


def run_export(workdir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "dfkd_jax.export", f"--workdir={workdir}", *flags],
      capture_output=True, text=True, check=False, cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


def summary_accuracy(path: pathlib.Path) -> list[float]:
  return json.loads((path / trainer.SUMMARY_FILE).read_text())["test_accuracy"]


def full_checkpoint_student(workdir, step):
  """The student of a checkpoint as orbax restores the whole saved state (not the
  partial restore of the export)."""
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(workdir / "checkpoints" / str(step) / "state")
  return {"params": state["student"]["params"],
          "batch_stats": state["student"]["batch_stats"]}


def assert_trees_equal(a, b):
  flat_a = flax.traverse_util.flatten_dict(flax.core.unfreeze(a))
  flat_b = flax.traverse_util.flatten_dict(flax.core.unfreeze(b))
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[key]), str(key))


@pytest.mark.slow
def test_onnx_export_gives_the_jax_students_predictions(run_dir, tmp_path):
  out = tmp_path / "student.onnx"
  result = run_export(run_dir, "--format=onnx", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "max |logit difference|" in result.stdout and "accuracy ONNX" in result.stdout
  # Each stage of the ~75 s says what it does (issue 37), then how long it took (issue
  # 40, item 6.5), in this order.
  lines = result.stdout.splitlines()
  stages = [r"loading the digits test set for the ONNX check \.\.\.$",
            r"loaded 360 test images in \d+\.\d s$",
            r"converting the student to ONNX with jax2onnx \(tens of seconds on a CPU\) "
            r"\.\.\.$",
            r"converted the student to ONNX in \d+\.\d s \(\d+\.\d\d MB\)$",
            r"checking the ONNX model in onnxruntime against the JAX student on 360 test "
            r"images \.\.\.$",
            r"onnxruntime vs JAX on the digits test set \(360 images, checked in \d+\.\d "
            r"s\): max \|logit difference\| ",
            r"Wrote the digits_cnn_half student \(dfkd, seed 0, step 4, "]
  found = [next(i for i, line in enumerate(lines) if re.match(stage, line))
           for stage in stages]
  assert found == sorted(found), result.stdout
  # Between them only the heartbeat's "still" lines (every 10 s of a stage).
  others = set(range(found[0], found[-1] + 1)) - set(found)
  assert all(re.match(r"  \.\.\. still (converting|checking|loading the test set) "
                      r"\(\d+ s\)$", lines[i]) for i in others), result.stdout

  run = export.read_run(run_dir)
  student = export.restore_student(run, 4, None)
  images, labels = export.test_set(run, student.card)
  session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
  assert [i.name for i in session.get_inputs()] == ["images"]
  got = session.run(["logits"], {"images": images.transpose(0, 3, 1, 2)})[0]
  want = export.jax_logits(student, images)
  assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  # The trainer's own evaluation of this checkpoint.
  accuracy = 100.0 * np.mean(got.argmax(-1) == labels)
  assert accuracy == pytest.approx(summary_accuracy(run_dir)[-1], abs=1e-9)
  assert f"accuracy ONNX {accuracy:.2f}% / JAX {accuracy:.2f}%" in result.stdout
  metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
  card = json.loads(metadata["dfkd_jax.student"])
  assert (card["arch"], card["step"], card["seed"]) == ("digits_cnn_half", 4, 0)


def test_torch_export_runs_in_pytorch_and_converts_back_exactly(run_dir, tmp_path):
  out = tmp_path / "student.pth"
  result = run_export(run_dir, "--format=torch", f"--out={out}")
  assert result.returncode == 0, result.stderr
  payload = torch.load(out, weights_only=True)
  assert payload["student"]["step"] == 4 and payload["student"]["arch"] == "digits_cnn_half"
  # The last line names the shipped class that loads it (issue 40, item 6.3).
  assert result.stdout.strip().splitlines()[-1] == (
      f"In PyTorch: dfkd_jax.interop.torch_models.load({str(out)!r}) builds "
      "dfkd_jax.interop.torch_models.DigitsCNN(widths=(16, 16, 32), num_classes=10, "
      "in_channels=1), loads the state_dict (strict) and returns it in eval mode; "
      f"inputs: NCHW normalised with mean {payload['student']['normalization']['mean']} "
      f"std {payload['student']['normalization']['std']}")

  # The class by hand, as the line names it, and through load().
  model = torch_models.DigitsCNN(num_classes=10, widths=(16, 16, 32), in_channels=1)
  model.load_state_dict(payload["state_dict"], strict=True)
  model.eval()
  loaded = torch_models.load(out)
  assert loaded.card == payload["student"] and not loaded.training
  run = export.read_run(run_dir)
  student = export.restore_student(run, 4, None)
  images, labels = export.test_set(run, student.card)
  want = export.jax_logits(student, images)
  for pytorch_model in (model, loaded):
    with torch.no_grad():
      got = pytorch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5 * np.max(np.abs(want)), rtol=0)
  accuracy = 100.0 * np.mean(got.argmax(-1) == labels)
  assert accuracy == pytest.approx(summary_accuracy(run_dir)[-1], abs=1e-9)

  meta = convert.convert(out, "digits_cnn_half", 10, tmp_path / "teacher",
                         dataset="digits")
  assert meta.input_shape == (8, 8, 1)
  _, variables, _ = teacher_lib.load_teacher(tmp_path / "teacher")
  assert_trees_equal(variables, full_checkpoint_student(run_dir, 4))


# One network of each family in the first tier, the rest in the second (`-m slow`).
_SECOND_TIER_LAYOUTS = ("digits_cnn_half", "lenet5", "lenet5_half", "resnet18", "resnet18_64",
                        "wrn16_2", "wrn40_2")


@pytest.mark.parametrize("arch", [
    pytest.param(a, marks=pytest.mark.slow) if a in _SECOND_TIER_LAYOUTS else a
    for a in sorted(torch_layout.TORCH_LAYOUTS)])
def test_torch_layout_round_trips_and_runs_in_pytorch(arch):
  num_classes = 7
  shape = models.input_shape(arch)
  if shape[-1] is None:  # The ResNets and WRNs take any channels: RGB.
    shape = (*shape[:2], 3)
  module = models.get(arch, num_classes=num_classes)
  variables = module.init(jax.random.key(1), jnp.zeros((1, *shape)))
  # Non-trivial running statistics, so that a swapped mean/var would show, and that
  # keep the logits input-dependent (a shifted mean kills the ResNets' ReLUs).
  rng = np.random.default_rng(2)
  stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(
      variables.get("batch_stats", {})))
  variables = {"params": variables["params"], "batch_stats": flax.traverse_util.
               unflatten_dict({k: np.asarray(
                   a + 0.1 * rng.normal(size=a.shape) if k[-1] == "mean"
                   else a * (0.5 + rng.uniform(size=a.shape)), np.float32)
                               for k, a in stats.items()})}
  state_dict = torch_layout.variables_to_state_dict(variables, arch)
  back = convert.state_dict_to_variables(state_dict, arch, num_classes, shape)
  assert_trees_equal(back, variables)
  # The package's PyTorch class of the architecture takes it as it is.
  model = torch_models.build(arch, num_classes, shape[-1])
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()},
                        strict=True)
  model.eval()
  x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
  with torch.no_grad():
    got = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  with jax.default_matmul_precision("highest"):
    want = np.asarray(module.apply(variables, x, train=False))
  atol = 1e-5 * np.max(np.abs(want))
  np.testing.assert_allclose(got, want, atol=atol, rtol=0)
  assert np.max(np.std(want, axis=0)) > 100 * atol  # The logits depend on the input.


def test_every_torch_layout_has_a_pytorch_class():
  assert set(torch_models.ARCHS) == set(torch_layout.TORCH_LAYOUTS)
  with pytest.raises(ValueError, match=r"^'my_pkg.nets:Net' has no PyTorch class here; "
                     r"dfkd_jax.interop.torch_models covers digits_cnn, "):
    torch_models.build("my_pkg.nets:Net", 10)


def test_load_refuses_a_file_that_is_not_an_export(tmp_path):
  torch.save(torch_models.build("lenet5", 10).state_dict(), tmp_path / "plain.pth")
  with pytest.raises(ValueError, match="is not a `python -m dfkd_jax.export "
                     "--format=torch` file"):
    torch_models.load(tmp_path / "plain.pth")


def test_every_torch_layout_names_a_classifier():
  for arch in torch_layout.TORCH_LAYOUTS:
    assert models.is_classifier(arch), arch


def test_flax_folder_loads_in_two_lines_with_its_card(run_dir, teacher_dir, tmp_path):
  out = tmp_path / "student"
  result = run_export(run_dir, "--format=flax", f"--out={out}", "--checkpoint=2")
  assert result.returncode == 0, result.stderr

  predict = dfkd_jax.load_student(out)
  card = predict.card
  teacher = teacher_lib.load_meta(teacher_dir)
  assert (card.arch, card.num_classes, card.input_shape) == ("digits_cnn_half", 10,
                                                             (8, 8, 1))
  assert (card.mean, card.std, card.dataset) == (teacher.mean, teacher.std, "digits")
  assert (card.method, card.seed, card.step) == ("dfkd", 0, 2)
  assert card.test_accuracy == summary_accuracy(run_dir)[0]  # Epoch 1 = step 2.

  split = data.load_split("digits", "test")
  unit_images = data.preprocess(split.images, data.get_dataset("digits"),
                                pixel_max=split.pixel_max, image_shape=(8, 8, 1),
                                normalization=((0.0,), (1.0,)))
  logits = np.asarray(predict(unit_images))
  run = export.read_run(run_dir)
  student = export.restore_student(run, 2, None)
  assert_trees_equal(student.variables, full_checkpoint_student(run_dir, 2))
  images, labels = export.test_set(run, student.card)
  np.testing.assert_allclose(logits, export.jax_logits(student, images), atol=1e-5)
  assert 100.0 * np.mean(logits.argmax(-1) == labels) == pytest.approx(
      card.test_accuracy, abs=1e-9)


@pytest.mark.slow
def test_a_run_of_replicas_exports_each_seed(replicas_dir, tmp_path):
  for seed in (0, 1):
    out = tmp_path / f"seed_{seed}"
    result = run_export(replicas_dir, "--format=flax", f"--out={out}", f"--seed={seed}")
    assert result.returncode == 0, result.stderr
    predict = dfkd_jax.load_student(out)
    assert predict.card.seed == seed
    assert predict.card.test_accuracy == summary_accuracy(
        replicas_dir / f"seed_{seed}")[-1]
    full = full_checkpoint_student(replicas_dir, 4)
    assert_trees_equal(predict.variables, jax.tree.map(lambda a, s=seed: a[s], full))
  kernels = [dfkd_jax.load_student(tmp_path / f"seed_{s}").variables["params"]["fc"]
             ["kernel"] for s in (0, 1)]
  assert not np.array_equal(*kernels)


def _one_line_error(result) -> str:
  assert result.returncode == 1, (result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


@pytest.mark.parametrize("case", ["no_run", "no_checkpoint", "unknown_seed",
                                  "replicas_without_seed", "unknown_checkpoint",
                                  "existing_out"])
def test_bad_input_is_one_line_and_writes_nothing(case, run_dir, replicas_dir, tmp_path):
  workdir, fmt, flags = run_dir, "flax", []
  if case == "no_run":
    workdir = tmp_path / "empty"
    workdir.mkdir()
  elif case == "no_checkpoint":  # A run that has not finished its first epoch.
    workdir = tmp_path / "new_run"
    workdir.mkdir()
    (workdir / "run_config.json").write_bytes((run_dir / "run_config.json").read_bytes())
  elif case == "unknown_seed":
    workdir, flags = replicas_dir, ["--seed=7"]
  elif case == "replicas_without_seed":
    workdir = replicas_dir
  elif case == "unknown_checkpoint":
    flags = ["--checkpoint=3"]
  out = tmp_path / "out" / "student"
  if case == "existing_out":  # The ONNX file of an earlier export.
    fmt, out = "onnx", out.with_suffix(".onnx")
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")
  line = _one_line_error(run_export(workdir, f"--format={fmt}", f"--out={out}", *flags))
  expected = {"no_run": "holds no run (run_config.json not found)",
              "no_checkpoint": "holds no checkpoint yet",
              "unknown_seed": "--seed=7 is not a seed of the run",
              "replicas_without_seed": "holds 2 replicas (seeds 0-1); pass --seed=K",
              "unknown_checkpoint": "--checkpoint=3 is not in",
              "existing_out": "already exists; pass --overwrite"}[case]
  assert expected in line
  if case == "unknown_seed":
    assert "its seeds: 0, 1" in line
  if case == "unknown_checkpoint":
    assert "it holds steps 2, 4" in line
  if case == "existing_out":
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.onnx"]
  else:
    assert not out.parent.exists()


def test_torch_format_refuses_an_architecture_it_does_not_cover(run_dir, tmp_path,
                                                                monkeypatch):
  """Every registered classifier has a PyTorch layout today, so the student's entry is
  removed from the table (a patch, in this process) to stand for one that has none."""
  monkeypatch.delitem(torch_layout.TORCH_LAYOUTS, "digits_cnn_half")
  out = tmp_path / "out" / "student.pth"
  with pytest.raises(export.ExportError) as error:
    export.export(run_dir, "torch", out)
  message = str(error.value)
  assert "\n" not in message
  assert "does not cover the student 'digits_cnn_half'" in message
  assert "it covers digits_cnn, lenet5" in message and "use --format=onnx" in message
  assert not out.parent.exists()


def test_overwrite_replaces_an_earlier_export(run_dir, tmp_path):
  out = tmp_path / "student"
  assert run_export(run_dir, "--format=flax", f"--out={out}",
                    "--checkpoint=2").returncode == 0
  assert "already exists" in _one_line_error(
      run_export(run_dir, "--format=flax", f"--out={out}"))
  assert dfkd_jax.load_student(out).card.step == 2
  result = run_export(run_dir, "--format=flax", f"--out={out}", "--overwrite")
  assert result.returncode == 0, result.stderr
  assert dfkd_jax.load_student(out).card.step == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


# ---------------------------------------------------------------------------
# Issue 37: --overwrite replaces only an earlier export; no input is read wrong in
# silence; damaged files are one line.
# ---------------------------------------------------------------------------


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
  """Every file under ``root`` (relative path -> bytes)."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


@pytest.fixture
def run_copy(run_dir, tmp_path):
  """A copy of the tiny run in ``tmp_path/home/run``, and its files' bytes."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "home" / "run"
  shutil.copytree(run_dir, workdir)
  return workdir, snapshot(workdir)


def run_cli(module, cwd, *flags):
  """``python -m dfkd_jax.<module> FLAGS`` in ``cwd`` (this tree on the path)."""
  path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-m", f"dfkd_jax.{module}", *flags],
                        capture_output=True, text=True, check=False, cwd=cwd,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path})


# --out, relative to the folder holding the run (the command's cwd), and the words of
# the refusal.
OVERWRITE_PATHS = {
    "workdir": ("run", "is a run directory (it holds run_config.json)"),
    "inside_workdir": ("run/checkpoints", "lies inside the run directory"),
    "empty": ("", "--out is empty"),
    "cwd": (".", "is the current directory"),
    "cwd_absolute": ("{cwd}", "is the current directory"),
    "above_cwd": ("..", "is a folder above the current one"),
}


@pytest.mark.parametrize("case", sorted(OVERWRITE_PATHS))
def test_overwrite_never_deletes_a_run_or_the_current_directory(case, run_copy):
  workdir, before = run_copy
  home = workdir.parent
  out, words = OVERWRITE_PATHS[case]
  result = run_cli("export", home, f"--workdir={workdir}", "--format=flax",
                   f"--out={out.format(cwd=home)}", "--overwrite")
  line = _one_line_error(result)
  assert words in line, line
  assert "choose" in line or "pass" in line, line
  assert snapshot(workdir) == before
  assert sorted(p.name for p in home.iterdir()) == ["run"]


def test_overwrite_refuses_the_parent_of_the_workdir(run_copy, tmp_path):
  workdir, before = run_copy
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  line = _one_line_error(run_cli("export", elsewhere, f"--workdir={workdir}",
                                 "--format=flax", f"--out={workdir.parent}",
                                 "--overwrite"))
  assert f"holds the run directory {workdir}" in line
  assert snapshot(workdir) == before


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_overwrite_never_replaces_a_runs_file(fmt, run_copy):
  workdir, before = run_copy
  line = _one_line_error(run_cli("export", workdir.parent, f"--workdir={workdir}",
                                 f"--format={fmt}", f"--out={workdir / 'summary.json'}",
                                 "--overwrite"))
  assert "lies inside the run directory" in line
  assert snapshot(workdir) == before


def test_overwrite_refuses_what_another_tool_wrote(run_dir, tmp_path):
  """A folder of the user's, and a file that is not an export of the format."""
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  line = _one_line_error(run_export(run_dir, "--format=flax", f"--out={mine}",
                                    "--overwrite"))
  assert "is not an earlier --format=flax export" in line
  assert (mine / "notes.txt").read_text() == "mine"
  other = tmp_path / "model.onnx"
  other.write_bytes(b"not an onnx model of ours")
  line = _one_line_error(run_export(run_dir, "--format=onnx", f"--out={other}",
                                    "--overwrite"))
  assert "is not an earlier --format=onnx export" in line
  assert other.read_bytes() == b"not an onnx model of ours"


def test_convert_and_train_teacher_never_replace_a_run(run_copy, tmp_path):
  """The other tools that replace a folder: convert --out and train_teacher --workdir
  (a teacher directory) refuse a run directory before any work."""
  workdir, before = run_copy
  pth = tmp_path / "student.pth"
  assert run_export(workdir, "--format=torch", f"--out={pth}").returncode == 0
  line = _one_line_error(run_cli(
      "convert", tmp_path, f"--torch_checkpoint={pth}", "--arch=digits_cnn_half",
      "--num_classes=10", "--dataset=digits", f"--out={workdir}", "--overwrite"))
  assert "is a run directory" in line
  result = run_cli("train_teacher", tmp_path,
                   f"--config={REPO / 'configs/teacher/digits.py'}",
                   f"--workdir={workdir}", "--config.overwrite=True")
  assert result.returncode == 1 and "is a run directory" in result.stderr, result.stderr
  assert "epoch 1/" not in result.stdout  # Refused before training.
  assert snapshot(workdir) == before


def test_an_out_whose_parent_is_a_file_is_one_line_before_the_conversion(run_dir,
                                                                         tmp_path):
  (tmp_path / "models").write_text("a file")
  out = tmp_path / "models" / "student.onnx"
  result = run_export(run_dir, "--format=onnx", f"--out={out}")
  line = _one_line_error(result)
  assert f"{tmp_path / 'models'} is a file, not a folder" in line
  assert "converting" not in result.stdout
  assert (tmp_path / "models").read_text() == "a file"


def card_step(out: pathlib.Path) -> int:
  return json.loads((out / "student.json").read_text())["step"]


def test_export_keeps_what_the_summary_kept_after_a_rerun_with_another_criterion(
    teacher_dir, tmp_path):
  """A run kept an epoch by `agreement`; rerun with `last` (a free field), its summary
  keeps the last epoch: export follows it, not run_config.json's criterion."""
  options = {"selection.criterion": "agreement", "selection.probe_size": 32,
             "selection.probe_epochs": 2, "iterations_per_epoch": 1,
             "student_steps": 1, "checkpoints_to_keep": 1, "num_epochs": 4}
  workdir = tmp_path / "run"
  first = trainer.run(tiny_config(teacher_dir, "mb_dfkd", **options), workdir,
                      log=lambda s: None)
  assert first["selected_epoch"] != 4, "the test needs agreement to keep another epoch"
  trainer.run(tiny_config(teacher_dir, "mb_dfkd", **{**options,
                                                      "selection.criterion": "last"}),
              workdir, log=lambda s: None)
  summary = json.loads((workdir / "summary.json").read_text())
  assert (summary["criterion"], summary["selected_epoch"]) == ("last", 4)
  result = run_export(workdir, "--format=flax", f"--out={tmp_path / 'student'}")
  assert result.returncode == 0, result.stderr
  assert card_step(tmp_path / "student") == 4
  # And back: the summary keeps agreement's epoch again, whose checkpoint is on disk.
  trainer.run(tiny_config(teacher_dir, "mb_dfkd", **options), workdir, log=lambda s: None)
  result = run_export(workdir, "--format=flax", f"--out={tmp_path / 'again'}")
  assert result.returncode == 0, result.stderr
  assert card_step(tmp_path / "again") == first["selected_epoch"]


def unit_test_images():
  """The digits test set as [0, 1] floats at the student's input shape, and labels."""
  split = data.load_split("digits", "test")
  images = data.preprocess(split.images, data.get_dataset("digits"),
                           pixel_max=split.pixel_max, image_shape=(8, 8, 1),
                           normalization=((0.0,), (1.0,)))
  return np.asarray(images), np.asarray(split.labels)


def test_load_student_scales_uint8_images_and_refuses_0_255_floats(run_dir, tmp_path):
  out = tmp_path / "student"
  assert run_export(run_dir, "--format=flax", f"--out={out}").returncode == 0
  predict = dfkd_jax.load_student(out)
  images, _ = unit_test_images()
  as_uint8 = np.rint(images * 255).astype(np.uint8)
  np.testing.assert_allclose(np.asarray(predict(as_uint8)),
                             np.asarray(predict(as_uint8 / np.float32(255))),
                             rtol=1e-5, atol=1e-5)
  for bad, words in [(as_uint8.astype(np.float32), "float images in [0, 255]"),
                     (images.transpose(0, 3, 1, 2), "NCHW? pass NHWC"),
                     (as_uint8.astype(np.int64), "images of dtype int64")]:
    with pytest.raises(ValueError) as error:
      predict(bad)
    assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["truncated_card", "no_variables"])
def test_load_student_on_a_damaged_folder_is_one_line(damage, run_dir, tmp_path):
  out = tmp_path / "student"
  assert run_export(run_dir, "--format=flax", f"--out={out}").returncode == 0
  if damage == "truncated_card":
    card = out / "student.json"
    card.write_bytes(card.read_bytes()[:40])
  else:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(out / "variables")
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    dfkd_jax.load_student(out)
  message = str(error.value)
  assert "\n" not in message and "export the student again" in message, message
  assert ("student.json cannot be read" if damage == "truncated_card"
          else "variables not found") in message


def damage_checkpoint(workdir: pathlib.Path, step: int, what: str) -> None:
  state = workdir / "checkpoints" / str(step) / "state"
  if what == "metadata":
    (state / "_METADATA").write_bytes((state / "_METADATA").read_bytes()[:20])
  else:  # The arrays' data files, zeroed.
    for path in (state / "ocdbt.process_0" / "d").iterdir():
      path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize("what", ["metadata", "data"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(what, run_copy,
                                                                   tmp_path):
  workdir, _ = run_copy
  damage_checkpoint(workdir, 4, what)
  out = tmp_path / "student"
  result = run_export(workdir, "--format=flax", f"--out={out}")
  assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
  assert "checkpoint 4 in" in result.stdout and "does not restore" in result.stdout
  assert "trying the one before it" in result.stdout
  assert card_step(out) == 2
  damage_checkpoint(workdir, 2, what)
  line = _one_line_error(run_export(workdir, "--format=flax",
                                    f"--out={tmp_path / 'none'}"))
  assert "checkpoint 2 in" in line and "no checkpoint to export" in line
  line = _one_line_error(run_export(workdir, "--format=flax",
                                    f"--out={tmp_path / 'none'}", "--checkpoint=4"))
  assert "checkpoint 4 in" in line and "does not restore" in line


def test_a_truncated_run_config_is_one_line(run_copy, tmp_path):
  workdir, _ = run_copy
  record = workdir / "run_config.json"
  record.write_bytes(record.read_bytes()[:100])
  line = _one_line_error(run_export(workdir, "--format=flax",
                                    f"--out={tmp_path / 'student'}"))
  assert "run_config.json is damaged" in line and "restore it from a copy" in line


def test_the_card_records_the_runs_dataset_and_a_moved_one_is_one_line(run_copy,
                                                                       tmp_path):
  """A run on a folder: dataset (its record's config.dataset; the teacher's is
  digits): the card records the folder, and once it moved the ONNX check says so."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir, _ = run_copy
  images, labels = unit_test_images()
  folder = tmp_path / "pngs"
  for i, (image, label) in enumerate(zip(images, labels)):
    path = folder / "test" / str(label) / f"{i:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(image[..., 0] * 255).astype(np.uint8)).save(path)
  record = json.loads((workdir / "run_config.json").read_text())
  record["config"]["dataset"] = f"folder:{folder}"
  (workdir / "run_config.json").write_text(json.dumps(record))
  result = run_export(workdir, "--format=flax", f"--out={tmp_path / 'student'}")
  assert result.returncode == 0, result.stderr
  card = json.loads((tmp_path / "student" / "student.json").read_text())
  assert card["dataset"] == f"folder:{folder}"
  folder.rename(tmp_path / "moved")
  result = run_export(workdir, "--format=onnx", f"--out={tmp_path / 'student.onnx'}")
  line = _one_line_error(result)
  assert "the ONNX check needs the run's test set" in line and str(folder) in line
  assert "converting" not in result.stdout

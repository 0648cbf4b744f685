"""docs/own_teacher.md, run end to end: a PyTorch teacher and an image folder in, an ONNX
student out, with the guide's commands as subprocesses on real files.

The folder is scikit-learn's digits written as PNGs (train/<class>/, test/<class>/);
the teacher is a small PyTorch CNN trained on train/ here, whose Flax port is
`own_models:TinyNet` (the user's own architecture, by import path). Tiny budgets (one
epoch of two iterations, and `own_models:TinyGenerator` for the guide's generator, which
compiles in a fraction of the time): the point is that every step runs and hands the
next one what it needs, and that the ONNX student in onnxruntime gives the accuracy the
run measured.
"""

import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image
import torch
from torch import nn
import torch.nn.functional as F

from test_file_datasets import _write_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent
MEAN, STD = 0.5, 0.5  # The PyTorch teacher's Normalize((0.5,), (0.5,)).


class TorchTinyNet(nn.Module):
  """The PyTorch network `own_models:TinyNet` ports: the same module names."""

  def __init__(self, num_classes, width=16):
    super().__init__()
    self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.fc = nn.Linear(width, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.fc(x.mean((2, 3)))


def image_folder(root: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """uint8 ``[N, H, W]`` images and labels of ``root/<class>/*``, as ImageFolder reads
  them: class index = the sorted folder names."""
  classes = sorted(p.name for p in root.iterdir() if p.is_dir())
  files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]
  images = np.stack([np.asarray(Image.open(f).convert("L")) for f, _ in files])
  return images, np.array([i for _, i in files])


def to_tensor(images: np.ndarray) -> torch.Tensor:
  """ToTensor() and Normalize((0.5,), (0.5,)) of uint8 ``[N, H, W]`` images."""
  return (torch.from_numpy(images).float()[:, None] / 255 - MEAN) / STD


def train_torch_teacher(folder: pathlib.Path, out: pathlib.Path) -> float:
  """Trains TorchTinyNet on folder/train, saves its state_dict and check.npz; returns
  its test accuracy (percent)."""
  torch.manual_seed(0)
  images, labels = image_folder(folder / "train")
  x, y = to_tensor(images), torch.from_numpy(labels)
  model = TorchTinyNet(10)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # Tiny batches: threads only contend on a 2-core machine.
  try:
    for _ in range(6):
      for batch in torch.randperm(len(y)).split(64):
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
  finally:
    torch.set_num_threads(threads)
  torch.save(model.state_dict(), out / "teacher.pth")
  test_images, test_labels = image_folder(folder / "test")
  with torch.no_grad():
    logits = model.eval()(to_tensor(test_images)).numpy()
  np.savez(out / "check.npz", images=test_images, logits=logits)  # Images as stored.
  return 100.0 * float(np.mean(logits.argmax(-1) == test_labels))


def guide_blocks() -> list[str]:
  """The bash code blocks of docs/own_teacher.md."""
  text = (REPO / "docs" / "own_teacher.md").read_text()
  return re.findall(r"```bash\n(.*?)```", text, re.S)


def guide_commands(blocks=None) -> dict[str, set[str]]:
  """The flags of each `python -m dfkd_jax.MODULE` command of the guide's code blocks
  (all of them by default; a later command of a module replaces an earlier one)."""
  commands = {}
  for block in guide_blocks() if blocks is None else blocks:
    for command in block.replace("\\\n", " ").splitlines():
      found = re.search(r"python -m dfkd_jax\.(\w+)(.*)", command)
      if found:
        commands[found.group(1)] = set(re.findall(r"--([\w.]+)", found.group(2)))
  return commands


def run(args, env, timings, used, cwd):
  start = time.time()
  proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        timeout=300, check=False, cwd=cwd, env=env)
  name = args[0].split(".")[-1]
  timings[name] = time.time() - start
  used[name] = {a[2:].split("=")[0] for a in args[1:]}
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_the_guide_from_a_pytorch_state_dict_and_a_folder_to_an_onnx_student(tmp_path):
  folder = _write_folder(tmp_path / "digits")
  torch_accuracy = train_torch_teacher(folder, tmp_path)
  assert torch_accuracy > 80.0
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "DFKD_JAX_DATA_CACHE": str(tmp_path / "cache"),
         "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
  dataset, timings, used = f"folder:{folder}", {}, {}

  # Step 3 of the guide: convert, checked against PyTorch's logits on the test images.
  out = run(["dfkd_jax.convert", f"--torch_checkpoint={tmp_path / 'teacher.pth'}",
             "--arch=own_models:TinyNet", "--num_classes=10", f"--dataset={dataset}",
             f"--mean={MEAN}", f"--std={STD}", f"--check_inputs={tmp_path / 'check.npz'}",
             f"--test_accuracy={torch_accuracy}", f"--out={tmp_path / 'teacher'}"],
            env, timings, used, tmp_path)
  assert "top-1 agreement 100.00%" in out
  meta = json.loads((tmp_path / "teacher" / "teacher.json").read_text())
  assert (meta["arch"], meta["input_shape"]) == ("own_models:TinyNet", [8, 8, 1])

  # Step 4: distil, evaluating on the folder's test/ (tiny budget). As in the guide,
  # from the user's folder: configs/digits.py is the repository's (issue 40, item 6.1).
  out = run(["dfkd_jax.train", "--config=configs/digits.py:dfkd",
       f"--config.dataset={dataset}", f"--config.teacher_dir={tmp_path / 'teacher'}",
       "--config.teacher_config=", "--config.student=digits_cnn_half",
       "--config.generator=own_models:TinyGenerator", "--config.num_epochs=1",
       "--config.iterations_per_epoch=2", "--config.student_steps=1",
       "--config.batch_size=32", "--config.latent_dim=16", "--config.tensorboard=False",
       f"--workdir={tmp_path / 'run'}"],
      env, timings, used, tmp_path)
  assert out.splitlines()[0] == (f"--config=configs/digits.py: not in {tmp_path}, using "
                                 f"the repository's {REPO / 'configs/digits.py'}")
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["teacher_accuracy"] == pytest.approx(torch_accuracy, abs=1e-3)
  assert len(summary["test_accuracy"]) == 1

  # Step 5: export to ONNX (checked in onnxruntime by the command itself).
  out = run(["dfkd_jax.export", f"--workdir={tmp_path / 'run'}", "--format=onnx",
             f"--out={tmp_path / 'student.onnx'}"], env, timings, used, tmp_path)
  assert "max |logit difference|" in out

  # Step 6: the student in onnxruntime, on the PNGs, preprocessed as the card says.
  model = onnx.load(str(tmp_path / "student.onnx"))
  card = json.loads({p.key: p.value for p in model.metadata_props}["dfkd_jax.student"])
  assert (card["arch"], card["teacher_arch"]) == ("digits_cnn_half", "own_models:TinyNet")
  images, labels = image_folder(folder / "test")
  norm = card["normalization"]
  x = ((images[:, None] / 255 - norm["mean"][0]) / norm["std"][0]).astype(np.float32)
  session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"),
                                         providers=["CPUExecutionProvider"])
  logits = session.run(["logits"], {"images": x})[0]
  accuracy = 100.0 * float(np.mean(logits.argmax(-1) == labels))
  assert accuracy == pytest.approx(summary["test_accuracy"][-1], abs=1e-9)
  # The guide's commands are these, flag for flag (the test adds only its budgets).
  guide = guide_commands()
  assert set(guide) == set(used) == {"convert", "train", "export"}
  for name, flags in guide.items():
    assert flags <= used[name], (name, flags - used[name])
  print("wall times (s):", {k: round(v, 1) for k, v in timings.items()})


# The short way (issue 42): the user's nn.Module as it is, through torchax. Their module
# file is the network they trained: TorchTinyNet's own source.
MY_NETS = ("import torch.nn.functional as F\nfrom torch import nn\n\n\n"
           + inspect.getsource(TorchTinyNet) + "\n\nNet = TorchTinyNet\n")


@pytest.mark.slow
def test_the_short_way_from_your_own_folder_with_no_flax(tmp_path):
  """The guide's three commands, run from the user's folder (``PYTHONPATH=.``) holding
  my_nets.py, teacher.pth, check.npz and DATA/: no Flax code anywhere; the student's
  ONNX file scores what the run measured."""
  pytest.importorskip("torchax")
  user = tmp_path / "mine"
  user.mkdir()
  (user / "my_nets.py").write_text(MY_NETS)
  folder = _write_folder(user / "DATA")
  torch_accuracy = train_torch_teacher(folder, user)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ".",
         "DFKD_JAX_DATA_CACHE": str(tmp_path / "cache")}
  timings, used = {}, {}
  out = run(["dfkd_jax.convert", "--torch_module=my_nets:Net",
             "--torch_checkpoint=teacher.pth", '--torch_kwargs={"num_classes": 10}',
             "--dataset=folder:DATA", f"--mean={MEAN}", f"--std={STD}",
             "--check_inputs=check.npz", "--out=teachers/mine"], env, timings, used, user)
  assert "top-1 agreement 100.00%" in out
  meta = json.loads((user / "teachers/mine/teacher.json").read_text())
  assert meta["torch"]["module"] == "my_nets:Net" and meta["arch"] == "torch:my_nets:Net"
  out = run(["dfkd_jax.train", "--config=configs/digits.py:dfkd",
             "--config.dataset=folder:DATA", "--config.teacher_dir=teachers/mine",
             "--config.teacher_config=", "--config.student=digits_cnn_half",
             "--config.num_epochs=1", "--config.iterations_per_epoch=2",
             "--config.student_steps=1", "--config.batch_size=32",
             "--config.latent_dim=16", "--config.tensorboard=False",
             "--workdir=runs/mine"], env, timings, used, user)
  summary = json.loads((user / "runs/mine/summary.json").read_text())
  assert summary["teacher_accuracy"] == pytest.approx(torch_accuracy, abs=1e-3)
  out = run(["dfkd_jax.export", "--workdir=runs/mine", "--format=onnx",
             "--out=student.onnx"], env, timings, used, user)
  assert "max |logit difference|" in out
  images, labels = image_folder(folder / "test")
  x = ((images[:, None] / 255 - MEAN) / STD).astype(np.float32)
  session = onnxruntime.InferenceSession(str(user / "student.onnx"),
                                         providers=["CPUExecutionProvider"])
  logits = session.run(["logits"], {"images": x})[0]
  accuracy = 100.0 * float(np.mean(logits.argmax(-1) == labels))
  assert accuracy == pytest.approx(summary["test_accuracy"][-1], abs=1e-9)
  assert not list(user.rglob("*flax*")) and "flax" not in MY_NETS.lower()
  short_way = guide_blocks()[0]  # The guide leads with it.
  assert "--torch_module" in short_way
  guide = guide_commands([short_way])
  assert set(guide) == set(used) == {"convert", "train", "export"}
  for name, flags in guide.items():
    assert flags <= used[name], (name, flags - used[name])
  print("wall times (s):", {k: round(v, 1) for k, v in timings.items()})

"""PyTorch -> Flax teacher import: logits agree with PyTorch versions of each network.

The PyTorch modules are the package's own (:mod:`dfkd_jax.interop.torch_models`, written
from the architecture descriptions: CMI / DFAD CIFAR ResNets, CMI WRNs, DAFL LeNet-5),
with the peers' parameter names.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from dfkd_jax.data import datasets as data
from dfkd_jax.interop import convert
from dfkd_jax.interop import torch_models
from dfkd_jax.models import teacher

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _randomise_bn(model: nn.Module, seed: int) -> None:
  generator = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      shape = m.running_mean.shape
      m.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
      m.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
      m.weight.data.copy_(1 + 0.2 * torch.randn(shape, generator=generator))
      m.bias.data.copy_(0.2 * torch.randn(shape, generator=generator))


CASES = {
    "resnet18": (lambda c: torch_models.build("resnet18", c), "cifar10", (3, 32, 32)),
    "resnet34": (lambda c: torch_models.build("resnet34", c), "cifar10", (3, 32, 32)),
    "wrn16_2": (lambda c: torch_models.build("wrn16_2", c), "cifar10", (3, 32, 32)),
    "wrn40_2": (lambda c: torch_models.build("wrn40_2", c), "cifar100", (3, 32, 32)),
    "lenet5": (lambda c: torch_models.build("lenet5", c), "mnist", (1, 32, 32)),
}


# The larger networks are second-tier cases (`-m slow`).
@pytest.mark.parametrize("arch", [
    pytest.param(a, marks=pytest.mark.slow) if a in ("resnet18", "resnet34", "wrn40_2") else a
    for a in sorted(CASES)])
def test_converted_logits_match_pytorch(arch, tmp_path):
  build, dataset, chw = CASES[arch]
  num_classes = 100 if dataset == "cifar100" else 10
  torch.manual_seed(0)
  model = build(num_classes)
  with torch.no_grad():
    _randomise_bn(model, 1)
  model.eval()
  path = tmp_path / f"{dataset}_{arch}.pth"
  # CMI layout with a DataParallel prefix, to exercise both unwrappings.
  torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
              "best_acc": 0.9}, path)
  meta = convert.convert(path, arch, num_classes, tmp_path / "teacher", dataset=dataset)
  assert meta.input_shape == (chw[1], chw[2], chw[0])

  module, variables, loaded_meta = teacher.load_teacher(tmp_path / "teacher")
  assert loaded_meta == meta
  x = np.random.default_rng(0).normal(size=(2, *chw)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(x)).numpy()
  got = module.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_cli_writes_teacher_with_normalisation(tmp_path):
  torch.manual_seed(0)
  path = tmp_path / "lenet.pth"
  torch.save(torch_models.LeNet5(10).state_dict(), path)  # plain state dict (DFAD style)
  out = tmp_path / "teacher"
  subprocess.run([sys.executable, "-m", "dfkd_jax.convert", f"--torch_checkpoint={path}",
                  "--arch=lenet5", "--num_classes=10", f"--out={out}",
                  "--dataset=mnist", "--test_accuracy=99.3"],
                 check=True, cwd=REPO_ROOT,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
  data = json.loads((out / "teacher.json").read_text())
  assert data["arch"] == "lenet5" and data["input_shape"] == [32, 32, 1]
  assert data["normalization"] == {"mean": [0.1307], "std": [0.3081]}
  assert data["test_accuracy"] == 99.3


def test_mismatched_keys_and_shapes_are_named(tmp_path):
  state = torch_models.LeNet5(10).state_dict()
  state["fc3.weight"] = state.pop("fc2.weight")
  state["conv1.bias"] = torch.zeros(7)
  path = tmp_path / "bad.pth"
  torch.save(state, path)
  with pytest.raises(ValueError) as error:
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist")
  message = str(error.value)
  assert "missing keys ['fc2.weight']" in message
  assert "unexpected keys ['fc3.weight']" in message
  assert "conv1.bias" in message and "(6,)" in message
  assert not (tmp_path / "teacher").exists()


def test_wrong_class_count_is_refused(tmp_path):
  path = tmp_path / "lenet.pth"
  state = torch_models.LeNet5(10).state_dict()
  torch.save(state, path)
  with pytest.raises(ValueError, match="fc2.weight"):
    convert.state_dict_to_variables(state, "lenet5", 100, (32, 32, 1))
  with pytest.raises(ValueError, match=r"--num_classes=100 but --dataset=mnist has 10"):
    convert.convert(path, "lenet5", 100, tmp_path / "teacher", dataset="mnist")
  with pytest.raises(ValueError, match=r"--arch=lenet5 does not fit --dataset=cifar10 "
                     r"\(3 channels\)"):
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="cifar10")
  with pytest.raises(ValueError, match=r"--arch=resnet34_64 takes \(64, 64, 3\) inputs "
                     r"but --dataset=cifar10 gives \(32, 32, 3\)"):
    convert.convert(path, "resnet34_64", 10, tmp_path / "teacher", dataset="cifar10")
  assert not (tmp_path / "teacher").exists()


def test_unknown_dataset_is_refused_even_with_mean_std(tmp_path):
  path = tmp_path / "lenet.pth"
  torch.save(torch_models.LeNet5(10).state_dict(), path)
  # Evaluation reads the recorded id, so one it cannot parse is refused here.
  with pytest.raises(ValueError, match=r"unknown dataset 'emnist'.*mnist"):
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="emnist",
                    mean=(0.5,), std=(0.5,))
  assert not (tmp_path / "teacher").exists()


@pytest.mark.parametrize("dataset_id", data.dataset_ids())
def test_every_dataset_id_has_default_normalisation(dataset_id):
  spec = data.get_dataset(dataset_id).spec
  mean, std = convert.default_normalization(dataset_id)
  assert len(mean) == len(std) == spec.image_shape[2]
  assert all(s > 0 for s in std)
  # A variant (`mnist:pad`) takes its source's constants.
  assert (mean, std) == convert.default_normalization(spec.name)


def _pad_pipeline(images: np.ndarray) -> np.ndarray:
  """PyTorch's ``ToTensor(), Pad(2), Normalize(0.1307, 0.3081)`` on uint8 [N, 28, 28]."""
  x = torch.from_numpy(images).float().div(255).unsqueeze(1)
  return ((F.pad(x, (2, 2, 2, 2)) - 0.1307) / 0.3081).numpy()


def test_pad_variant_converts_with_its_defaults(tmp_path):
  torch.manual_seed(0)
  path = tmp_path / "lenet.pth"
  torch.save(torch_models.LeNet5(10).state_dict(), path)
  meta = convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist:pad")
  assert meta.dataset == "mnist:pad" and meta.input_shape == (32, 32, 1)
  assert (meta.mean, meta.std) == ((0.1307,), (0.3081,))
  assert teacher.load_meta(tmp_path / "teacher") == meta


@pytest.fixture(name="padded_lenet")
def fixture_padded_lenet(tmp_path):
  """A LeNet-5 checkpoint and PyTorch's logits on zero-padded MNIST-like images."""
  torch.manual_seed(0)
  model = torch_models.LeNet5(10).eval()
  path = tmp_path / "lenet.pth"
  torch.save(model.state_dict(), path)
  rng = np.random.default_rng(0)
  images = np.zeros((40, 28, 28), np.uint8)  # Strokes in the middle, as in MNIST.
  images[:, 4:24, 4:24] = rng.integers(0, 256, (40, 20, 20))
  inputs = _pad_pipeline(images)
  with torch.no_grad():
    logits = model(torch.from_numpy(inputs)).numpy()
  return path, images, inputs, logits


def test_check_inputs_accepts_the_right_preprocessing(padded_lenet, tmp_path):
  path, images, inputs, logits = padded_lenet
  np.savez(tmp_path / "check.npz", images=images, logits=logits)
  lines = []
  meta = convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist:pad",
                         check_inputs=tmp_path / "check.npz", log=lines.append)
  assert meta.dataset == "mnist:pad" and (tmp_path / "teacher" / "teacher.json").is_file()
  assert len(lines) == 1 and "top-1 agreement 100.00%" in lines[0]
  diff = float(lines[0].split("difference| ")[1].split()[0])
  assert diff <= 1e-4
  # `inputs` (NCHW, as the network got them) check the weights alone.
  np.savez(tmp_path / "inputs.npz", inputs=inputs, logits=logits)
  convert.convert(path, "lenet5", 10, tmp_path / "teacher2", dataset="mnist:pad",
                  check_inputs=tmp_path / "inputs.npz")


def test_check_inputs_catches_the_wrong_preprocessing(padded_lenet, tmp_path):
  path, images, _, logits = padded_lenet
  np.savez(tmp_path / "check.npz", images=images[..., None], logits=logits)  # NHWC.
  with pytest.raises(ValueError) as error:  # `mnist` resizes; PyTorch padded.
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist",
                    check_inputs=tmp_path / "check.npz")
  message = str(error.value)
  assert "disagrees" in message and "bilinear resize 28x28 -> 32x32" in message
  assert "nothing written" in message and "\n" not in message
  assert not (tmp_path / "teacher").exists()
  with pytest.raises(ValueError, match=r"normalise mean \[0.5\]"):  # Wrong mean/std.
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist:pad",
                    mean=(0.5,), std=(0.5,), check_inputs=tmp_path / "check.npz")


def test_check_inputs_catches_other_weights_and_bad_files(padded_lenet, tmp_path):
  path, images, inputs, logits = padded_lenet
  perturbed = logits.copy()
  perturbed[3, 2] += 0.01
  np.savez(tmp_path / "perturbed.npz", inputs=inputs, logits=perturbed)
  scale = np.abs(logits).max()
  with pytest.raises(ValueError, match=rf"difference\| 0.01 = {0.01 / scale:.3g} of "
                     r"the largest \|PyTorch logit\| > --check_tolerance=0.01.*"
                     "weights differ"):
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist:pad",
                    check_inputs=tmp_path / "perturbed.npz")
  convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="mnist:pad",
                  check_inputs=tmp_path / "perturbed.npz", check_tolerance=0.02 / scale)
  bad = {"no_logits.npz": dict(images=images),
         "two_kinds.npz": dict(images=images, inputs=inputs, logits=logits),
         "rows.npz": dict(images=images, logits=logits[:5]),
         "shape.npz": dict(inputs=inputs[:, :, :28, :28], logits=logits)}
  for name, arrays in bad.items():
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(ValueError, match="--check_inputs"):
      convert.convert(path, "lenet5", 10, tmp_path / "other", dataset="mnist:pad",
                      check_inputs=tmp_path / name)
  (tmp_path / "junk.npz").write_text("not an npz")
  with pytest.raises(ValueError, match="not an .npz"):
    convert.convert(path, "lenet5", 10, tmp_path / "other", dataset="mnist:pad",
                    check_inputs=tmp_path / "junk.npz")
  assert not (tmp_path / "other").exists()


_BLOCK_TORCH = "import sys; sys.modules['torch'] = None; "


@pytest.mark.parametrize("case", ["keys", "not_a_checkpoint", "existing_out",
                                  "no_torch"])
def test_cli_errors_are_one_line(case, tmp_path):
  state = torch_models.LeNet5(10).state_dict()
  if case == "keys":  # Missing, unexpected and mis-shaped arrays at once.
    state["fc3.weight"] = state.pop("fc2.weight")
    state["conv1.bias"] = torch.zeros(7)
  path = tmp_path / "lenet.pth"
  torch.save(state, path)
  if case == "not_a_checkpoint":
    path.write_text("these are not the weights you are looking for\n" * 10)
  out = tmp_path / "teacher"
  if case == "existing_out":
    out.mkdir()
  code = ((_BLOCK_TORCH if case == "no_torch" else "") +
          "from absl import app; from dfkd_jax import convert; app.run(convert.main)")
  result = subprocess.run(
      [sys.executable, "-c", code, f"--torch_checkpoint={path}", "--arch=lenet5",
       "--num_classes=10", f"--out={out}", "--dataset=mnist"],
      capture_output=True, text=True, check=False, cwd=REPO_ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  expected = {"keys": "missing keys ['fc2.weight']; unexpected keys ['fc3.weight']; "
                      "shape mismatches ['conv1.bias",
              "not_a_checkpoint": f"{path} is not a PyTorch checkpoint",
              "existing_out": "already exists; pass --overwrite",
              "no_torch": 'needs torch, which is not installed'}[case]
  assert expected in lines[0]
  if case == "no_torch":
    assert 'pip install -e ".[convert]"' in lines[0]
  if case != "existing_out":
    assert not out.exists()


@pytest.mark.parametrize("flag, message", [
    ("--test_accuracy=150", "--test_accuracy=150 must be a percentage in [0, 100]"),
    ("--test_accuracy=nan", "--test_accuracy=nan must be a percentage in [0, 100]"),
    ("--channels=0", "--channels=0 must be at least 1 (1 for grayscale, 3 for RGB)"),
    ("--check_tolerance=-1", "--check_tolerance=-1 must be a finite number > 0"),
])
def test_cli_number_flags_no_teacher_can_have_are_one_line(flag, message, tmp_path):
  """Issue 37, item 12's siblings: these wrote a teacher (150% recorded as its accuracy)
  or a misleading line."""
  path = tmp_path / "lenet.pth"
  torch.save(torch_models.LeNet5(10).state_dict(), path)
  out = tmp_path / "teacher"
  result = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.convert", f"--torch_checkpoint={path}",
       "--arch=lenet5", "--num_classes=10", f"--out={out}", "--dataset=mnist", flag],
      capture_output=True, text=True, check=False, cwd=REPO_ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
  assert not out.exists()

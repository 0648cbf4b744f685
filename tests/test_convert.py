"""PyTorch -> Flax teacher import: logits agree with PyTorch copies of each network.

The PyTorch modules below are written from the architecture descriptions (CMI / DFAD
CIFAR ResNets, CMI WRNs, DAFL LeNet-5), with the peers' parameter names.
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

from dfkd_jax import convert
from dfkd_jax import teacher


class TorchBasicBlock(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TorchResNet(nn.Module):

  def __init__(self, blocks, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
      layer = []
      for b in range(n):
        layer.append(TorchBasicBlock(cin, width, 2 if i > 0 and b == 0 else 1))
        cin = width
      setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    for i in range(4):
      out = getattr(self, f"layer{i + 1}")(out)
    return self.linear(F.avg_pool2d(out, 4).flatten(1))


class TorchWRNBlock(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.equal = cin == cout
    if not self.equal:
      self.convShortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)  # pylint: disable=invalid-name

  def forward(self, x):
    a = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(a))))
    return (x if self.equal else self.convShortcut(a)) + out


class TorchNetworkBlock(nn.Module):

  def __init__(self, n, cin, cout, stride):
    super().__init__()
    self.layer = nn.Sequential(*[TorchWRNBlock(cin if i == 0 else cout, cout,
                                               stride if i == 0 else 1)
                                 for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class TorchWRN(nn.Module):

  def __init__(self, depth, k, num_classes):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.block1 = TorchNetworkBlock(n, 16, 16 * k, 1)
    self.block2 = TorchNetworkBlock(n, 16 * k, 32 * k, 2)
    self.block3 = TorchNetworkBlock(n, 32 * k, 64 * k, 2)
    self.bn1 = nn.BatchNorm2d(64 * k)
    self.fc = nn.Linear(64 * k, num_classes)

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)
    return self.fc(out)


class TorchLeNet5(nn.Module):

  def __init__(self, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 6, 5)
    self.conv2 = nn.Conv2d(6, 16, 5)
    self.conv3 = nn.Conv2d(16, 120, 5)
    self.fc1 = nn.Linear(120, 84)
    self.fc2 = nn.Linear(84, num_classes)

  def forward(self, x):
    out = F.max_pool2d(F.relu(self.conv1(x)), 2)
    out = F.max_pool2d(F.relu(self.conv2(out)), 2)
    out = F.relu(self.conv3(out)).flatten(1)
    return self.fc2(F.relu(self.fc1(out)))


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
    "resnet18": (lambda c: TorchResNet((2, 2, 2, 2), c), "cifar10", (3, 32, 32)),
    "resnet34": (lambda c: TorchResNet((3, 4, 6, 3), c), "cifar10", (3, 32, 32)),
    "wrn16_2": (lambda c: TorchWRN(16, 2, c), "cifar10", (3, 32, 32)),
    "wrn40_2": (lambda c: TorchWRN(40, 2, c), "cifar100", (3, 32, 32)),
    "lenet5": (lambda c: TorchLeNet5(c), "mnist", (1, 32, 32)),
}


@pytest.mark.parametrize("arch", sorted(CASES))
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
  torch.save(TorchLeNet5(10).state_dict(), path)  # plain state dict (DFAD style)
  out = tmp_path / "teacher"
  subprocess.run([sys.executable, "-m", "dfkd_jax.convert", f"--torch_checkpoint={path}",
                  "--arch=lenet5", "--num_classes=10", f"--out={out}",
                  "--dataset=mnist", "--test_accuracy=99.3"],
                 check=True, cwd=pathlib.Path(__file__).resolve().parents[1],
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
  data = json.loads((out / "teacher.json").read_text())
  assert data["arch"] == "lenet5" and data["input_shape"] == [32, 32, 1]
  assert data["normalization"] == {"mean": [0.1307], "std": [0.3081]}
  assert data["test_accuracy"] == 99.3


def test_mismatched_keys_and_shapes_are_named(tmp_path):
  state = TorchLeNet5(10).state_dict()
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


def test_wrong_class_count_is_a_shape_error(tmp_path):
  path = tmp_path / "lenet.pth"
  torch.save(TorchLeNet5(10).state_dict(), path)
  with pytest.raises(ValueError, match="fc2.weight"):
    convert.convert(path, "lenet5", 100, tmp_path / "teacher", dataset="mnist")


def test_unknown_dataset_without_mean_std(tmp_path):
  path = tmp_path / "lenet.pth"
  torch.save(TorchLeNet5(10).state_dict(), path)
  with pytest.raises(ValueError, match="known datasets"):
    convert.convert(path, "lenet5", 10, tmp_path / "teacher", dataset="emnist")

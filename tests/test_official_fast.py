"""benchmarks/official_fast.py: the CPU twin of the official Fast-Datafree code.

The stand-in torchvision transforms are checked against torchvision's behaviour (its
code path and random draws) without the official code. The ``--tiny`` run needs the
user's checkout of https://github.com/zju-vipa/Fast-Datafree (``$DFKD_FAST_DATAFREE``,
else ``../Fast-Datafree`` beside the repository) and kornia; without them it skips.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import official_fast

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


def _checkout() -> pathlib.Path:
  path = pathlib.Path(os.environ.get("DFKD_FAST_DATAFREE", REPO.parent / "Fast-Datafree"))
  if not (path / "datafree/synthesis/fast_meta.py").is_file():
    pytest.skip(f"no Fast-Datafree checkout at {path} (set DFKD_FAST_DATAFREE)")
  if importlib.util.find_spec("kornia") is None:
    pytest.skip("the official synthesiser needs kornia (pip install kornia)")
  return path.resolve()


def test_random_crop_pads_then_crops_at_torchvisions_offsets():
  x = torch.arange(1, 1 + 3 * 4 * 5, dtype=torch.float32).view(3, 4, 5)
  crop = official_fast.RandomCrop((4, 5), padding=2)
  offsets = set()
  for seed in range(60):
    torch.manual_seed(seed)
    out = crop(x)
    torch.manual_seed(seed)  # torchvision's get_params: i, then j, by torch.randint.
    i = torch.randint(0, 4 + 4 - 4 + 1, size=(1,)).item()
    j = torch.randint(0, 5 + 4 - 5 + 1, size=(1,)).item()
    assert 0 <= i <= 4 and 0 <= j <= 4
    torch.testing.assert_close(out, F.pad(x, [2, 2, 2, 2])[:, i:i + 4, j:j + 5], rtol=0, atol=0)
    offsets.add((i, j))
    # Zeros exactly where the window leaves the image; the image's pixels elsewhere.
    inside = torch.zeros(4, 5, dtype=torch.bool)
    inside[max(0, 2 - i):min(4, 6 - i), max(0, 2 - j):min(5, 7 - j)] = True
    assert (out[:, ~inside] == 0).all() and (out[:, inside] > 0).all()
  assert {i for i, _ in offsets} == {0, 1, 2, 3, 4} == {j for _, j in offsets}
  torch.manual_seed(0)
  state = torch.get_rng_state()
  torch.testing.assert_close(official_fast.RandomCrop(4)(x[:, :, :4]), x[:, :, :4])
  assert torch.equal(torch.get_rng_state(), state)  # Same size: no draw, as torchvision.


def test_pil_and_tensor_paths_agree_and_flip_draws_like_torchvision():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = np.random.default_rng(0).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  to_tensor = official_fast.ToTensor()
  expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
  torch.testing.assert_close(to_tensor(image), expected, rtol=0, atol=0)
  torch.testing.assert_close(to_tensor(pixels), expected, rtol=0, atol=0)
  assert to_tensor(image).dtype == torch.float32
  for seed in range(20):
    for t in (official_fast.RandomCrop((6, 7), padding=3), official_fast.RandomHorizontalFlip()):
      torch.manual_seed(seed)
      from_pil = to_tensor(t(image))
      torch.manual_seed(seed)
      torch.testing.assert_close(from_pil, t(expected), rtol=0, atol=0)
    torch.manual_seed(seed)
    flips = torch.rand(1) < 0.5
    torch.manual_seed(seed)
    out = official_fast.RandomHorizontalFlip()(expected)
    torch.testing.assert_close(out, expected.flip(-1) if flips else expected, rtol=0, atol=0)
  torch.testing.assert_close(official_fast.RandomHorizontalFlip(p=1.0)(expected),
                             expected.flip(-1), rtol=0, atol=0)
  torch.testing.assert_close(official_fast.RandomHorizontalFlip(p=0.0)(expected), expected)


def test_normalize_and_compose_as_torchvision():
  x = torch.rand(3, 4, 4)
  before = x.clone()
  mean, std = official_fast.CIFAR10_MEAN, official_fast.CIFAR10_STD
  out = official_fast.Normalize(mean, std)(x)
  torch.testing.assert_close(out, (x - torch.tensor(mean)[:, None, None])
                             / torch.tensor(std)[:, None, None])
  assert torch.equal(x, before)  # Not in place.
  chain = official_fast.Compose([official_fast.RandomHorizontalFlip(p=1.0),
                                 official_fast.Normalize(mean, std)])
  torch.testing.assert_close(chain(x), official_fast.Normalize(mean, std)(x.flip(-1)))


def test_the_stand_in_matches_torchvision_where_it_is_installed():
  transforms = pytest.importorskip("torchvision.transforms")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
  mean, std = official_fast.CIFAR10_MEAN, official_fast.CIFAR10_STD
  ours = official_fast.Compose([official_fast.RandomCrop(32, padding=4),
                                official_fast.RandomHorizontalFlip(),
                                official_fast.ToTensor(), official_fast.Normalize(mean, std)])
  theirs = transforms.Compose([transforms.RandomCrop(32, padding=4),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])
  for seed in range(10):
    torch.manual_seed(seed)
    a = ours(image)
    torch.manual_seed(seed)
    torch.testing.assert_close(a, theirs(image))


def test_unstood_transforms_refuse_and_the_script_values_are_kept():
  module = official_fast._TransformsStandIn("torchvision.transforms")  # pylint: disable=protected-access
  with pytest.raises(NotImplementedError, match="Resize has no stand-in"):
    module.Resize(32)
  hp = official_fast.hyper_parameters(5)
  assert (hp["lr_g"], hp["lr_z"], hp["g_steps"]) == (3e-3, 0.01, 5)
  assert (hp["adv"], hp["bn"], hp["oh"], hp["T"], hp["batch_size"]) == (1.1, 10.0, 0.4, 20.0, 256)
  with pytest.raises(ValueError, match="g_steps=3"):
    official_fast.hyper_parameters(3)
  with pytest.raises(ValueError, match="unknown hyper-parameter 'lr_s'"):
    official_fast.hyper_parameters(2, lr_s=1.0)


def test_a_folder_that_is_not_the_checkout_is_refused(tmp_path, capsys):
  assert official_fast.main([f"--checkout={tmp_path}"]) == 1
  assert "pass the official Fast-Datafree checkout" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_times_the_official_code_and_runs_it_against_the_clock(tmp_path):
  checkout = _checkout()
  out = tmp_path / "tiny.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.official_fast", f"--checkout={checkout}", "--tiny",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert json.loads(proc.stdout) == result
  assert result["benchmark"] == "official_fast" and result["threads"] == 1
  assert result["checkout"] == str(checkout)
  commit = result["checkout_commit"]
  assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
  for key in ("torch_version", "kornia_version", "host", "hyper_parameters", "timing"):
    assert result[key]
  for key in ("load_average_1_5_15min_before", "load_average_1_5_15min_after"):
    assert len(result[key]) == 3
  if importlib.util.find_spec("torchvision") is None:
    assert result["stubbed_modules"] == ["torchvision"]
    assert result["stand_in_transforms"] == sorted(official_fast.STAND_IN_TRANSFORMS)
  (record,) = result["results"]
  assert (record["teacher"], record["student"], record["g_steps"]) == ("wrn16_2", "wrn16_1", 2)
  assert record["synthesis"]["student_in_loss"] and not record["synthesis_warmup"][
      "student_in_loss"]
  # --tiny: 3 warm-up epochs; the untimed round is epoch 1.
  assert record["synthesis_warmup"]["epochs"] == [2, 2] and record["synthesis"]["epochs"] == [3, 3]
  for part, key in (("synthesis", "seconds_per_round"), ("synthesis_warmup", "seconds_per_round"),
                    ("kd_step", "seconds_per_step")):
    times = record[part][key]
    assert all(t > 0 for t in times["all"]) and min(times["all"]) <= times["median"]
  assert 0 < record["synthesis"]["official_cost_seconds"]["median"] <= record["synthesis"][
      "seconds_per_round"]["median"]
  assert record["bank_images"] == 4 * 8  # --tiny: a bank of 4 rounds of 8 images.
  points = result["accuracy_vs_time"]["points"]
  assert points[0][:2] == [0.0, 0] and len(points) >= 2
  assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))
  assert points[-1][1] > 0 and all(0 <= p[2] <= 100 for p in points)


# benchmarks/official_fast_accuracy.py: the official method on one of our teachers.

TEACHER = REPO / "assets/teachers/cifar10_wrn16_2"


def _flax_teacher_logits(images_uint8):
  from dfkd_jax.models import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  module, variables, meta = teacher_lib.load_teacher(TEACHER)
  x = (images_uint8.astype(np.float32) / 255 - np.asarray(meta.mean, np.float32)) / np.asarray(
      meta.std, np.float32)
  return np.asarray(module.apply(variables, x, train=False))


def test_our_teacher_becomes_the_wrn_state_dict_pytorch_computes_alike(tmp_path):
  from benchmarks import official_fast_accuracy  # pylint: disable=g-import-not-at-top
  from dfkd_jax.interop import torch_models  # pylint: disable=g-import-not-at-top
  state, arch, (mean, std), names = official_fast_accuracy.teacher_state(TEACHER)
  meta = json.loads((TEACHER / "teacher.json").read_text())
  assert arch == meta["arch"] == "wrn16_2" and names == meta["class_names"]
  assert [list(mean), list(std)] == [meta["normalization"][k] for k in ("mean", "std")]
  model = torch_models.build("wrn16_2", 10).eval()
  model.load_state_dict(state)  # strict: every key and shape of the official layout.
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
       - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
  with torch.no_grad():
    logits = model(x).numpy()
  np.testing.assert_allclose(logits, _flax_teacher_logits(images), atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--set=lr_s=1"], "unknown hyper-parameter 'lr_s'"),
    (["--set=lr"], "--set=lr: expected KEY=VALUE"),
    (["--protocol=paper"], "invalid choice: 'paper'"),
])
def test_accuracy_vs_time_refuses_bad_flags_before_any_work(tmp_path, capsys, args, message):
  from benchmarks import official_fast_accuracy  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    official_fast_accuracy.main([f"--checkout={tmp_path}", f"--teacher_dir={TEACHER}",
                                 f"--test_folder={tmp_path}", "--budget_seconds=1",
                                 f"--out={tmp_path / 'out.json'}", *args])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out.json").exists()


def test_accuracy_vs_time_never_overwrites_its_out(tmp_path, capsys):
  from benchmarks import official_fast_accuracy  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out.json"
  out.write_text("kept")
  with pytest.raises(SystemExit):
    official_fast_accuracy.main([f"--checkout={tmp_path}", f"--teacher_dir={TEACHER}",
                                 f"--test_folder={tmp_path}", "--budget_seconds=1",
                                 f"--out={out}"])
  assert "exists" in capsys.readouterr().err and out.read_text() == "kept"


@pytest.mark.slow
def test_the_official_method_runs_on_our_teacher_with_its_normalisation(tmp_path):
  """The official evaluator scores our teacher as our Flax teacher does (its own
  mean/std, not the official CIFAR-10 ones), then a few seconds of the method run."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  checkout = _checkout()
  names = json.loads((TEACHER / "teacher.json").read_text())["class_names"]
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (len(names) * 3, 32, 32, 3), dtype=np.uint8)
  labels = np.repeat(np.arange(len(names)), 3)
  for i, (image, label) in enumerate(zip(images, labels)):
    (tmp_path / "test" / names[label]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(tmp_path / "test" / names[label] / f"{i}.png")
  out = tmp_path / "acc.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.official_fast_accuracy", f"--checkout={checkout}",
       f"--teacher_dir={TEACHER}", f"--test_folder={tmp_path / 'test'}",
       "--budget_seconds=6", "--eval_every_seconds=3", "--set=batch_size=8",
       "--set=synthesis_batch_size=8", "--set=warmup=1", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  # The accuracy does not depend on the order the folder is read in.
  expected = 100 * np.mean(_flax_teacher_logits(images).argmax(1) == labels)
  assert result["teacher_accuracy"] == pytest.approx(expected)
  assert result["hyper_parameters"]["ngf"] == 32 and result["hyper_parameters"]["batch_size"] == 8
  points = result["points"]
  assert points[0][:2] == [0.0, 0] and points[-1][1] > 0
  assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))

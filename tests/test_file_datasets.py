"""Tests of folder:PATH and npz:FILE datasets (dfkd_jax.data.file_datasets) on real files.

The images are scikit-learn's digits written as PNGs (lossless, so the loaded arrays
must equal the written ones) and small RGB JPEGs; whole runs train a tiny teacher on a
folder and distil it for a few iterations.
"""

import json
import os
import pathlib
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from dfkd_jax.data import data_cache
from dfkd_jax.data import datasets as data
from dfkd_jax.data import file_datasets
from dfkd_jax.interop import convert
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.run import experiment
from dfkd_jax.run import train_teacher
from dfkd_jax.run import trainer
from test_trainer import TEACHER_EPOCHS, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# Class folders named so that their sorted order is not the digit order.
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The digits split as uint8 0..255 ``[N, 8, 8]`` images and digit labels."""
  source = data.load_split("digits", split)
  images = np.rint(source.images[..., 0] * (255 / source.pixel_max)).astype(np.uint8)
  return images, source.labels


def _write_folder(root: pathlib.Path, splits=("train", "test")) -> pathlib.Path:
  for split in splits:
    images, labels = _digits(split)
    for i, (image, label) in enumerate(zip(images, labels)):
      path = root / split / NAMES[label] / f"{i:04d}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(path)
  return root


@pytest.fixture(name="cache_dir", autouse=True)
def fixture_cache_dir(tmp_path, monkeypatch):
  """Each test's decoded-split cache in its own folder (never the user's)."""
  monkeypatch.setenv("DFKD_JAX_DATA_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


@pytest.fixture(name="digits_folder", scope="module")
def fixture_digits_folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp("data") / "digits")


def test_folder_classes_are_the_sorted_folder_names_and_the_id_is_absolute(
    digits_folder, monkeypatch):
  monkeypatch.chdir(digits_folder.parent)
  dataset = data.get_dataset("folder:digits")
  assert dataset.id == f"folder:{digits_folder}"
  assert dataset.spec.classes == tuple(sorted(NAMES))
  assert dataset.spec.num_classes == 10 and dataset.spec.image_shape == (8, 8, 1)
  split = data.load_split(dataset.id, "test")
  images, digits = _digits("test")
  # Files are read class by class, sorted by name: the order they were written in.
  order = np.argsort([sorted(NAMES).index(NAMES[d]) for d in digits], kind="stable")
  np.testing.assert_array_equal(split.images[..., 0], images[order])
  np.testing.assert_array_equal(
      split.labels, [sorted(NAMES).index(NAMES[d]) for d in digits[order]])
  assert split.pixel_max == 255.0


def test_rgb_jpegs_of_mixed_sizes_load_only_resized(tmp_path):
  rng = np.random.default_rng(0)
  for i, (cls, size) in enumerate([("cat", (20, 24)), ("cat", (20, 24)),
                                   ("dog", (30, 16)), ("dog", (12, 12))]):
    path = tmp_path / "pets" / "test" / cls / f"{i}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size + (3,), np.uint8)).save(path)
  dataset_id = f"folder:{tmp_path / 'pets'}"
  spec = data.get_dataset(dataset_id).spec
  assert spec.num_classes == 2 and spec.image_shape == (0, 0, 3)
  with pytest.raises(ValueError, match=r"several sizes \(.*0\.jpg is 20x24, .*2\.jpg is "
                     r"30x16\); set config.image_size=S"):
    data.load_split(dataset_id, "test")
  split = data.load_split(dataset_id, "test", image_size=16)
  assert split.images.shape == (4, 16, 16, 3) and split.images.dtype == np.uint8
  np.testing.assert_array_equal(split.labels, [0, 0, 1, 1])
  # PIL's bilinear resize of the decoded JPEG (torchvision's Resize((16, 16))).
  with Image.open(tmp_path / "pets" / "test" / "dog" / "2.jpg") as image:
    expected = np.asarray(image.convert("RGB").resize((16, 16), Image.BILINEAR))
  np.testing.assert_array_equal(split.images[2], expected)


@pytest.mark.parametrize("layout", ["NHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npz_layouts_and_dtypes_load_as_nhwc(tmp_path, layout, dtype):
  train_x, train_y = _digits("train")
  test_x, test_y = _digits("test")
  arrays = {"x_train": train_x, "y_train": train_y, "x_test": test_x, "y_test": test_y}
  for key in ("x_train", "x_test"):
    x = arrays[key] if layout == "NHW" else arrays[key][..., None]
    arrays[key] = x if dtype == "uint8" else x.astype(np.float32) / 255
  np.savez(tmp_path / "digits.npz", **arrays)
  dataset = data.get_dataset(f"npz:{tmp_path / 'digits.npz'}")
  assert dataset.spec.num_classes == 10 and dataset.spec.image_shape == (8, 8, 1)
  split = data.load_split(dataset.id, "test")
  assert split.images.shape == (len(test_y), 8, 8, 1)
  np.testing.assert_allclose(split.images[..., 0] / split.pixel_max, test_x / 255,
                             atol=1e-6)
  np.testing.assert_array_equal(split.labels, test_y)
  resized = data.load_split(dataset.id, "test", image_size=16)
  assert resized.images.shape == (len(test_y), 16, 16, 1)
  assert resized.images.dtype == (np.uint8 if dtype == "uint8" else np.float32)
  # Upsampling a constant-free image keeps its mean within rounding.
  np.testing.assert_allclose(resized.images.mean() / resized.pixel_max,
                             split.images.mean() / split.pixel_max, rtol=0.05)


def test_the_cache_notices_changed_and_added_files(digits_folder, tmp_path, cache_dir):
  root = _write_folder(tmp_path / "digits", splits=("test",))
  dataset_id = f"folder:{root}"
  first = data.load_split(dataset_id, "test")
  assert list(cache_dir.rglob("test-native.npz"))
  changed = sorted((root / "test" / "eight").iterdir())[0]
  with Image.open(changed) as image:
    inverted = 255 - np.asarray(image)
  Image.fromarray(inverted).save(changed)
  stat = changed.stat()  # A later edit (file times can be coarser than this test).
  os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  second = data.load_split(dataset_id, "test")
  np.testing.assert_array_equal(second.images[0, ..., 0], inverted)
  np.testing.assert_array_equal(second.images[1:], first.images[1:])
  Image.fromarray(inverted).save(root / "test" / "nine" / "extra.png")
  third = data.load_split(dataset_id, "test")
  assert len(third.labels) == len(first.labels) + 1


def _image(path: pathlib.Path, size=(8, 8)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full(size, 128, np.uint8)).save(path)


def _truncated(path: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (64, 64), np.uint8)).save(path)
  path.write_bytes(path.read_bytes()[:300])


def _npz(path: pathlib.Path, **arrays) -> None:
  defaults = {"x_test": np.zeros((4, 8, 8), np.uint8), "y_test": np.arange(4)}
  np.savez(path, **{**defaults, **arrays})


def _meta(num_classes=2, input_shape=(8, 8, 1), dataset="digits"):
  return teacher_lib.TeacherMeta("digits_cnn", num_classes, input_shape, (0.5,), (0.5,),
                                 dataset)


# (name, makes the bad input under tmp_path and returns what triggers it, error, match).
BAD_INPUTS = [
    ("missing folder", lambda d: lambda: data.get_dataset(f"folder:{d / 'nope'}"),
     FileNotFoundError, r"folder .*nope not found"),
    ("no test folder",
     lambda d: (_image(d / "x" / "train" / "a" / "0.png"),
                lambda: data.get_dataset(f"folder:{d / 'x'}"))[1],
     FileNotFoundError, r"no folder .*x/test; put the labelled test images"),
    ("no class folders",
     lambda d: ((d / "x" / "test").mkdir(parents=True),
                lambda: data.get_dataset(f"folder:{d / 'x'}"))[1],
     ValueError, r"x/test has no class folders"),
    ("no images",
     lambda d: ((d / "x" / "test" / "a").mkdir(parents=True),
                (d / "x" / "test" / "a" / "notes.txt").write_text("hi"),
                lambda: data.get_dataset(f"folder:{d / 'x'}"))[2],
     ValueError, r"no images in .*x/test/<class>/"),
    ("test class not in train",
     lambda d: (_image(d / "x" / "train" / "a" / "0.png"),
                _image(d / "x" / "test" / "zebra" / "0.png"),
                lambda: data.get_dataset(f"folder:{d / 'x'}"))[2],
     ValueError, r"class folder .*test/zebra is not in .*x/train \(its classes: a\); "
                 r"add train/zebra"),
    ("unreadable image",
     lambda d: ((d / "x" / "test" / "a").mkdir(parents=True),
                (d / "x" / "test" / "a" / "bad.png").write_text("not a png"),
                lambda: data.get_dataset(f"folder:{d / 'x'}"))[2],
     ValueError, r"cannot read image .*a/bad\.png .*replace or remove it"),
    ("truncated image",
     lambda d: (_truncated(d / "x" / "test" / "a" / "cut.png"),
                lambda: data.load_split(f"folder:{d / 'x'}", "test"))[1],
     ValueError, r"cannot decode image .*a/cut\.png .*truncated or corrupt"),
    ("mixed sizes",
     lambda d: (_image(d / "x" / "test" / "a" / "0.png"),
                _image(d / "x" / "test" / "b" / "1.png", (9, 8)),
                lambda: data.load_split(f"folder:{d / 'x'}", "test"))[2],
     ValueError, r"several sizes .*0\.png is 8x8, .*1\.png is 9x8.*config.image_size"),
    ("teacher needs train",
     lambda d: (_image(d / "x" / "test" / "a" / "0.png"),
                lambda: data.load_split(f"folder:{d / 'x'}", "train"))[1],
     FileNotFoundError, r"has no train split; training a teacher needs "
                        r"PATH/train/<class>/\*"),
    ("missing npz", lambda d: lambda: data.get_dataset(f"npz:{d / 'nope.npz'}"),
     FileNotFoundError, r"file .*nope\.npz not found"),
    ("not an npz",
     lambda d: ((d / "x.npz").write_text("text"),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"x\.npz is not an \.npz of arrays"),
    ("npz without x_test",
     lambda d: (np.savez(d / "x.npz", x_train=np.zeros((2, 8, 8), np.uint8)),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"holds \['x_train'\]; it needs x_test and y_test"),
    ("x/y length mismatch",
     lambda d: (_npz(d / "x.npz", y_test=np.arange(3)),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"x_test has 4 images but y_test has shape \(3,\)"),
    ("labels outside the classes",
     lambda d: (_npz(d / "x.npz", x_train=np.zeros((2, 8, 8), np.uint8),
                     y_train=np.array([0, 1]), y_test=np.array([0, 1, 1, 7])),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"y_test has label 7 outside the classes \(0\.\.1, the labels of "
                 r"y_train\)"),
    ("labels outside named classes",
     lambda d: (_npz(d / "x.npz", classes=np.array(["a", "b", "c"])),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"y_test has label 3 outside the classes \(classes\)"),
    ("integer images",
     lambda d: (_npz(d / "x.npz", x_test=np.zeros((4, 8, 8), np.int64)),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"x_test is int64 of shape \(4, 8, 8\); it must be uint8"),
    ("float images outside [0, 1]",
     lambda d: (_npz(d / "x.npz", x_test=np.full((4, 8, 8), 255.0, np.float32)),
                lambda: data.load_split(f"npz:{d / 'x.npz'}", "test"))[1],
     ValueError, r"float x_test spans \[255, 255\]; float images must lie in \[0, 1\]"),
    ("teacher classes",
     lambda d: (_npz(d / "x.npz"),
                lambda: data.check_teacher_fits(_meta(10), f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"teacher 'digits_cnn' has 10 classes but dataset .* has 4; give it "
                 r"data of all 10 classes"),
    ("teacher input size",
     lambda d: (_npz(d / "x.npz", x_test=np.zeros((4, 12, 12), np.uint8)),
                lambda: data.check_teacher_fits(_meta(4), f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"takes inputs of shape \(8, 8, 1\) but dataset .* gives \(12, 12, 1\); "
                 r"set config.image_size=8"),
    ("teacher channels",
     lambda d: (_npz(d / "x.npz", x_test=np.zeros((4, 8, 8, 3), np.uint8)),
                lambda: data.check_teacher_fits(_meta(4), f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"takes inputs of shape \(8, 8, 1\) but dataset .* gives \(8, 8, 3\); "
                 r"use a teacher trained on"),
    ("teacher of other data on a built-in dataset",
     lambda d: lambda: data.check_teacher_fits(_meta(10, dataset=f"folder:{d}"), "digits"),
     ValueError, r"teacher 'digits_cnn' was trained on 'folder:.*', not on dataset "
                 r"'digits'; use a teacher trained on 'digits'"),
    ("image_size of a built-in dataset",
     lambda d: lambda: data.load_split("digits", "test", image_size=16),
     ValueError, r"config.image_size=16 resizes folder: and npz: datasets only; "
                 r"'digits' has fixed 8x8 images"),
    ("negative image_size",
     lambda d: (_npz(d / "x.npz"),
                lambda: data.load_split(f"npz:{d / 'x.npz'}", "test", image_size=-2))[1],
     ValueError, r"config.image_size=-2 must be an integer >= 0"),
]


@pytest.mark.parametrize("make, error, match", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_naming_it_and_the_fix(tmp_path, make, error, match):
  trigger = make(tmp_path)
  with pytest.raises(error, match=match) as info:
    trigger()
  assert "\n" not in str(info.value)


def _teacher_config(dataset_id, **overrides):
  """test_trainer's digits teacher recipe (in one session its compiled step is reused)."""
  config = experiment.load_config_file(str(REPO / "configs/teacher/digits.py"))
  config.update({"dataset": dataset_id, "num_epochs": TEACHER_EPOCHS, **overrides})
  return config


@pytest.fixture(name="folder_teacher", scope="module")
def fixture_folder_teacher(digits_folder, tmp_path_factory):
  """A digits_cnn teacher trained on the digits PNG folder."""
  workdir = tmp_path_factory.mktemp("teachers") / "digits_folder"
  cache = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("DFKD_JAX_DATA_CACHE", str(cache))
    meta = train_teacher.train_and_save(_teacher_config(f"folder:{digits_folder}"),
                                        workdir, log=lambda line: None)
  return workdir, meta


def test_teacher_trains_on_a_folder_and_records_its_normalisation(
    folder_teacher, digits_folder):
  workdir, meta = folder_teacher
  assert meta.dataset == f"folder:{digits_folder}" and meta.num_classes == 10
  assert meta.input_shape == (8, 8, 1) and meta.test_accuracy >= 80.0
  train = data.load_split(meta.dataset, "train")
  assert (meta.mean, meta.std) == file_datasets.normalization(train)
  assert meta.mean[0] == pytest.approx(data.SPECS["digits"].mean[0], abs=2e-3)
  assert teacher_lib.load_meta(workdir) == meta


def test_config_normalisation_is_recorded_and_checked(digits_folder, tmp_path):
  config = _teacher_config(f"folder:{digits_folder}", mean=(0.5,), std=(0.25,))
  meta = train_teacher.train_and_save(config, tmp_path / "t", log=lambda line: None)
  assert (meta.mean, meta.std) == ((0.5,), (0.25,))
  config = _teacher_config(f"folder:{digits_folder}", mean=(0.5, 0.5, 0.5), std=())
  with pytest.raises(ValueError, match=r"config.mean=\[0.5, 0.5, 0.5\] and config.std=\[\]"
                     r" need 1 value\(s\) each"):
    train_teacher.train_and_save(config, tmp_path / "t2", log=lambda line: None)


def _distil_config(teacher_dir, dataset_id, **overrides):
  # test_trainer's tiny dfkd run: in one session its compiled iteration is reused.
  return tiny_config(teacher_dir, "dfkd", dataset=dataset_id, **overrides)


def test_distillation_evaluates_on_a_test_only_folder(folder_teacher, digits_folder,
                                                      tmp_path):
  """The teacher's data stays private: a copy of test/ alone, elsewhere, is enough."""
  teacher_dir, meta = folder_teacher
  test_only = _write_folder(tmp_path / "shared_test_set", splits=("test",))
  result = trainer.run(_distil_config(teacher_dir, f"folder:{test_only}"),
                       tmp_path / "run", log=lambda line: None)
  summary = json.loads((tmp_path / "run" / trainer.SUMMARY_FILE).read_text())
  assert summary["dataset"] == f"folder:{test_only}" == result["dataset"]
  # The same test images as the teacher's own test/: the same accuracy.
  assert summary["teacher_accuracy"] == pytest.approx(meta.test_accuracy, abs=1e-3)
  assert len(summary["test_accuracy"]) == 2 and 0 <= summary["acc_max"] <= 100
  # Resized test images do not fit the 8x8 teacher: refused before anything is built.
  with pytest.raises(ValueError, match=r"takes inputs of shape \(8, 8, 1\) but dataset "
                     r".* gives \(16, 16, 1\)"):
    trainer.run(_distil_config(teacher_dir, f"folder:{test_only}", image_size=16),
                tmp_path / "run2", log=lambda line: None)
  assert not (tmp_path / "run2" / trainer.SUMMARY_FILE).exists()
  # The run's test folder renamed a class since: export's check refuses it by name.
  moved = [(test_only / "test" / "nine", test_only / "test" / "nein")]
  try:
    for a, b in moved:
      a.rename(b)
    proc = subprocess.run(
        [sys.executable, "-m", "dfkd_jax.export", f"--workdir={tmp_path / 'run'}",
         "--format=onnx", f"--out={tmp_path / 's.onnx'}"],
        capture_output=True, text=True, timeout=300, check=False)
  finally:
    for a, b in moved:
      b.rename(a)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: teacher 'digits_cnn' was trained on classes eight, five, four, nine, one, "
      f"seven, ... (10 in all) but dataset 'folder:{test_only}' has eight, five, "
      "four, nein, one, seven, ... (10 in all): its class 'nein' is not one of the "
      "teacher's (which has 'nine'); rename its class folders")
  assert not (tmp_path / "s.onnx").exists()


def test_cli_refuses_a_bad_folder_in_one_line_before_training(tmp_path):
  _image(tmp_path / "x" / "train" / "a" / "0.png")
  _image(tmp_path / "x" / "test" / "b" / "0.png")
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train_teacher",
       f"--config={REPO / 'configs/teacher/digits.py'}",
       f"--config.dataset=folder:{tmp_path / 'x'}", f"--workdir={tmp_path / 'teacher'}"],
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: dataset 'folder:{tmp_path / 'x'}': class folder "
      f"{tmp_path / 'x' / 'test' / 'b'} is not in {tmp_path / 'x' / 'train'} (its "
      "classes: a); add train/b or remove test/b")
  assert not (tmp_path / "teacher").exists()


def test_convert_checks_a_pytorch_teacher_on_folder_images(tmp_path):
  torch = pytest.importorskip("torch")
  from dfkd_jax.interop import torch_models  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(12):
    path = tmp_path / "x" / "test" / "abc"[i % 3] / f"{i:02d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8)).save(path)
  dataset_id = f"folder:{tmp_path / 'x'}"
  images = data.load_split(dataset_id, "test").images[..., 0]  # As the folder stores them.
  torch.manual_seed(0)
  model = torch_models.LeNet5(3).eval()
  torch.save(model.state_dict(), tmp_path / "lenet.pth")
  with torch.no_grad():  # PyTorch's ToTensor(), Normalize(0.5, 0.5).
    logits = model((torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.5).numpy()
  np.savez(tmp_path / "check.npz", images=images, logits=logits)
  lines = []
  meta = convert.convert(tmp_path / "lenet.pth", "lenet5", 3, tmp_path / "teacher",
                         dataset=dataset_id, mean=(0.5,), std=(0.5,),
                         check_inputs=tmp_path / "check.npz", log=lines.append)
  assert meta.dataset == dataset_id and "top-1 agreement 100.00%" in lines[0]
  with pytest.raises(ValueError, match=r"--dataset=folder:.* has no standard "
                     r"normalisation; pass --mean and --std"):
    convert.convert(tmp_path / "lenet.pth", "lenet5", 3, tmp_path / "t2",
                    dataset=dataset_id)


# ---------------------------------------------------------------------------
# Issue 37: every image mode read right, subfolders, the cache, class names.
# ---------------------------------------------------------------------------


def _pgm16(path: pathlib.Path, pixels: np.ndarray) -> None:
  """A 16-bit binary PGM (maxval 65535), which Pillow opens as mode ``I``."""
  h, w = pixels.shape
  path.write_bytes(f"P5\n{w} {h}\n65535\n".encode() + pixels.astype(">u2").tobytes())


def _png16(path: pathlib.Path, pixels: np.ndarray, colour_type: int) -> None:
  """A 16-bit PNG written chunk by chunk (Pillow writes no 16-bit grey+alpha)."""
  h, w = pixels.shape[:2]
  rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
  chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body +
                              struct.pack(">I", zlib.crc32(kind + body)))
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
      ">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows))
                   + chunk(b"IEND", b""))


def _grey_palette(pixels: np.ndarray) -> Image.Image:
  image = Image.fromarray(pixels).convert("P")  # Pillow's "P" of an L image: greys.
  assert image.mode == "P" and len(set(image.getpalette()[:30])) > 3
  return image


# (name, writes the 8x8 grey digit `pixels` as a file of that mode at `path`).
GREY_WRITERS = [
    ("L png", lambda path, x: Image.fromarray(x).save(path.with_suffix(".png"))),
    ("I;16 png", lambda path, x: Image.fromarray(x.astype(np.uint16) * 257).save(
        path.with_suffix(".png"))),
    ("I;16 tiff", lambda path, x: Image.fromarray(x.astype(np.uint16) * 257).save(
        path.with_suffix(".tif"))),
    ("I pgm", lambda path, x: _pgm16(path.with_suffix(".pgm"), x.astype(np.uint16) * 257)),
    ("P png of greys", lambda path, x: _grey_palette(x).save(path.with_suffix(".png"))),
    ("LA png", lambda path, x: Image.fromarray(np.stack([x, 255 - x], -1), "LA").save(
        path.with_suffix(".png"))),
    ("16-bit LA png", lambda path, x: _png16(path.with_suffix(".png"), np.stack(
        [x, 255 - x], -1).astype(np.uint16) * 257, colour_type=4)),
]


@pytest.mark.parametrize("write", [w for _, w in GREY_WRITERS],
                         ids=[name for name, _ in GREY_WRITERS])
def test_every_grey_mode_reads_as_the_8_bit_pixels(tmp_path, write):
  """16-bit greys were clipped to 0/255 by convert("L"): a digits teacher at 100% on
  8-bit PNGs scored 68% on 16-bit copies."""
  images, labels = _digits("test")
  for i, (image, label) in enumerate(zip(images[:60], labels[:60])):
    path = tmp_path / "x" / "test" / NAMES[label] / f"{i:04d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, image)
  split = data.load_split(f"folder:{tmp_path / 'x'}", "test")
  assert split.images.shape == (60, 8, 8, 1)  # Grey, one channel.
  order = np.argsort([sorted(NAMES).index(NAMES[d]) for d in labels[:60]], kind="stable")
  np.testing.assert_array_equal(split.images[..., 0], images[:60][order])


def test_colour_modes_read_as_torchvision_reads_them(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (3, 8, 8, 3), np.uint8)
  folder = tmp_path / "x" / "test" / "a"
  folder.mkdir(parents=True)
  Image.fromarray(np.concatenate([rgb[0], rgb[0][..., :1]], -1), "RGBA").save(
      folder / "0.png")
  Image.fromarray(rgb[1]).convert("P", palette=Image.ADAPTIVE, colors=16).save(
      folder / "1.png")
  Image.fromarray(rgb[2]).convert("CMYK").save(folder / "2.tif")
  split = data.load_split(f"folder:{tmp_path / 'x'}", "test")
  assert split.images.shape == (3, 8, 8, 3)
  for i, name in enumerate(["0.png", "1.png", "2.tif"]):
    with Image.open(folder / name) as image:  # torchvision's pil_loader.
      np.testing.assert_array_equal(split.images[i], np.asarray(image.convert("RGB")))


def _torchvision_files(class_folder: pathlib.Path) -> list[str]:
  """torchvision.datasets.folder.make_dataset's walk of one class folder (its code)."""
  return [os.path.join(root, name)
          for root, _, names in sorted(os.walk(class_folder, followlinks=True))
          for name in sorted(names)
          if name.lower().endswith(file_datasets.IMAGE_EXTENSIONS)]


def test_subfolders_of_a_class_are_read_as_torchvision_reads_them(tmp_path):
  """They were skipped without a word: a class could be evaluated on 0 images."""
  root = tmp_path / "x" / "test"
  for rel in ["a/0.png", "a/sub/1.png", "a/sub/deeper/2.png", "a/sub-2/3.png",
              "b/nested/4.png", "elsewhere/5.png"]:
    _image(tmp_path / "x" / rel if rel.startswith("elsewhere") else root / rel)
  (root / "b" / "linked").symlink_to(tmp_path / "x" / "elsewhere")
  (root / "b" / "loop").symlink_to(root / "b")  # A link back up is read once.
  _image(root / "__MACOSX" / "a" / "._0.png")  # macOS zip metadata: no class.
  _image(root / "a" / ".hidden" / "6.png")
  lines = []
  split = data.load_split(f"folder:{tmp_path / 'x'}", "test", log=lines.append)
  spec = data.get_dataset(f"folder:{tmp_path / 'x'}").spec
  assert spec.classes == ("a", "b")
  files = file_datasets._folder_files(root, spec.classes)  # pylint: disable=protected-access
  want = _torchvision_files(root / "a") + [
      f for f in _torchvision_files(root / "b") if "/loop/" not in f]
  assert [os.fspath(f) for f, _ in files] == [f for f in want if "/." not in f]
  np.testing.assert_array_equal(split.labels, [0, 0, 0, 0, 1, 1])
  assert lines[0].startswith(f"folder:{tmp_path / 'x'} test: 6 images in 2 classes "
                             "(a 4, b 2), decoded in ")
  assert lines[1] == (f"folder:{tmp_path / 'x'}: ignored test/__MACOSX (macOS zip "
                      "metadata, never a class)")


def test_load_says_images_per_class_the_cache_and_an_empty_class(tmp_path):
  _image(tmp_path / "x" / "train" / "a" / "0.png")
  _image(tmp_path / "x" / "train" / "b" / "0.png")
  _image(tmp_path / "x" / "test" / "a" / "0.png")
  dataset_id = f"folder:{tmp_path / 'x'}"
  first, second = [], []
  data.load_split(dataset_id, "test", log=first.append)
  data.load_split(dataset_id, "test", log=second.append)
  assert first[0].startswith(f"{dataset_id} test: 1 images in 2 classes (a 1, b 0), "
                             "decoded in ")
  cache_file = next((tmp_path / "cache").rglob("test-native.npz"))
  assert second[0] == (f"{dataset_id} test: 1 images in 2 classes (a 1, b 0), read from "
                       f"the cache {cache_file} (delete it to decode again)")
  assert first[1] == second[1] == (
      f"WARNING: {dataset_id} test: 1 of the 2 classes have no images (b); results "
      "cover only the others: add their images (test/b/)")


@pytest.mark.parametrize("setting", ["default", "dir", "off", "unwritable"])
def test_the_load_line_says_where_the_decoded_split_was_cached(setting, tmp_path,
                                                               monkeypatch):
  """Issue 40, item 6.4: a folder's cache is in the user's cache folder (not under
  ~/tensorflow_datasets, nor under config.data_dir), and the log names the file."""
  _image(tmp_path / "x" / "test" / "a" / "0.png")
  dataset_id = f"folder:{tmp_path / 'x'}"
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  root = {"default": tmp_path / "xdg" / "dfkd_jax" / "data" / "files",
          "dir": tmp_path / "mine" / "files", "off": None,
          "unwritable": tmp_path / "blocked" / "files"}[setting]
  if setting == "default":
    monkeypatch.delenv(data_cache.ENV)
  else:
    monkeypatch.setenv(data_cache.ENV, {"dir": str(tmp_path / "mine"), "off": "0",
                                        "unwritable": str(tmp_path / "blocked")}[setting])
  if setting == "unwritable":
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
  assert data_cache.files_root() == root
  lines = []
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    data.load_split(dataset_id, "test", data_dir=tmp_path / "tfds", log=lines.append)
  assert not (tmp_path / "tfds").exists()
  head, _, how = lines[0].partition("), ")
  assert head == f"{dataset_id} test: 1 images in 1 classes (a 1"
  if setting in ("off", "unwritable"):
    assert how.startswith("decoded in ") and "cached" not in how
    assert bool(caught) == (setting == "unwritable")  # The failed write warns.
    return
  [cache_file] = root.rglob("test-native.npz")
  assert how.endswith(f" s, cached in {cache_file} (DFKD_JAX_DATA_CACHE=DIR caches in "
                      "DIR, =0 not at all)")
  again = []
  data.load_split(dataset_id, "test", log=again.append)
  assert again[0].endswith(f"read from the cache {cache_file} (delete it to decode "
                           "again)")


def test_the_cache_notices_a_file_replaced_with_the_same_size_and_time(tmp_path):
  """`cp -p`, `rsync -t` or unpacking again keep name, size and modification time."""
  for name, value in [("0.bmp", 10), ("1.bmp", 200)]:
    path = tmp_path / "x" / "test" / "a" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
  dataset_id = f"folder:{tmp_path / 'x'}"
  assert data.load_split(dataset_id, "test").images[0].max() == 10
  old, new = tmp_path / "x" / "test" / "a" / "0.bmp", tmp_path / "other.bmp"
  Image.fromarray(np.full((8, 8), 99, np.uint8)).save(new)
  stat = old.stat()
  assert new.stat().st_size == stat.st_size  # Uncompressed: the same size.
  os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  os.replace(new, old)
  assert old.stat().st_mtime_ns == stat.st_mtime_ns
  assert data.load_split(dataset_id, "test").images[0].max() == 99


def _named_meta(names, input_shape=(8, 8, 1)):
  return teacher_lib.TeacherMeta("digits_cnn", len(names), input_shape, (0.5,), (0.5,),
                                 "digits", class_names=names)


def _folder(d: pathlib.Path, *rels: str, **images) -> str:
  """A folder dataset of 8x8 grey PNGs at ``rels`` (``images``: other writers)."""
  for rel in rels:
    _image(d / "x" / rel)
  for rel, write in images.items():
    path = d / "x" / rel.replace("__", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
  return f"folder:{d / 'x'}"


BAD_INPUTS_37 = [
    ("float tiff",
     lambda d: lambda: data.get_dataset(_folder(d, **{"test__a__f.tif": lambda p: (
         Image.fromarray(np.ones((8, 8), np.float32)).save(p))})),
     ValueError, r"image .*a/f\.tif has PIL mode F \(32-bit float pixels, no fixed "
                 r"range\); save it as an 8- or 16-bit grayscale or RGB PNG"),
    ("32-bit integer tiff",
     lambda d: lambda: data.get_dataset(_folder(d, **{"test__a__i.tif": lambda p: (
         Image.fromarray(np.ones((8, 8), np.int32)).save(p))})),
     ValueError, r"image .*a/i\.tif has PIL mode I \(32-bit integer pixels"),
    ("one RGB image among grey ones",
     lambda d: lambda: data.check_teacher_fits(_meta(2), _folder(
         d, "test/a/0.png", "test/b/1.png", **{"test__b__c.png": lambda p: (
             Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p))})),
     ValueError, r"gives \(8, 8, 3\); 1 of the 3 images are colour \(.*b/c\.png first\), "
                 r"so all are read as RGB: convert those to grayscale"),
    ("object npz labels",
     lambda d: (np.savez(d / "x.npz", x_test=np.zeros((2, 8, 8), np.uint8),
                         y_test=np.array([0, "1"], dtype=object)),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"array y_test in .*x\.npz holds Python objects \(dtype object.*save it "
                 r"as a plain array"),
    ("object npz of ragged images",
     lambda d: (np.savez(d / "x.npz", x_test=np.array(
         [np.zeros((8, 8), np.uint8), np.zeros((9, 8), np.uint8)], dtype=object),
                         y_test=np.array([0, 1])),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"array x_test in .*x\.npz holds Python objects"),
    ("NCHW npz",
     lambda d: (_npz(d / "x.npz", x_test=np.zeros((4, 3, 8, 8), np.uint8)),
                lambda: data.get_dataset(f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"x_test has shape \(4, 3, 8, 8\), which looks NCHW .*"
                 r"x\.transpose\(0, 2, 3, 1\)"),
    ("class folders named otherwise than the teacher's classes",
     lambda d: lambda: data.check_teacher_fits(_named_meta(("cat", "dog")), _folder(
         d, "test/a/0.png", "test/b/0.png")),
     ValueError, r"trained on classes cat, dog but dataset .* has a, b: its class 'a' is "
                 r"not one of the teacher's \(which has 'cat'\); rename its class "
                 r"folders to the teacher's names, or every label would be wrong"),
    ("a stray class folder",
     lambda d: lambda: data.check_teacher_fits(_named_meta(("a", "b")), _folder(
         d, "test/a/0.png", "test/b/0.png", "test/stray/0.png")),
     ValueError, r"its class 'stray' is not one of the teacher's; remove \(or move out\) "
                 r"the class folder stray/"),
    ("a stray class folder, teacher without names",
     lambda d: lambda: data.check_teacher_fits(_meta(2), _folder(
         d, "test/a/0.png", "test/b/0.png", "test/stray/0.png")),
     ValueError, r"has 2 classes but dataset .* has 3 \(a, b, stray\)"),
    ("npz classes in another order",
     lambda d: (_npz(d / "x.npz", y_test=np.array([0, 1, 0, 1]),
                     classes=np.array(["dog", "cat"])),
                lambda: data.check_teacher_fits(_named_meta(("cat", "dog")),
                                                f"npz:{d / 'x.npz'}"))[1],
     ValueError, r"the same names in another order \(class 0 is 'cat' for the teacher, "
                 r"'dog' here\); order the npz's `classes` \(and labels\)"),
]


@pytest.mark.parametrize("make, error, match", [case[1:] for case in BAD_INPUTS_37],
                         ids=[case[0] for case in BAD_INPUTS_37])
def test_issue_37_bad_input_is_one_line_naming_it_and_the_fix(tmp_path, make, error,
                                                              match):
  trigger = make(tmp_path)
  with pytest.raises(error, match=match) as info:
    trigger()
  assert "\n" not in str(info.value)


def test_a_macosx_folder_is_no_class(tmp_path):
  dataset_id = _folder(tmp_path, "test/a/0.png", "test/b/0.png", "test/__MACOSX/a/._0.png")
  data.check_teacher_fits(_meta(2), dataset_id)  # Was: 3 classes for a 2-class teacher.
  assert data.get_dataset(dataset_id).spec.classes == ("a", "b")


def test_a_teacher_records_its_class_names_and_train_refuses_others(
    folder_teacher, tmp_path):
  """Class folders 0..9 sort otherwise than zero..nine: every label would be permuted."""
  teacher_dir, meta = folder_teacher
  assert meta.class_names == tuple(sorted(NAMES))
  recorded = json.loads((teacher_dir / teacher_lib.META_FILE).read_text())
  assert recorded["class_names"] == sorted(NAMES)
  images, labels = _digits("test")
  for i, (image, label) in enumerate(zip(images[:50], labels[:50])):
    path = tmp_path / "digits" / "test" / str(label) / f"{i:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
  config = _distil_config(teacher_dir, f"folder:{tmp_path / 'digits'}")
  from test_trainer import cli_args  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      cli_args(config, tmp_path / "run") + [f"--config.dataset={config.dataset}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: teacher 'digits_cnn' was trained on classes eight, five, four, nine, one, "
      f"seven, ... (10 in all) but dataset 'folder:{tmp_path / 'digits'}' has 0, 1, 2, 3, "
      "4, 5, ... (10 in all): its class '0' is not one of the teacher's (which has "
      "'eight'); rename its class folders to the teacher's names, or every label would "
      "be wrong")
  assert not (tmp_path / "run" / trainer.SUMMARY_FILE).exists()


def test_a_teacher_without_class_names_loads_and_warns_near_chance(
    folder_teacher, tmp_path):
  """A teacher saved before names were recorded: no refusal, but a loud warning."""
  teacher_dir, _ = folder_teacher
  old = tmp_path / "old_teacher"
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(teacher_dir, old)
  record = json.loads((old / teacher_lib.META_FILE).read_text())
  del record["class_names"]
  (old / teacher_lib.META_FILE).write_text(json.dumps(record))
  assert teacher_lib.load_meta(old).class_names == ()
  images, labels = _digits("test")
  for i, (image, label) in enumerate(zip(images, labels)):
    path = tmp_path / "digits" / "test" / str(label) / f"{i:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
  lines = []
  trainer.run(_distil_config(old, f"folder:{tmp_path / 'digits'}"), tmp_path / "run",
              log=lines.append)
  warning = [line for line in lines if line.startswith("WARNING: teacher")]
  assert len(warning) == 1 and "near chance (10.00% for 10 classes)" in warning[0]
  assert "records no class names to check that" in warning[0]
  assert any(line.startswith(f"folder:{tmp_path / 'digits'} test: 360 images in 10 "
                             "classes (0 36, 1 36, ") for line in lines)


def test_convert_records_class_names_and_refuses_others(tmp_path):
  _folder(tmp_path, "test/a/0.png", "test/b/0.png", "test/c/0.png")
  (tmp_path / "t.pth").write_bytes(b"")  # Refused before the checkpoint is read.
  args = [sys.executable, "-m", "dfkd_jax.convert", f"--torch_checkpoint={tmp_path / 't.pth'}",
          "--arch=lenet5", "--num_classes=3", f"--dataset=folder:{tmp_path / 'x'}",
          "--mean=0.5", "--std=0.5", f"--out={tmp_path / 'teacher'}"]
  proc = subprocess.run(args + ["--class_names=cat,dog,eel"], capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: teacher 'lenet5' was trained on classes cat, dog, eel but dataset "
      f"'folder:{tmp_path / 'x'}' has a, b, c: its class 'a' is not one of the "
      "teacher's (which has 'cat'); rename its class folders to the teacher's names, or "
      "every label would be wrong")
  with pytest.raises(ValueError, match=r"--class_names has 2 names but --num_classes=3"):
    convert.convert(tmp_path / "t.pth", "lenet5", 3, tmp_path / "t2",
                    dataset=f"folder:{tmp_path / 'x'}", mean=(0.5,), std=(0.5,),
                    class_names=["a", "b"])
  assert not (tmp_path / "teacher").exists() and not (tmp_path / "t2").exists()


def test_a_run_record_without_teacher_class_names_still_resumes(tmp_path):
  """Runs recorded before teachers had class names: same teacher, no refusal."""
  from dfkd_jax.core import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  meta = _meta(10)
  config = {"method": "dfkd", "seed": 0, "num_seeds": 1}
  workdir_lib.check_record(tmp_path, config, dataclasses.asdict(meta))
  path = tmp_path / workdir_lib.RECORD_FILE
  record = json.loads(path.read_text())
  del record["teacher"]["class_names"]  # As those runs wrote it.
  path.write_text(json.dumps(record))
  assert workdir_lib.check_record(tmp_path, config, dataclasses.asdict(meta)) == {}

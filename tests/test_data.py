"""Tests of dfkd_jax.data.datasets: pipelines on mocked TFDS data, digits, real MNIST, errors."""

import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dfkd_jax.data import data_cache
from dfkd_jax.data import datasets as data
from dfkd_jax.models import teacher as teacher_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mock_splits():
  """Mocked TFDS splits (20 random examples each) of every TFDS-backed dataset."""
  with tfds.testing.mock_data(num_examples=20):
    return {name: data.load_split(name, "train", data_dir="/nonexistent")
            for name in ("mnist", "fashion_mnist", "svhn_cropped", "cifar10",
                         "cifar100")}


@pytest.mark.parametrize("name,shape,classes", [
    ("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10),
    ("svhn_cropped", (32, 32, 3), 10), ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100)])
def test_tfds_split_shapes_and_dtypes(mock_splits, name, shape, classes):
  split = mock_splits[name]
  assert split.images.shape == (20,) + shape and split.images.dtype == np.uint8
  assert split.labels.shape == (20,) and split.labels.dtype == np.int32
  assert 0 <= split.labels.min() and split.labels.max() < classes
  image_shape = data.model_input_shape(name, to_32x32=True)
  batch = next(data.train_batches(split, name, batch_size=8, seed=0, epoch=0,
                                  image_shape=image_shape))
  assert batch.images.shape == (8, 32, 32, shape[2])
  assert batch.images.dtype == np.float32 and batch.labels.dtype == np.int32
  assert batch.mask.dtype == np.float32 and np.all(batch.mask == 1)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn_cropped"])
def test_normalisation_maps_mean_to_zero_and_std_to_one(name):
  spec = data.SPECS[name]
  h, w, c = spec.image_shape
  mean_image = np.broadcast_to(np.asarray(spec.mean) * 255, (1, h, w, c))
  shifted = mean_image + np.asarray(spec.std) * 255
  out = data.preprocess(np.concatenate([mean_image, shifted]), data.get_dataset(name),
                        pixel_max=255.0, image_shape=(h, w, c))
  np.testing.assert_allclose(out[0], 0.0, atol=1e-5)
  np.testing.assert_allclose(out[1], 1.0, atol=1e-5)
  custom = data.preprocess(mean_image, data.get_dataset(name), pixel_max=255.0,
                           image_shape=(h, w, c), normalization=([0.0] * c, [0.5] * c))
  np.testing.assert_allclose(custom[0], np.broadcast_to(np.asarray(spec.mean) / 0.5,
                                                       (h, w, c)), rtol=1e-5)


def test_mnist_to_32x32_resize_and_pad(mock_splits):
  images = mock_splits["mnist"].images[:4]
  resized = data.preprocess(images, data.get_dataset("mnist"), pixel_max=255.0,
                            image_shape=(32, 32, 1))
  padded = data.preprocess(images, data.get_dataset("mnist:pad"), pixel_max=255.0,
                           image_shape=(32, 32, 1))
  native = data.preprocess(images, data.get_dataset("mnist"), pixel_max=255.0,
                           image_shape=(28, 28, 1))
  assert resized.shape == padded.shape == (4, 32, 32, 1)
  black = (0.0 - 0.1307) / 0.3081
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  np.testing.assert_allclose(padded[:, border], black, rtol=1e-5)
  np.testing.assert_allclose(padded[:, 2:30, 2:30], native, rtol=1e-5)
  # Bilinear upsampling keeps a constant image constant and the range of the input.
  constant = data.preprocess(np.full((1, 28, 28, 1), 77, np.uint8),
                             data.get_dataset("mnist"), pixel_max=255.0,
                             image_shape=(32, 32, 1))
  np.testing.assert_allclose(constant, (77 / 255 - 0.1307) / 0.3081, rtol=1e-5)
  assert native.min() - 1e-5 <= resized.min() and resized.max() <= native.max() + 1e-5


def test_training_batches_are_deterministic_per_seed(mock_splits):
  split = mock_splits["cifar10"]

  def epoch(seed, epoch_index=0):
    return list(data.train_batches(split, "cifar10", batch_size=6, seed=seed,
                                   epoch=epoch_index, image_shape=(32, 32, 3)))

  first, again = epoch(0), epoch(0)
  assert len(first) == 3  # 20 // 6, the partial batch is dropped.
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
  assert not np.array_equal(first[0].images, epoch(1)[0].images)
  assert not np.array_equal(first[0].images, epoch(0, epoch_index=1)[0].images)
  # Not augmented on the host (the training step augments on device): every image is
  # the preprocessed stored one.
  stored = data.preprocess(split.images, data.get_dataset("cifar10"),
                           pixel_max=split.pixel_max, image_shape=(32, 32, 3))
  for batch in first:
    for image in batch.images:
      assert np.any(np.all(np.isclose(stored, image), axis=(1, 2, 3)))


def test_epoch_and_eval_cover_every_example_exactly_once():
  n = 23
  split = data.ArraySplit(np.zeros((n, 8, 8, 1), np.float32),
                          np.arange(n, dtype=np.int32), pixel_max=16.0)
  seen = np.concatenate([b.labels for b in data.train_batches(
      split, "digits", batch_size=5, seed=3, epoch=0, image_shape=(8, 8, 1))])
  assert len(seen) == 20 and len(set(seen)) == 20
  batches = list(data.eval_batches(split, "digits", batch_size=5,
                                   image_shape=(8, 8, 1)))
  assert [len(b.labels) for b in batches] == [5] * 5
  assert batches[-1].mask.tolist() == [1, 1, 1, 0, 0]
  covered = np.concatenate([b.labels[b.mask == 1] for b in batches])
  np.testing.assert_array_equal(covered, np.arange(n))


def test_digits_split_is_fixed_stratified_and_normalised():
  train = data.load_split("digits", "train")
  test = data.load_split("digits", "test")
  assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
  assert train.labels.dtype == np.int32
  assert np.bincount(test.labels).min() >= 35  # Stratified: ~36 per class.
  np.testing.assert_array_equal(data.load_split("digits", "test").labels, test.labels)
  batch = next(data.eval_batches(train, "digits", batch_size=1437,
                                 image_shape=(8, 8, 1)))
  assert abs(batch.images.mean()) < 0.05 and abs(batch.images.std() - 1) < 0.05


def test_unknown_dataset_and_options_raise_value_error():
  with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10"):
    data.get_dataset("imagenet")
  with pytest.raises(ValueError, match=r"':pad'"):
    data.get_dataset("cifar10:pad")
  with pytest.raises(ValueError, match=r"unknown split 'validation'"):
    data.load_split("digits", "validation")


def test_dataset_ids_are_every_source_and_its_pad_variant():
  ids = data.dataset_ids()
  assert [i for i in ids if ":" not in i] == list(data.SPECS)
  assert [i for i in ids if ":" in i] == ["mnist:pad", "fashion_mnist:pad"]
  assert [data.get_dataset(i).id for i in ids] == ids


def test_unprepared_dataset_names_archives_and_command(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    data.load_split("cifar10", "train", data_dir=tmp_path)
  message = str(info.value)
  assert "cifar-10-binary.tar.gz" in message and str(tmp_path) in message
  assert "python -m dfkd_jax.data prepare --dataset=cifar10" in message
  assert info.value.__cause__ is None and info.value.__context__ is None
  # Where the archives come from (issue 26, item 7).
  assert "cifar-10-binary.tar.gz (from https://www.cs.toronto.edu/~kriz/)" in message
  with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz.*the official "
                     r"files from https://storage.googleapis.com/cvdf-datasets/mnist/\)"):
    data.prepare("mnist", tmp_path / "no_archives", tmp_path)
  with pytest.raises(FileNotFoundError, match=r"tiny-imagenet-200"):
    data.load_split("tiny_imagenet", "test", data_dir=tmp_path)


def test_an_unprepared_dataset_is_one_message_without_tfds_warnings(tmp_path):
  """Issue 26, item 7: TFDS's warning about a folder that does not exist stays out."""
  result = subprocess.run(
      [sys.executable, "-c", "import sys\nfrom dfkd_jax.data import datasets as data\n"
       "data.load_split('mnist', 'test', data_dir=sys.argv[1])", str(tmp_path / "tfds")],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
      timeout=300, check=False)
  assert result.returncode == 1 and "FileNotFoundError: dataset 'mnist' is not " \
      "prepared" in result.stderr
  assert "Variant folder" not in result.stderr and "WARNING" not in result.stderr, (
      result.stderr)


def _meta(**overrides):
  fields = dict(arch="resnet34", num_classes=10, input_shape=(32, 32, 3),
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dataset="cifar10")
  fields.update(overrides)
  return teacher_lib.TeacherMeta(**fields)


def test_check_teacher_fits():
  data.check_teacher_fits(_meta(), "cifar10")
  data.check_teacher_fits(_meta(arch="lenet5", input_shape=(32, 32, 1), mean=(0.1,),
                                std=(0.3,), dataset="mnist"), "mnist:pad")
  with pytest.raises(ValueError, match=r"100 classes.*'cifar10' has 10"):
    data.check_teacher_fits(_meta(num_classes=100), "cifar10")
  with pytest.raises(ValueError, match=r"\(32, 32, 3\).*'mnist'"):
    data.check_teacher_fits(_meta(), "mnist")
  with pytest.raises(ValueError, match=r"unknown dataset"):
    data.check_teacher_fits(_meta(), "cifar11")


def test_tiny_imagenet_from_folder(tmp_path):
  from PIL import Image
  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n01", "n02"]
  (root / "val" / "images").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  lines = []
  for label, wnid in enumerate(wnids):
    (root / "train" / wnid / "images").mkdir(parents=True)
    for i in range(2):
      Image.fromarray(np.full((64, 64, 3), 10 * label + i, np.uint8)).save(
          root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", quality=100)
    Image.fromarray(np.full((64, 64, 3), 100 + label, np.uint8)).save(
        root / "val" / "images" / f"val_{label}.JPEG", quality=100)
    lines.append(f"val_{label}.JPEG\t{wnid}\t0\t0\t63\t63")
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  train = data.load_split("tiny_imagenet", "train", data_dir=tmp_path)
  test = data.load_split("tiny_imagenet", "test", data_dir=tmp_path)
  assert train.images.shape == (4, 64, 64, 3) and train.labels.tolist() == [0, 0, 1, 1]
  assert test.labels.tolist() == [0, 1]
  assert abs(int(test.images[1].mean()) - 101) <= 1


@pytest.fixture(name="fake_prepared")
def fixture_fake_prepared(tmp_path, monkeypatch):
  """A data_dir with a (fake) prepared MNIST, and a decoder that counts its calls."""
  monkeypatch.delenv(data_cache.ENV, raising=False)
  prepared = tmp_path / "mnist" / str(tfds.builder_cls("mnist").VERSION)
  prepared.mkdir(parents=True)
  (prepared / "dataset_info.json").write_text("{}")
  (prepared / "mnist-test.array_record-00000-of-00001").write_bytes(b"records")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 12).astype(np.int32)
  calls = []

  def decode(spec, split, data_dir):
    calls.append((spec.name, split, data_dir))
    return data.ArraySplit(images.copy(), labels.copy(), pixel_max=255.0)

  monkeypatch.setattr(data, "_decode_tfds", decode)
  return tmp_path, prepared, calls, images, labels


def test_decoded_split_is_cached_and_reused(fake_prepared):
  data_dir, prepared, calls, images, labels = fake_prepared
  first = data.load_split("mnist", "test", data_dir=data_dir)
  path = data_dir / data_cache.DIR_NAME / "mnist" / prepared.name / "test.npz"
  assert len(calls) == 1 and path.is_file()
  again = data.load_split("mnist:pad", "test", data_dir=data_dir)  # Same stored pixels.
  assert len(calls) == 1
  for split in (first, again):
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.pixel_max == 255.0
  data.load_split("mnist", "train", data_dir=data_dir)
  assert len(calls) == 2  # Another split, another entry.
  assert sorted(p.name for p in path.parent.iterdir()) == ["test.npz", "train.npz"]


def test_preprocessing_is_applied_after_the_cache(fake_prepared):
  """The cache holds stored pixels: a changed preprocessing is never served stale."""
  data_dir, _, calls, images, _ = fake_prepared
  data.load_split("mnist", "test", data_dir=data_dir)
  cached = data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 1
  outputs = {}
  for dataset_id, shape, norm in [("mnist", (32, 32, 1), None),
                                  ("mnist:pad", (32, 32, 1), None),
                                  ("mnist", (28, 28, 1), None),
                                  ("mnist", (28, 28, 1), ((0.5,), (0.25,)))]:
    batch = next(data.eval_batches(cached, dataset_id, batch_size=12, image_shape=shape,
                                   normalization=norm))
    expected = data.preprocess(images, data.get_dataset(dataset_id), pixel_max=255.0,
                               image_shape=shape, normalization=norm)
    np.testing.assert_array_equal(batch.images, expected)
    outputs[(dataset_id, shape, norm)] = batch.images
  resized, padded, native, renormalised = outputs.values()
  assert not np.allclose(resized, padded) and not np.allclose(native, renormalised)


def test_cache_is_invalidated_when_the_prepared_files_change(fake_prepared,
                                                             monkeypatch):
  data_dir, prepared, calls, _, _ = fake_prepared
  data.load_split("mnist", "test", data_dir=data_dir)
  (prepared / "mnist-test.array_record-00000-of-00001").write_bytes(b"re-prepared!")
  data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 2
  data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 2
  monkeypatch.setattr(data_cache, "FORMAT_VERSION", data_cache.FORMAT_VERSION + 1)
  data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 3


@pytest.mark.parametrize("damage", ["junk", "truncated", "foreign_npz"])
def test_corrupt_cache_is_ignored_and_rewritten(fake_prepared, damage):
  data_dir, prepared, calls, images, _ = fake_prepared
  data.load_split("mnist", "test", data_dir=data_dir)
  path = data_dir / data_cache.DIR_NAME / "mnist" / prepared.name / "test.npz"
  if damage == "junk":
    path.write_bytes(b"not a cache")
  elif damage == "truncated":
    path.write_bytes(path.read_bytes()[:1000])
  else:
    np.savez(path, images=np.zeros((3, 28, 28, 1), np.uint8))
  split = data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 2
  np.testing.assert_array_equal(split.images, images)
  data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 2  # Rewritten: read from the cache again.
  assert [p.name for p in path.parent.iterdir()] == ["test.npz"]  # No temporaries.


def test_cache_can_be_turned_off_or_moved(fake_prepared, monkeypatch, tmp_path_factory):
  data_dir, _, calls, _, _ = fake_prepared
  data.load_split("mnist", "test", data_dir=data_dir, cache=False)
  monkeypatch.setenv(data_cache.ENV, "0")
  data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 2 and not (data_dir / data_cache.DIR_NAME).exists()
  elsewhere = tmp_path_factory.mktemp("cache")
  monkeypatch.setenv(data_cache.ENV, str(elsewhere))
  data.load_split("mnist", "test", data_dir=data_dir)
  data.load_split("mnist", "test", data_dir=data_dir)
  assert len(calls) == 3 and not (data_dir / data_cache.DIR_NAME).exists()
  assert len(list(elsewhere.glob(f"{data_dir.name}-*/mnist/*/test.npz"))) == 1
  blocked = elsewhere / "a_file"
  blocked.write_text("")
  monkeypatch.setenv(data_cache.ENV, str(blocked))  # Unwritable: warn, still load.
  with pytest.warns(UserWarning, match="could not cache"):
    split = data.load_split("mnist", "test", data_dir=data_dir)
  assert len(split.labels) == 12


def _fake_mnist_archives(folder: pathlib.Path) -> pathlib.Path:
  folder.mkdir()
  for name in data.archive_names(data.SPECS["mnist"]):
    with gzip.open(folder / name, "wb") as f:
      f.write(b"not MNIST")
  return folder


def test_prepare_refuses_wrong_archives_and_leaves_nothing(tmp_path):
  archives = _fake_mnist_archives(tmp_path / "fake")
  data_dir = tmp_path / "tfds"
  result = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.data", "prepare", "--dataset=mnist",
       f"--archives={archives}", f"--data_dir={data_dir}"],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
      timeout=600, check=False)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"error: archive {archives}/t10k-images-idx3-ubyte.gz")
  assert "these are not the official files" in lines[0]
  assert not data_dir.exists()


def test_prepare_cleans_up_what_it_made_when_tfds_fails(tmp_path, monkeypatch):
  archives = _fake_mnist_archives(tmp_path / "fake")
  data_dir = tmp_path / "tfds"
  kept = data_dir / "downloads" / "manual" / "cifar10" / "cifar-10-binary.tar.gz"
  kept.parent.mkdir(parents=True)
  kept.write_bytes(b"someone else's")
  monkeypatch.setattr(data, "_check_archive", lambda *args: None)  # TFDS checks alone.
  with pytest.raises(ValueError, match=r"TFDS rejects the archives of 'mnist'.*wrong "
                     "checksum.*these are not the official files"):
    data.prepare("mnist", archives, data_dir)
  remaining = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*"))
  assert remaining == ["downloads", "downloads/manual", "downloads/manual/cifar10",
                       "downloads/manual/cifar10/cifar-10-binary.tar.gz"]
  assert sorted(p.name for p in archives.iterdir()) == data.archive_names(
      data.SPECS["mnist"])


def _read_idx(path: pathlib.Path, offset: int) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    return np.frombuffer(f.read(), np.uint8, offset=offset)


def test_prepare_real_mnist_offline_and_read_without_tensorflow(mnist_archives,
                                                                 tmp_path):
  """The offline prepare CLI on the official archives, then data_source reads."""
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.data", "prepare", "--dataset=mnist",
       f"--archives={mnist_archives}", f"--data_dir={tmp_path}"],
      capture_output=True, text=True, env=env, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "downloads" / "manual" / "mnist" /
          "train-labels-idx1-ubyte.gz").is_file()

  idx_labels = {"train": _read_idx(mnist_archives / "train-labels-idx1-ubyte.gz", 8),
                "test": _read_idx(mnist_archives / "t10k-labels-idx1-ubyte.gz", 8)}
  assert idx_labels["train"][:5].tolist() == [5, 0, 4, 1, 9]
  idx_train_images = _read_idx(mnist_archives / "train-images-idx3-ubyte.gz",
                               16).reshape(-1, 784)
  # Reading the prepared files must not import TensorFlow (checked in a fresh process).
  probe = ("import sys, tensorflow_datasets as tfds\n"
           f"for split in ('train', 'test'):\n"
           f"  ds = tfds.data_source('mnist', split=split, data_dir={str(tmp_path)!r},"
           " download=False)\n  print(len(ds))\n"
           "print('tensorflow' in sys.modules)\n")
  probe_out = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                             text=True, env=env, timeout=300, check=True)
  assert probe_out.stdout.split() == ["60000", "10000", "False"], probe_out.stderr

  source = tfds.data_source("mnist", split="train", data_dir=str(tmp_path),
                            download=False)
  for i in range(5):  # TFDS shuffles: find each example among the IDX images.
    example = source[i]
    rows = np.flatnonzero((idx_train_images ==
                           example["image"].reshape(1, 784)).all(axis=1))
    assert len(rows) >= 1 and example["label"] in idx_labels["train"][rows]
  test = data.load_split("mnist", "test", data_dir=tmp_path)
  assert test.images.shape == (10000, 28, 28, 1)
  cached = data.load_split("mnist", "test", data_dir=tmp_path)  # From the cache.
  assert (tmp_path / data_cache.DIR_NAME / "mnist").is_dir()
  np.testing.assert_array_equal(cached.images, test.images)
  np.testing.assert_array_equal(cached.labels, test.labels)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10),
                                np.bincount(idx_labels["test"], minlength=10))

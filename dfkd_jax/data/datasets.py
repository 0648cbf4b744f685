"""Real datasets for teacher training and evaluation, as NumPy batches.

Sources:

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images), a fixed seeded stratified
  80/20 train/test split; needs no download and is the default everywhere.
* ``mnist``, ``fashion_mnist``, ``svhn_cropped``, ``cifar10``, ``cifar100``: TensorFlow
  Datasets, read with ``tfds.data_source`` from ``array_record`` files. Reading needs no
  TensorFlow (but Pillow, to decode the PNGs); *preparing* them does, once, offline::

    python -m dfkd_jax.data prepare --dataset=mnist --archives=DIR --data_dir=DATA_DIR

  copies the original archives from ``DIR`` into ``DATA_DIR/downloads/manual/<dataset>/``
  (one folder per dataset: MNIST and Fashion-MNIST archives share file names), where the
  TFDS download manager picks them up instead of downloading them. TFDS still checks them
  against its registered sizes and SHA-256 sums, so only the official archives work.
* ``tiny_imagenet``: TFDS has no builder for Tiny-ImageNet (checked in
  ``tensorflow_datasets`` 4.9.10: ``tfds.list_builders()`` has none, and
  ``tfds.builder_cls("tiny_imagenet")`` raises ``DatasetNotFoundError``), so it is read
  from the extracted official archive, ``DATA_DIR/tiny-imagenet-200/`` (``wnids.txt``,
  ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``); its
  ``val`` split is the test split, as in the DFKD literature.

* ``folder:PATH`` and ``npz:FILE``: your own images, in the ImageFolder layout or as
  arrays (:mod:`dfkd_jax.data.file_datasets`; ``config.image_size`` resizes them).

A dataset id is a source name, optionally with ``:pad`` for the 28x28 sources
(``mnist:pad``): LeNet-5 takes 32x32 inputs, and the 28x28 images are brought to 32x32
by bilinear resizing (as DAFL's ``teacher-train.py`` does, ``Resize((32, 32))``) or, with
``:pad``, by zero-padding 2 pixels on each side (the original LeNet-5 recipe). The teacher
checkpoint records the dataset id, so evaluation sees what training saw.

Images are scaled to [0, 1] and normalised with per-channel mean/std (the constants the
peers use). Batches are NumPy: NHWC float32 images, int32 labels, float32 mask. Training
augmentation runs on device, in the jitted step (:mod:`dfkd_jax.data.augment`); a
dataset's spec says which it takes by default (random crop with 4 pixels of zero padding
and horizontal flip for CIFAR, crop only for SVHN and Tiny-ImageNet, none for the
others and for ``folder:``/``npz:`` data).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from dfkd_jax.data import data_cache
from dfkd_jax.data import file_datasets
from dfkd_jax.data.dataset_spec import ArraySplit, DatasetSpec, cached_split

DEFAULT_DATA_DIR = os.environ.get("TFDS_DATA_DIR",
                                  os.path.expanduser("~/tensorflow_datasets"))


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec("digits", 10, (8, 8, 1), (0.3053,), (0.3760,), pixel_max=16.0),
        DatasetSpec("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,), tfds_name="mnist"),
        DatasetSpec("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,),
                    tfds_name="fashion_mnist"),
        DatasetSpec("svhn_cropped", 10, (32, 32, 3), (0.4377, 0.4438, 0.4728),
                    (0.1980, 0.2010, 0.1970), crop=True, tfds_name="svhn_cropped"),
        DatasetSpec("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                    (0.2023, 0.1994, 0.2010), crop=True, flip=True, tfds_name="cifar10"),
        DatasetSpec("cifar100", 100, (32, 32, 3), (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), crop=True, flip=True,
                    tfds_name="cifar100"),
        DatasetSpec("tiny_imagenet", 200, (64, 64, 3), (0.4802, 0.4481, 0.3975),
                    (0.2302, 0.2265, 0.2262), crop=True, flip=True),
    )
}

_TINY_IMAGENET_DIR = "tiny-imagenet-200"


class Dataset(NamedTuple):
  """A parsed dataset id: the source and how 28x28 images reach 32x32."""

  spec: DatasetSpec
  upscale: str  # "bilinear" or "pad".

  @property
  def id(self) -> str:
    return self.spec.name + (":pad" if self.upscale == "pad" else "")


class Batch(NamedTuple):
  """One batch: ``images [B, H, W, C]`` float32, ``labels [B]`` int32, ``mask [B]``."""

  images: np.ndarray
  labels: np.ndarray
  mask: np.ndarray  # float32; 0 marks padding examples of the last evaluation batch.


def get_dataset(dataset_id: str) -> Dataset:
  """Parses a dataset id such as ``cifar10`` or ``mnist:pad``.

  ``folder:PATH`` and ``npz:FILE`` are read from disk (:mod:`dfkd_jax.data.file_datasets`).

  Raises:
    ValueError: unknown source or option, naming the valid ones.
    FileNotFoundError: the folder or file of a file dataset is missing.
  """
  name, _, option = dataset_id.partition(":")
  if name in file_datasets.PREFIXES:
    return Dataset(file_datasets.parse(dataset_id), "bilinear")
  if name not in SPECS:
    raise ValueError(f"unknown dataset {dataset_id!r}; valid datasets: "
                     f"{', '.join(SPECS)} (28x28 ones also as '<name>:pad'), "
                     "folder:PATH, npz:FILE")
  if option not in ("", "pad") or (option and SPECS[name].image_shape[0] != 28):
    raise ValueError(f"unknown option {option!r} in dataset {dataset_id!r}; only the "
                     "28x28 datasets (mnist, fashion_mnist) take ':pad'")
  return Dataset(SPECS[name], "pad" if option else "bilinear")


def dataset_ids() -> list[str]:
  """Every valid dataset id: each source, and ``<name>:pad`` for the 28x28 ones."""
  return [dataset_id for name, spec in SPECS.items()
          for dataset_id in ([name, f"{name}:pad"] if spec.image_shape[0] == 28
                             else [name])]


# ---------------------------------------------------------------------------
# Loading splits.
# ---------------------------------------------------------------------------


def load_split(dataset_id: str, split: str, *,
               data_dir: str | os.PathLike | None = None,
               cache: bool = True, image_size: int = 0,
               log: Callable[[str], None] | None = None) -> ArraySplit:
  """Loads a whole split (``train`` or ``test``) into memory, as stored.

  The decoded arrays of a split are cached on disk (:mod:`dfkd_jax.data.data_cache`: a
  TFDS or Tiny-ImageNet split in ``<data_dir>/dfkd_jax_cache/``, a ``folder:``/``npz:``
  one in ``~/.cache/dfkd_jax/data/files/``; ``DFKD_JAX_DATA_CACHE=DIR`` moves both, ``=0``
  turns the cache off), so only the first load decodes the images.

  Args:
    dataset_id: see :func:`get_dataset`.
    split: ``"train"`` or ``"test"``.
    data_dir: the TFDS data directory (or the folder holding ``tiny-imagenet-200``);
      defaults to ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. Unused for digits.
    cache: read and write the decoded-split cache.
    image_size: ``S`` resizes a file dataset's images to ``S x S``; 0 = native.
    log: receives a file dataset's images per class, decoded or from the cache, and
      its warnings (a class without images).

  Returns:
    The split's images (native size, uint8, digits' 0..16 or float [0, 1]) and labels.

  Raises:
    ValueError: unknown dataset or split.
    FileNotFoundError: the dataset is not prepared; the message says how to prepare it.
  """
  spec = get_dataset(dataset_id).spec
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; valid splits: train, test")
  spec.stored_shape(image_size)  # Checks image_size.
  data_dir = pathlib.Path(data_dir or DEFAULT_DATA_DIR).expanduser()
  cache_root = data_cache.cache_root(data_dir) if cache else None
  if isinstance(spec, file_datasets.FileSpec):  # No data_dir: the user's cache folder.
    return spec.load(split, data_cache.files_root() if cache else None, image_size, log)
  if spec.name == "digits":
    return _load_digits(split)
  if spec.name == "tiny_imagenet":
    return _load_tiny_imagenet(data_dir, split, cache_root)
  return _load_tfds(spec, split, data_dir, cache_root)


def _load_digits(split: str, test_fraction: float = 0.2, seed: int = 0) -> ArraySplit:
  """scikit-learn's 8x8 digits with a fixed stratified split."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  images = digits.images.astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=test_fraction, random_state=seed,
      stratify=labels)
  idx = np.sort(train_idx if split == "train" else test_idx)
  return ArraySplit(images[idx], labels[idx], pixel_max=SPECS["digits"].pixel_max)


def _prepare_command(spec: DatasetSpec, data_dir: pathlib.Path) -> str:
  return (f"python -m dfkd_jax.data prepare --dataset={spec.name} --archives=DIR "
          f"--data_dir={data_dir}")


def _official_archives(spec: DatasetSpec) -> dict[str, tuple[str, int | None, str]]:
  """File name -> ``(url, size, sha256)`` TFDS registers for ``spec``'s archives."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  url_infos = tfds.builder_cls(spec.tfds_name).url_infos or {}
  return {info.filename or url.rsplit("/", 1)[-1]:
          (url, None if info.size is None else int(info.size), info.checksum)
          for url, info in url_infos.items()}


def archive_source(spec: DatasetSpec) -> str:
  """Where the official archives of ``spec`` come from (TFDS's registered URLs)."""
  urls = sorted(url for url, _, _ in _official_archives(spec).values())
  folders = {url.rsplit("/", 1)[0] + "/" for url in urls}
  return f"from {folders.pop()}" if len(folders) == 1 else f"from {', '.join(urls)}"


def archive_names(spec: DatasetSpec) -> list[str]:
  """The original archive file names TFDS's builder for ``spec`` needs."""
  return sorted(_official_archives(spec))


def _load_tfds(spec: DatasetSpec, split: str, data_dir: pathlib.Path,
               cache_root: pathlib.Path | None) -> ArraySplit:
  """A prepared TFDS split, from the cache when it holds the prepared files' arrays."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  version = str(tfds.builder_cls(spec.tfds_name).VERSION)
  prepared = data_dir / spec.tfds_name / version
  if cache_root is None or not (prepared / "dataset_info.json").is_file():
    return _decode_tfds(spec, split, data_dir)  # Unprepared: it says how to prepare.
  key = {"source": spec.tfds_name, "tfds_version": version, "split": split,
         "files": data_cache.fingerprint(prepared, (p for p in prepared.iterdir()
                                                    if p.is_file()))}
  return cached_split(cache_root / spec.tfds_name / version / f"{split}.npz", key,
                       lambda: _decode_tfds(spec, split, data_dir))


def _decode_tfds(spec: DatasetSpec, split: str, data_dir: pathlib.Path) -> ArraySplit:
  """Reads a prepared TFDS split with ``tfds.data_source`` (no TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  # TFDS warns of a version folder without dataset_info.json while it looks for the
  # dataset; the error below says what is missing and how to prepare it.
  absl_logger.setLevel(max(level, logging.ERROR))
  try:
    source = tfds.data_source(spec.tfds_name, split=split, data_dir=os.fspath(data_dir),
                              download=False)
  except Exception as e:  # pylint: disable=broad-except
    source, failure = None, e  # Diagnosed below, outside the TFDS traceback.
  finally:
    absl_logger.setLevel(level)
  if source is None:
    version = tfds.builder_cls(spec.tfds_name).VERSION
    if (data_dir / spec.tfds_name / str(version) / "dataset_info.json").is_file():
      raise failure  # Prepared, but unreadable (e.g. as tfrecord): TFDS says why.
    raise FileNotFoundError(
        f"dataset {spec.name!r} is not prepared under {data_dir} (looked for "
        f"{data_dir / spec.tfds_name / str(version)} in array_record format). Put the "
        f"original archives {', '.join(archive_names(spec))} ({archive_source(spec)}) "
        f"in a folder DIR (e.g. "
        f"{manual_dir(data_dir, spec.name)}) and run (needs TensorFlow: pip install "
        f"'dfkd_jax[prepare]'):\n  {_prepare_command(spec, data_dir)}")
  images = np.empty((len(source),) + spec.image_shape, np.uint8)
  labels = np.empty((len(source),), np.int32)
  for i in range(len(source)):  # Decoding dominates; batched reads gain little.
    example = source[i]
    images[i] = np.asarray(example["image"], np.uint8).reshape(spec.image_shape)
    labels[i] = example["label"]
  return ArraySplit(images, labels, pixel_max=255.0)


def _load_tiny_imagenet(data_dir: pathlib.Path, split: str,
                        cache_root: pathlib.Path | None) -> ArraySplit:
  """Reads the extracted official Tiny-ImageNet archive (``val`` is the test split)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = data_dir / _TINY_IMAGENET_DIR
  if not (root / "wnids.txt").is_file():
    raise FileNotFoundError(
        f"Tiny-ImageNet not found: expected {root}/wnids.txt. TFDS has no Tiny-ImageNet "
        f"builder; extract the official tiny-imagenet-200.zip into {data_dir}")
  wnids = (root / "wnids.txt").read_text().split()
  class_of = {wnid: i for i, wnid in enumerate(wnids)}
  if split == "train":
    files = [(path, class_of[wnid]) for wnid in wnids
             for path in sorted((root / "train" / wnid / "images").glob("*.JPEG"))]
  else:
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    files = [(root / "val" / "images" / fields[0], class_of[fields[1]])
             for fields in (line.split("\t") for line in sorted(lines) if line)]

  def decode() -> ArraySplit:
    images = np.stack([np.asarray(Image.open(path).convert("RGB"), np.uint8)
                       for path, _ in files])
    labels = np.asarray([label for _, label in files], np.int32)
    return ArraySplit(images, labels, pixel_max=255.0)

  if cache_root is None:
    return decode()
  listing = [root / "wnids.txt"] + [path for path, _ in files]
  if split == "test":
    listing.append(root / "val" / "val_annotations.txt")
  key = {"source": _TINY_IMAGENET_DIR, "split": split,
         "files": data_cache.fingerprint(root, listing)}
  return cached_split(cache_root / _TINY_IMAGENET_DIR / f"{split}.npz", key, decode)


# ---------------------------------------------------------------------------
# Preprocessing and batching (NumPy).
# ---------------------------------------------------------------------------


def model_input_shape(dataset_id: str, to_32x32: bool) -> tuple[int, int, int]:
  """The ``(H, W, C)`` the model sees: native, or 32x32 for a 28x28 source."""
  h, w, c = get_dataset(dataset_id).spec.image_shape
  if to_32x32 and (h, w) == (28, 28):
    return (32, 32, c)
  return (h, w, c)


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``[out, in]`` weights of PIL's bilinear upsampling (torchvision ``Resize``)."""
  scale = size_in / size_out
  centers = (np.arange(size_out) + 0.5) * scale
  weights = np.maximum(0.0, 1.0 - np.abs(np.arange(size_in)[None, :] + 0.5
                                         - centers[:, None]))
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


Normalization = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel.


def preprocess(images: np.ndarray, dataset: Dataset, *, pixel_max: float,
               image_shape: Sequence[int],
               normalization: Normalization | None = None) -> np.ndarray:
  """Scales, resizes/pads and normalises a batch (augmentation: :mod:`.augment`).

  Args:
    images: ``[B, H, W, C]`` stored images.
    dataset: the parsed dataset id.
    pixel_max: the stored value of white.
    image_shape: the model's ``(H, W, C)``: native, or 32x32 for a 28x28 source.
    normalization: ``(mean, std)`` to use instead of the dataset's, e.g. the ones a
      converted teacher records (``TeacherMeta.mean``/``std``).

  Returns:
    ``[B, *image_shape]`` float32 normalised images.
  """
  x = images.astype(np.float32) / np.float32(pixel_max)
  h, w = x.shape[1:3]
  out_h, out_w = int(image_shape[0]), int(image_shape[1])
  if (out_h, out_w) != (h, w):
    if (h, w) != (28, 28) or (out_h, out_w) != (32, 32):
      raise ValueError(f"dataset {dataset.id!r} has {h}x{w} images; a model input of "
                       f"{out_h}x{out_w} is not supported (only 28x28 -> 32x32)")
    if dataset.upscale == "pad":
      x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    else:
      m = _bilinear_matrix(28, 32)  # Two matmuls: 8x faster than one 3-operand einsum.
      x = np.matmul(np.matmul(m, x.transpose(0, 3, 1, 2)), m.T).transpose(0, 2, 3, 1)
  mean, std = normalization or (dataset.spec.mean, dataset.spec.std)
  if not len(mean):
    raise ValueError(f"dataset {dataset.id!r} has no standard normalisation; pass the "
                     "teacher's (mean, std)")
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return ((x - mean) / std).astype(np.float32)


def train_batches(split: ArraySplit, dataset_id: str, *, batch_size: int, seed: int,
                  epoch: int, image_shape: Sequence[int],
                  normalization: Normalization | None = None) -> Iterator[Batch]:
  """One shuffled training epoch; drops the last partial batch.

  Deterministic in ``(seed, epoch)``: the same arguments give the same batches.

  Args:
    split: the loaded training split.
    dataset_id: see :func:`get_dataset`.
    batch_size: examples per batch.
    seed: run seed.
    epoch: epoch index (mixed into the seed).
    image_shape: the model's ``(H, W, C)``.
    normalization: ``(mean, std)`` overriding the dataset's (see :func:`preprocess`).

  Yields:
    :class:`Batch` es with an all-ones mask.
  """
  dataset = get_dataset(dataset_id)
  n = len(split.labels)
  if not 0 < batch_size <= n:
    raise ValueError(f"batch_size={batch_size} must be in [1, {n}] (the split size)")
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n)
  for start in range(0, n - batch_size + 1, batch_size):
    idx = np.sort(order[start:start + batch_size])  # Sorted gathers are faster.
    idx = idx[rng.permutation(batch_size)]
    images = preprocess(split.images[idx], dataset, pixel_max=split.pixel_max,
                        image_shape=image_shape, normalization=normalization)
    yield Batch(images, split.labels[idx], np.ones(batch_size, np.float32))


def eval_batches(split: ArraySplit, dataset_id: str, *, batch_size: int,
                 image_shape: Sequence[int],
                 normalization: Normalization | None = None) -> Iterator[Batch]:
  """Covers the split exactly once, in order; the last batch is padded and masked.

  Every batch has ``batch_size`` rows (one compiled shape); padding rows repeat the
  first example with ``mask == 0``, so ``sum(mask * correct) / sum(mask)`` is exact.
  To evaluate a teacher, pass its ``image_shape=meta.input_shape`` and
  ``normalization=(meta.mean, meta.std)``.
  """
  for start in range(0, len(split.labels), batch_size):
    yield eval_rows(split, dataset_id, np.arange(start, start + batch_size),
                    image_shape=image_shape, normalization=normalization)


def eval_rows(split: ArraySplit, dataset_id: str, indices: np.ndarray, *,
              image_shape: Sequence[int],
              normalization: Normalization | None = None) -> Batch:
  """Examples ``indices`` of the split, preprocessed; indices past its end are padding.

  Padding rows repeat the first example with ``mask == 0``. :func:`eval_batches` is
  ``eval_rows`` of consecutive ranges; a process of a multi-process run makes only the
  rows of its own devices (:func:`dfkd_jax.parallel.mesh.global_batch`).
  """
  dataset = get_dataset(dataset_id)
  n = len(split.labels)
  mask = (indices < n).astype(np.float32)
  idx = np.where(indices < n, indices, 0)
  images = preprocess(split.images[idx], dataset, pixel_max=split.pixel_max,
                      image_shape=image_shape, normalization=normalization)
  return Batch(images, split.labels[idx], mask)


def check_teacher_fits(meta, dataset_id: str, image_size: int = 0) -> None:
  """Checks that a teacher (``TeacherMeta``) can be evaluated on ``dataset_id``.

  A built-in dataset must be the teacher's own source; a ``folder:``/``npz:`` dataset
  may be any data with the teacher's classes and input shape (at ``image_size``).

  Raises:
    ValueError: unknown dataset, or a source, classes or input shape that do not fit,
      naming both values and the fix.
  """
  dataset = get_dataset(dataset_id)
  spec = dataset.spec
  own_data = (f"use a teacher trained on {dataset.id!r} (this one records dataset "
              f"{meta.dataset!r})")
  files = spec.name not in SPECS  # folder: or npz:.
  check_class_names(meta, dataset.id)
  if int(meta.num_classes) != spec.num_classes:
    fix = (f"give it data of all {meta.num_classes} classes (empty class folders count; "
           "an npz can name them in a `classes` array)" if files else own_data)
    named = (f" ({_names(spec.classes)})" if getattr(spec, "named", False) else "")
    raise ValueError(
        f"teacher {meta.arch!r} has {meta.num_classes} classes but dataset "
        f"{dataset.id!r} has {spec.num_classes}{named}; {fix}")
  shape = tuple(int(d) for d in meta.input_shape)
  stored = spec.stored_shape(image_size)
  valid = {stored} | ({(32, 32, stored[2])} if stored[:2] == (28, 28) else set())
  if shape not in valid:
    fix = own_data
    if files and shape[2] == stored[2]:
      fix = f"set config.image_size={shape[0]} to resize the images (bilinear)"
    elif files and shape[2] == 1 and getattr(spec, "colour", ""):
      fix = (f"{spec.colour}: convert those to grayscale (PIL's .convert('L')) or "
             "remove them")
    raise ValueError(
        f"teacher {meta.arch!r} takes inputs of shape {shape} but dataset "
        f"{dataset.id!r} gives {' or '.join(map(str, sorted(valid)))}; {fix}")
  if not files and meta.dataset.partition(":")[0] != spec.name:
    raise ValueError(f"teacher {meta.arch!r} was trained on {meta.dataset!r}, not on "
                     f"dataset {dataset.id!r}; {own_data}")


def _names(names: Sequence[str], most: int = 6) -> str:
  """``a, b, c, ... (N)``: the first ``most`` names."""
  shown = ", ".join(names[:most])
  return shown if len(names) <= most else f"{shown}, ... ({len(names)} in all)"


def check_class_names(meta, dataset_id: str) -> None:
  """Checks the class names a teacher (``TeacherMeta``) records against the dataset's.

  Silent when either side has none (a teacher saved before names were recorded, a
  built-in dataset, an npz without ``classes``).

  Raises:
    ValueError: the names differ (one line: the first difference and the fix).
  """
  dataset = get_dataset(dataset_id)
  ours, theirs = tuple(getattr(dataset.spec, "class_names", ())), tuple(
      getattr(meta, "class_names", ()))
  if not ours or not theirs or ours == theirs:
    return
  extra = [c for c in ours if c not in theirs]
  missing = [c for c in theirs if c not in ours]
  folder = dataset.spec.name.startswith("folder:")
  if extra and missing:
    diff = f"its class {extra[0]!r} is not one of the teacher's (which has {missing[0]!r})"
    fix = ("rename its class folders to the teacher's names" if folder
           else "set the npz's `classes` to the teacher's names, in the teacher's order")
  elif extra:
    diff = f"its class {extra[0]!r} is not one of the teacher's"
    fix = (f"remove (or move out) the class folder {extra[0]}/" if folder
           else "give the npz the teacher's classes only")
  elif missing:
    diff = f"it lacks the teacher's class {missing[0]!r}"
    fix = (f"add a class folder {missing[0]}/ (empty is fine)" if folder
           else "add it to the npz's `classes`")
  else:
    i = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    diff = (f"the same names in another order (class {i} is {theirs[i]!r} for the "
            f"teacher, {ours[i]!r} here)")
    fix = ("give an npz whose `classes` list the teacher's order" if folder
           else "order the npz's `classes` (and labels) as the teacher's")
  raise ValueError(f"teacher {meta.arch!r} was trained on classes {_names(theirs)} but "
                   f"dataset {dataset.id!r} has {_names(ours)}: {diff}; {fix}, or "
                   "every label would be wrong")


def teacher_accuracy_warning(meta, accuracy: float, dataset_id: str) -> str | None:
  """A loud line when the teacher's accuracy on ``dataset_id`` is near chance (below
  chance + 15% of the way to 100%): its labels are likely not the teacher's."""
  chance = 100.0 / int(meta.num_classes)
  if accuracy >= chance + 0.15 * (100.0 - chance):
    return None
  recorded = (f"; teacher.json records {meta.test_accuracy:.2f}% on its own test set"
              if meta.test_accuracy is not None else "")
  why = ("its class names match this dataset's, so look at the images (channels, "
         "size, normalisation)" if getattr(meta, "class_names", ()) else
         "class folders ordered otherwise than the teacher's classes permute every "
         "label, and this teacher records no class names to check that")
  return (f"WARNING: teacher {meta.arch!r} scores {accuracy:.2f}% on the {dataset_id} "
          f"test set, near chance ({chance:.2f}% for {meta.num_classes} classes)"
          f"{recorded}: are these the teacher's labels? {why}; every accuracy of this "
          "run is measured against these labels")


def evaluation_dataset(meta, dataset_id: str) -> str:
  """The dataset id a teacher (``TeacherMeta``) and its students are evaluated with.

  ``dataset_id`` itself for a ``folder:``/``npz:`` dataset (any data of the teacher's
  classes); else the teacher's recorded id, whose variant (``mnist:pad``) decides the
  preprocessing.
  """
  dataset = get_dataset(dataset_id)
  return dataset.id if dataset.spec.name not in SPECS else meta.dataset


# ---------------------------------------------------------------------------
# Offline preparation (needs TensorFlow).
# ---------------------------------------------------------------------------


def manual_dir(data_dir: str | os.PathLike, dataset_id: str) -> pathlib.Path:
  """Where :func:`prepare` puts the original archives of a dataset."""
  name = get_dataset(dataset_id).spec.name
  return pathlib.Path(data_dir) / "downloads" / "manual" / name


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _check_archive(spec: DatasetSpec, path: pathlib.Path,
                   official: tuple[str, int | None, str]) -> None:
  """Raises ``ValueError`` if ``path`` is not the official archive (size, SHA-256)."""
  url, size, checksum = official
  got_size = path.stat().st_size
  if size is not None and got_size != size:
    raise ValueError(f"archive {path} of {spec.name!r} has {got_size} bytes, the "
                     f"official one {size} ({url}): these are not the official files")
  if checksum and (got := _sha256(path)) != checksum:
    raise ValueError(f"archive {path} of {spec.name!r} has SHA-256 {got}, the official "
                     f"one {checksum} ({url}): these are not the official files")


def _remove_made(files: Sequence[pathlib.Path], folders: Sequence[pathlib.Path]) -> None:
  """Removes ``files`` and then the ``folders`` (deepest first) that are left empty."""
  for path in files:
    path.unlink(missing_ok=True)
  for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
    try:
      folder.rmdir()  # Only if empty: never deletes anything it did not make.
    except OSError:
      pass


def prepare(dataset_id: str, archives: str | os.PathLike,
            data_dir: str | os.PathLike) -> pathlib.Path:
  """Prepares a TFDS dataset offline from its original archives.

  The archives are checked against TFDS's registered sizes and SHA-256 sums before
  anything is copied; if preparing fails, the copies and the folders it made (left
  empty) are removed again.

  Args:
    dataset_id: a TFDS-backed dataset (``mnist``, ``cifar10``, ...).
    archives: folder holding the original archives (see :func:`archive_names`).
    data_dir: the TFDS data directory to prepare into.

  Returns:
    The folder of the prepared dataset version.

  Raises:
    ValueError: unknown dataset, one that is not read through TFDS, or an archive that
      is not the official file (naming it, its size or checksum and the official one).
    FileNotFoundError: archives missing, naming them.
  """
  spec = get_dataset(dataset_id).spec
  if spec.tfds_name is None:
    raise ValueError(f"dataset {spec.name!r} needs no preparation (not a TFDS dataset)")
  archives, data_dir = pathlib.Path(archives), pathlib.Path(data_dir)
  official = _official_archives(spec)
  names = sorted(official)
  missing = [name for name in names if not (archives / name).is_file()]
  if missing:
    raise FileNotFoundError(f"missing archives of {spec.name!r} in {archives}: "
                            f"{', '.join(missing)} (needed: {', '.join(names)}, the "
                            f"official files {archive_source(spec)})")
  for name in names:
    _check_archive(spec, archives / name, official[name])
  target = manual_dir(data_dir, spec.name)
  folders = [f for f in (data_dir, data_dir / "downloads", target.parent, target,
                         data_dir / "downloads" / "extracted", data_dir / spec.tfds_name)
             if not f.exists()]
  copied = []
  try:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
      source, copy = archives / name, target / name
      if copy.is_file() and (os.path.samefile(source, copy) or (
          copy.stat().st_size == source.stat().st_size and
          _sha256(copy) == official[name][2])):
        continue
      copied.append(copy)
      shutil.copyfile(source, copy)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(spec.tfds_name, data_dir=os.fspath(data_dir))
    # The download manager takes `manual_dir/<file name>` instead of downloading it and
    # still validates it against the registered checksums; GCS lookups are disabled.
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(target),
                                          try_download_gcs=False)
    builder.download_and_prepare(download_config=config, file_format="array_record")
  except BaseException as e:
    _remove_made(copied, folders)
    if type(e).__name__ == "NonMatchingChecksumError":  # TFDS's multi-line message.
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise ValueError(f"TFDS rejects the archives of {spec.name!r} from {archives} "
                       f"({first}): these are not the official files") from None
    raise
  return pathlib.Path(os.fspath(builder.data_dir))

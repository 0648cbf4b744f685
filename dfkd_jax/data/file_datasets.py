"""Your own data: ``folder:PATH`` (ImageFolder layout) and ``npz:FILE`` datasets.

Hooked into :func:`dfkd_jax.data.datasets.get_dataset` by their prefix; the spec of one such
dataset (:class:`FileSpec`) carries what :mod:`dfkd_jax.data.datasets` needs (classes, stored
shape) and how to load its splits.

* ``folder:PATH``: torchvision's ``ImageFolder`` layout, ``PATH/test/<class>/*`` (and
  ``PATH/train/<class>/*`` to train a teacher; distillation only evaluates on
  ``test/``). Files with torchvision's image extensions (``.png``, ``.jpg``, ...) are
  read, in subfolders of a class folder too (``test/<class>/a/b.png``), following
  links, as torchvision's ``ImageFolder`` walks them; others, hidden files and folders
  and ``__MACOSX`` folders (macOS's zip metadata, which torchvision would count as a
  class) are skipped. Class index = position in the sorted class-folder names of
  ``train/`` (of ``test/`` when there is no ``train/``), as torchvision does; an empty
  class folder still counts as a class (a warning when its split is loaded). Images
  are grayscale (one channel) when every image is, else RGB. Modes: 1, L, LA, 16-bit
  grey (``I;16``, and 16-bit PNG/PGM as ``I``: the top 8 bits are kept, as Pillow
  reduces 16-bit RGB), RGB, RGBA, RGBX, CMYK, YCbCr, palettes (``P``, ``PA``; grey when
  the palette is); alpha is dropped (as torchvision's ``convert("RGB")``); other modes
  (32-bit ``I`` and ``F`` TIFFs, LAB, ...) are refused by name.
* ``npz:FILE``: arrays ``x_test``, ``y_test`` (and ``x_train``, ``y_train``): uint8
  (0..255) or float images in [0, 1], ``[N, H, W, C]`` or ``[N, H, W]``, integer labels;
  optionally ``classes`` (the class names): labels must lie in ``0..len(classes)-1``;
  without it the classes are ``0..max(y_train)`` (of ``y_test`` without a train split)
  and have no names to check against a teacher's. Object arrays (they need pickle) and
  NCHW images are refused by name.

Images keep their native size when all agree; ``image_size=S`` (``config.image_size``)
resizes every image to ``S x S`` when it is loaded, with PIL's bilinear filter (what
torchvision's ``Resize((S, S))`` does to PIL images; antialiased when shrinking), so the
stored split is ``S x S``. Decoded (and resized) splits go through
:mod:`dfkd_jax.data.data_cache`, in the user's cache folder
(``~/.cache/dfkd_jax/data/files/``, or ``$DFKD_JAX_DATA_CACHE/files/``;
:func:`dfkd_jax.data.data_cache.files_root`), keyed by the dataset's absolute path, the
split, the size and a fingerprint (names, sizes, modification and status-change times,
inodes) of the files read, so an added, removed, edited or replaced file is noticed;
loading logs how many images of each class were read and whether they were decoded
(and cached in which file) or came from the cache (which file). There is no
augmentation and no standard normalisation: a teacher trained by ``train_teacher``
takes ``config.mean``/``config.std`` or the per-channel mean/std of its train split,
and records them in its metadata.

Parsing the id checks the layout and reads every image's header (size and colour mode),
once per process while the folders are unchanged (1797 digit PNGs: 0.5 s), so a
missing, empty or unreadable input is reported before anything is compiled.

The dataset id is recorded with the absolute path (``folder:/data/pets``). Distillation
evaluates on ``config.dataset``, which may be another folder or file than the teacher's
(a labelled test set of the same classes), so a teacher whose data moved still works.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import time
from typing import Callable
import zipfile

import numpy as np

from dfkd_jax.data import data_cache
from dfkd_jax.data.dataset_spec import ArraySplit, DatasetSpec, cached_split

PREFIXES = ("folder", "npz")
# torchvision.datasets.folder.IMG_EXTENSIONS.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                    ".webp")
# PIL modes read, by the channels they give: 16-bit greys (``I;16*``, and ``I`` from a
# PNG or PGM, which Pillow scales to 0..65535) keep their top 8 bits, as Pillow reduces
# 16-bit RGB; a palette (``P``, ``PA``) of greys only is grey. Others are refused by name.
_GREY_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr")
_SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
# Never a class: macOS's zip metadata (torchvision would count it as one).
_IGNORED_FOLDERS = ("__MACOSX",)
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class FileSpec(DatasetSpec):
  """A ``folder:`` or ``npz:`` dataset, as found on disk.

  ``name`` is the id with the absolute path; ``image_shape`` the native ``(H, W, C)``
  (``H = W = 0`` when the images differ in size); ``mean``/``std`` are empty (a teacher
  takes them from its config or its train split).

  Attributes:
    path: the absolute folder or file.
    classes: class names, by index.
    splits: the splits present (``train``, ``test``).
    mixed_sizes: when the images differ in size, two that differ, in words.
    named: whether ``classes`` are names the data gives (folder names, an npz's
      ``classes``), not the indices ``0..N-1``.
    ignored: folders skipped that might look like classes (``test/__MACOSX``).
    colour: when a few colour images make a folder RGB, how many and the first.
  """

  path: str = ""
  classes: tuple[str, ...] = ()
  splits: tuple[str, ...] = ()
  mixed_sizes: str = ""
  named: bool = True
  ignored: tuple[str, ...] = ()
  colour: str = ""

  @property
  def class_names(self) -> tuple[str, ...]:
    """The class names, by index; ``()`` when the data names none (an npz without
    ``classes``)."""
    return self.classes if self.named else ()

  @property
  def source(self) -> str:
    return self.name.partition(":")[0]

  def stored_shape(self, image_size: int = 0) -> tuple[int, int, int]:
    """``(H, W, C)`` of the loaded images: ``(S, S, C)`` for ``image_size=S``, else native.

    Raises:
      ValueError: a bad ``image_size``, or images of several sizes and no ``image_size``.
    """
    size = _check_image_size(image_size)
    channels = self.image_shape[2]
    if size:
      return (size, size, channels)
    if self.mixed_sizes:
      raise ValueError(f"dataset {self.name!r} has images of several sizes ("
                       f"{self.mixed_sizes}); set config.image_size=S to resize every "
                       "image to SxS (bilinear)")
    return self.image_shape

  def load(self, split: str, cache_root: pathlib.Path | None, image_size: int = 0,
           log: Callable[[str], None] | None = None) -> ArraySplit:
    """Loads ``split`` (resized to ``image_size`` if given) through the data cache.

    ``cache_root`` is the cache folder of file datasets
    (:func:`dfkd_jax.data.data_cache.files_root`; ``None``: no cache). ``log`` receives
    how many images of each class were read, and whether they were decoded (and where
    they were cached) or read from the cache; a class without images is a warning.

    Raises:
      FileNotFoundError: the split is absent.
      ValueError: unreadable or truncated images, bad arrays (naming them).
    """
    shape = self.stored_shape(image_size)
    if split not in self.splits:
      what = ("PATH/train/<class>/*" if self.source == "folder" else "x_train, y_train")
      raise FileNotFoundError(f"dataset {self.name!r} has no {split} split; training a "
                              f"teacher needs {what}")
    path = pathlib.Path(self.path)
    if self.source == "folder":
      files = _folder_files(path / split, self.classes)
      listing = [f for f, _ in files]
      base = path
      decode = lambda: _decode_folder(files, shape, image_size)
    else:
      listing, base = [path], path.parent
      decode = lambda: _decode_npz(self, split, image_size)
    start, decoded, written, cache_file = time.time(), [], [], None
    if cache_root is None:
      result = ArraySplit(*decode())
    else:
      key = {"source": self.name, "split": split, "image_size": int(image_size),
             "classes": list(self.classes),
             "files": data_cache.fingerprint(base, listing, strict=True)}
      digest = hashlib.sha256(self.name.encode()).hexdigest()[:16]
      cache_file = (cache_root / f"{self.source}-{path.name}-{digest}" /
                    f"{split}-{image_size or 'native'}.npz")
      result = cached_split(cache_file, key, lambda: decoded.append(1) or decode(),
                            written.append)
    if log is not None:
      how = (f"read from the cache {cache_file} (delete it to decode again)"
             if cache_file is not None and not decoded
             else f"decoded in {time.time() - start:.1f} s")
      if written:
        how += (f", cached in {cache_file} ({data_cache.ENV}=DIR caches in DIR, =0 "
                "not at all)")
      for line in self._report(split, result.labels, how):
        log(line)
    return result

  def _report(self, split: str, labels: np.ndarray, how: str) -> list[str]:
    """The lines :meth:`load` logs: images per class, ignored folders, warnings."""
    counts = np.bincount(labels, minlength=self.num_classes)
    shown = ", ".join(f"{c} {n}" for c, n in zip(self.classes[:12], counts))
    more = f", ... {len(counts) - 12} more" if len(counts) > 12 else ""
    lines = [f"{self.name} {split}: {len(labels)} images in {self.num_classes} classes "
             f"({shown}{more}), {how}"]
    lines += [f"{self.name}: ignored {folder} (macOS zip metadata, never a class)"
              for folder in self.ignored if folder.startswith(split + "/")]
    if self.colour:
      lines.append(f"{self.name}: {self.colour}")
    empty = [c for c, n in zip(self.classes, counts) if n == 0]
    if empty:
      where = (f"{split}/{empty[0]}/" if self.source == "folder"
               else f"x_{split}, y_{split}")
      lines.append(f"WARNING: {self.name} {split}: {len(empty)} of the "
                   f"{self.num_classes} classes have no images ({', '.join(empty[:5])}"
                   f"{', ...' if len(empty) > 5 else ''}); results cover only the others"
                   f": add their images ({where})")
    return lines


def parse(dataset_id: str) -> FileSpec:
  """The spec of ``folder:PATH`` or ``npz:FILE`` (relative paths: to the working dir).

  Raises:
    FileNotFoundError: the folder or file is missing.
    ValueError: empty folders, unreadable images, bad arrays or labels (one line
      naming the file or value and the fix).
  """
  source, _, raw = dataset_id.partition(":")
  if not raw:
    raise ValueError(f"dataset {dataset_id!r} names no path; use {source}:PATH")
  path = pathlib.Path(raw).expanduser().absolute()
  if source == "folder":
    if not path.is_dir():
      raise FileNotFoundError(f"dataset {dataset_id!r}: folder {path} not found; point "
                              "folder: at a folder holding test/<class>/* images")
    return _scan_folder(path, _folder_stamp(path))
  if not path.is_file():
    raise FileNotFoundError(f"dataset {dataset_id!r}: file {path} not found; point npz: "
                            "at an .npz with x_test, y_test (np.savez)")
  stat = path.stat()
  return _scan_npz(path, (stat.st_size, stat.st_mtime_ns))


def normalization(split: ArraySplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel ``(mean, std)`` of a split's images scaled to [0, 1].

  Accumulated in float64 over chunks, so a large split needs no float copy.
  """
  channels = split.images.shape[-1]
  total, squares, count = np.zeros(channels), np.zeros(channels), 0
  for start in range(0, len(split.images), 4096):
    x = split.images[start:start + 4096].astype(np.float64) / split.pixel_max
    total += x.sum(axis=(0, 1, 2))
    squares += np.square(x).sum(axis=(0, 1, 2))
    count += x.size // channels
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
  if np.any(std <= 0):
    raise ValueError(f"the train split's images are constant in some channel (std "
                     f"{std.round(6).tolist()}); set config.mean and config.std")
  return tuple(mean.round(6).tolist()), tuple(std.round(6).tolist())


# ---------------------------------------------------------------------------
# folder:PATH
# ---------------------------------------------------------------------------


def _check_image_size(image_size) -> int:
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or (
      image_size < 0):
    raise ValueError(f"config.image_size={image_size!r} must be an integer >= 0 (0 = "
                     "native size)")
  return int(image_size)


def _ignored(name: str) -> bool:
  """Hidden files and folders, and macOS's ``__MACOSX``: never images nor classes."""
  return name.startswith(".") or name in _IGNORED_FOLDERS


def _class_folders(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _ignored(p.name))


def _walk(folder: pathlib.Path):
  """``(folder, file names)`` under ``folder``, recursive as torchvision's ImageFolder
  (``os.walk``, following links, sorted by folder); ignored names skipped, a folder
  reached twice through links read once."""
  found, seen = [], set()
  for root, dirs, files in os.walk(folder, followlinks=True):
    stat = os.stat(root)
    if (stat.st_dev, stat.st_ino) in seen:  # A link back up: os.walk would loop.
      dirs[:] = []
      continue
    seen.add((stat.st_dev, stat.st_ino))
    dirs[:] = [d for d in dirs if not _ignored(d)]
    found.append((root, sorted(f for f in files if not _ignored(f))))
  return sorted(found)


def _folder_files(folder: pathlib.Path, classes) -> list[tuple[pathlib.Path, int]]:
  """``(image file, class index)`` of one split, sorted by class, subfolder and name."""
  return [(pathlib.Path(root, name), index) for index, cls in enumerate(classes)
          if (folder / cls).is_dir() for root, names in _walk(folder / cls)
          for name in names if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]


def _folder_stamp(path: pathlib.Path) -> tuple:
  """Modification times of the folder and every folder under its splits (the memo key)."""
  stamp = [path.stat().st_mtime_ns]
  for split in SPLITS:
    if (path / split).is_dir():
      stamp += [(root, os.stat(root).st_mtime_ns) for root, _ in _walk(path / split)]
  return tuple(stamp)


def _channels(image, file: pathlib.Path) -> int:
  """1 for a grey image, 3 for a colour one.

  Raises:
    ValueError: a mode without a known 0..255 (or 16-bit) range, naming it.
  """
  mode = image.mode
  if mode in _GREY_MODES or (mode == "I" and image.format in _SIXTEEN_BIT_I_FORMATS):
    return 1
  # Pillow opens a 16-bit grey+alpha PNG as RGBA (R = G = B); its raw mode tells.
  if getattr(getattr(image, "png", None), "im_rawmode", "").startswith("LA;16"):
    return 1
  if mode in ("P", "PA"):
    palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
    return 1 if np.all(palette == palette[:, :1]) else 3
  if mode in _COLOUR_MODES:
    return 3
  what = {"F": "32-bit float pixels, no fixed range",
          "I": "32-bit integer pixels, no fixed range"}.get(mode, "not read here")
  raise ValueError(f"image {file} has PIL mode {mode} ({what}); save it as an 8- or "
                   "16-bit grayscale or RGB PNG, or remove it")


def _header(file: pathlib.Path) -> tuple[tuple[int, int], int]:
  """``((H, W), channels)`` from an image's header."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    image = Image.open(file)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"cannot read image {file} ({e}); replace or remove it") from None
  with image:
    return (image.size[1], image.size[0]), _channels(image, file)


@functools.lru_cache(maxsize=16)
def _scan_folder(path: pathlib.Path, stamp: tuple) -> FileSpec:
  """Checks the layout and reads every image's header (size and mode); memoised."""
  del stamp  # Part of the memo key only.
  name = f"folder:{path}"
  test = path / "test"
  if not test.is_dir():
    raise FileNotFoundError(f"dataset {name!r}: no folder {test}; put the labelled test "
                            "images in test/<class>/* (and train/<class>/* to train a "
                            "teacher)")
  splits = tuple(s for s in SPLITS if (path / s).is_dir())
  classes = _class_folders(path / splits[0])
  if not classes:
    raise ValueError(f"dataset {name!r}: {path / splits[0]} has no class folders; put "
                     f"the images in {path / splits[0]}/<class>/*")
  if "train" in splits:
    extra = sorted(set(_class_folders(test)) - set(classes))
    if extra:
      raise ValueError(f"dataset {name!r}: class folder {test / extra[0]} is not in "
                       f"{path / 'train'} (its classes: {', '.join(classes)}); add "
                       f"train/{extra[0]} or remove test/{extra[0]}")
  sizes, colour, total = {}, [], 0
  for split in splits:
    files = _folder_files(path / split, classes)
    if not files:
      raise ValueError(f"dataset {name!r}: no images in {path / split}/<class>/ "
                       f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    for file, _ in files:
      size, channels = _header(file)
      sizes.setdefault(size, file)
      if channels == 3:
        colour.append(file)
    total += len(files)
  ignored = tuple(f"{split}/{p.name}" for split in splits
                  for p in sorted((path / split).iterdir())
                  if p.name in _IGNORED_FOLDERS and p.is_dir())
  return FileSpec(
      name=name, num_classes=len(classes),
      image_shape=_native_shape(sizes, 3 if colour else 1), mean=(), std=(),
      path=os.fspath(path), classes=tuple(classes), splits=splits,
      mixed_sizes=_mixed(sizes), ignored=ignored,
      colour=(f"{len(colour)} of the {total} images are colour ({colour[0]} first), "
              "so all are read as RGB") if colour and len(colour) < total else "")


def _native_shape(sizes: dict, channels: int) -> tuple[int, int, int]:
  """``(H, W, C)`` when every image has the one size in ``sizes``, else ``(0, 0, C)``."""
  h, w = next(iter(sizes)) if len(sizes) == 1 else (0, 0)
  return (h, w, channels)


def _mixed(sizes: dict) -> str:
  """Two images of different sizes, in words; ``""`` when all agree."""
  if len(sizes) < 2:
    return ""
  (a, file_a), (b, file_b) = list(sizes.items())[:2]
  return f"{file_a} is {a[0]}x{a[1]}, {file_b} is {b[0]}x{b[1]}"


def _eight_bit(image, channels: int):
  """``image`` as 8-bit ``L`` (``channels`` 1) or ``RGB``: a 16-bit grey keeps its top
  8 bits (Pillow's ``convert`` would clip it to 0..255: nearly black and white)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode.startswith("I"):  # I;16*, or I of a PNG/PGM (0..65535): see _channels.
    wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    image = Image.fromarray((wide >> 8).astype(np.uint8), "L")
  return image.convert("L" if channels == 1 else "RGB")


def _decode_folder(files, shape, image_size: int):
  """Decodes (and resizes) the images of one split: ``(images, labels, pixel_max)``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w, c = shape
  images = np.empty((len(files), h, w, c), np.uint8)
  for i, (file, _) in enumerate(files):
    try:
      with Image.open(file) as image:
        image = _eight_bit(image, c)
        if image_size:
          image = image.resize((image_size, image_size), Image.BILINEAR)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot decode image {file} ({e}: truncated or corrupt?); "
                       "replace or remove it") from None
    pixels = np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], -1)
    if pixels.shape != (h, w, c):
      raise ValueError(f"image {file} is {pixels.shape[0]}x{pixels.shape[1]}, the others "
                       f"{h}x{w}; set config.image_size=S to resize every image to SxS")
    images[i] = pixels
  return images, np.asarray([label for _, label in files], np.int32), 255.0


# ---------------------------------------------------------------------------
# npz:FILE
# ---------------------------------------------------------------------------


def _npz_headers(path: pathlib.Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """``{array name: (shape, dtype)}`` from the headers, without reading the arrays."""
  headers = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        if member.endswith(".npy"):
          with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
          headers[member[:-4]] = (shape, dtype)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"dataset 'npz:{path}': {path} is not an .npz of arrays ({e}); "
                     "write it with np.savez(FILE, x_test=..., y_test=...)") from None
  return headers


@functools.lru_cache(maxsize=16)
def _scan_npz(path: pathlib.Path, stamp: tuple) -> FileSpec:
  """Checks the arrays' names, shapes, dtypes and labels; memoised."""
  del stamp  # Part of the memo key only.
  name = f"npz:{path}"
  headers = _npz_headers(path)
  if "x_test" not in headers or "y_test" not in headers:
    raise ValueError(f"dataset {name!r} holds {sorted(headers)}; it needs x_test and "
                     "y_test (and x_train, y_train to train a teacher)")
  splits = tuple(s for s in SPLITS if f"x_{s}" in headers)
  for array in ("classes", *(f"{xy}_{s}" for s in splits for xy in "xy")):
    if array in headers and headers[array][1].hasobject:
      raise ValueError(
          f"dataset {name!r}: array {array} in {path} holds Python objects (dtype "
          "object: a list of arrays of different sizes, or of mixed values), which "
          "needs pickle; save it as a plain array (np.asarray(..., np.uint8) images of "
          "one size, integer labels, str class names)")
  shapes = {}
  with np.load(path, allow_pickle=False) as npz:
    labels = {s: np.asarray(npz[f"y_{s}"]) for s in splits if f"y_{s}" in npz.files}
    class_names = (tuple(str(c) for c in npz["classes"]) if "classes" in npz.files
                   else None)
  for split in splits:
    shape, dtype = headers[f"x_{split}"]
    if split not in labels:
      raise ValueError(f"dataset {name!r} has x_{split} but no y_{split}; add the labels")
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] > 4:
      raise ValueError(f"dataset {name!r}: x_{split} has shape {shape}, which looks NCHW "
                       "(PyTorch's layout); store NHWC images: x.transpose(0, 2, 3, 1)")
    if len(shape) not in (3, 4) or not (dtype == np.uint8 or dtype.kind == "f"):
      raise ValueError(f"dataset {name!r}: x_{split} is {dtype} of shape {shape}; it must "
                       "be uint8 (0..255) or float ([0, 1]) images, [N, H, W, C] or "
                       "[N, H, W]")
    y = labels[split]
    if y.ndim != 1 or len(y) != shape[0]:
      raise ValueError(f"dataset {name!r}: x_{split} has {shape[0]} images but y_{split} "
                       f"has shape {y.shape}; give one label per image")
    if y.dtype.kind not in "iu":
      raise ValueError(f"dataset {name!r}: y_{split} is {y.dtype}; labels must be "
                       "integers (class indices)")
    shapes[split] = (shape[1], shape[2], shape[3] if len(shape) == 4 else 1)
  if len({c for _, _, c in shapes.values()}) > 1:
    raise ValueError(f"dataset {name!r}: x_train and x_test have different channels "
                     f"({shapes}); give both the same")
  num_classes = (len(class_names) if class_names is not None
                 else int(labels[splits[0]].max(initial=-1)) + 1)
  for split, y in labels.items():
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
      where = ("classes" if class_names is not None else
               f"0..{num_classes - 1}, the labels of y_{splits[0]}")
      raise ValueError(f"dataset {name!r}: y_{split} has label {int(bad[0])} outside "
                       f"the classes ({where}); fix the labels or add a `classes` array")
  sizes = {shape[:2]: f"x_{split}" for split, shape in shapes.items()}
  channels = shapes["test"][2]
  return FileSpec(
      name=name, num_classes=num_classes, image_shape=_native_shape(sizes, channels),
      mean=(), std=(), pixel_max=255.0, path=os.fspath(path),
      classes=class_names or tuple(str(i) for i in range(num_classes)), splits=splits,
      mixed_sizes=_mixed(sizes), named=class_names is not None)


def _decode_npz(spec: FileSpec, split: str, image_size: int):
  """The arrays of one split, NHWC (resized): ``(images, labels, pixel_max)``."""
  with np.load(spec.path, allow_pickle=False) as npz:
    images, labels = npz[f"x_{split}"], npz[f"y_{split}"].astype(np.int32)
  if images.ndim == 3:
    images = images[..., None]
  pixel_max = 255.0
  if images.dtype != np.uint8:
    images = images.astype(np.float32)
    low, high = (float(images.min()), float(images.max())) if images.size else (0, 0)
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
      raise ValueError(f"dataset {spec.name!r}: float x_{split} spans [{low:g}, {high:g}]"
                       "; float images must lie in [0, 1] (or store uint8 0..255)")
    pixel_max = 1.0
  if image_size:
    images = _resize(images, image_size)
  return images, labels, pixel_max


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """PIL bilinear resize of ``[N, H, W, C]`` to ``size x size``, channel by channel."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((len(images), size, size, images.shape[3]), np.float32)
  for i, image in enumerate(images.astype(np.float32)):
    for c in range(images.shape[3]):
      channel = Image.fromarray(np.ascontiguousarray(image[..., c]))  # Mode F.
      out[i, ..., c] = np.asarray(channel.resize((size, size), Image.BILINEAR))
  if images.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return np.clip(out, 0.0, 1.0)

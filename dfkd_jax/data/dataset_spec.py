"""The types every dataset source shares: a source's fixed facts and a split in memory.

A leaf module, so that :mod:`dfkd_jax.data.datasets` (the built-in sources) and
:mod:`dfkd_jax.data.file_datasets` (``folder:``/``npz:``) both build on it without importing
each other's way up; :mod:`dfkd_jax.data.datasets` re-exports both names.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, NamedTuple

import numpy as np

from dfkd_jax.data import data_cache


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What is fixed about one image classification source.

  Attributes:
    name: source name (``mnist``, ``cifar10``, ...).
    num_classes: number of classes.
    image_shape: native ``(H, W, C)`` of the stored images.
    mean: per-channel mean of the [0, 1]-scaled pixels, used to normalise.
    std: per-channel standard deviation, used to normalise.
    crop: whether training augmentation takes random 4-pixel-padded crops.
    flip: whether training augmentation flips horizontally.
    tfds_name: the TFDS builder name, or ``None`` when not read through TFDS.
    pixel_max: the stored value of white (255 for uint8 images).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop: bool = False
  flip: bool = False
  tfds_name: str | None = None
  pixel_max: float = 255.0

  def stored_shape(self, image_size: int = 0) -> tuple[int, int, int]:
    """``(H, W, C)`` of the loaded images; only file datasets take an ``image_size``."""
    if image_size:
      raise ValueError(f"config.image_size={image_size!r} resizes folder: and npz: "
                       f"datasets only; {self.name!r} has fixed {self.image_shape[0]}x"
                       f"{self.image_shape[1]} images: set it to 0")
    return self.image_shape


class ArraySplit(NamedTuple):
  """One split in memory, as stored: ``images [N, H, W, C]`` (``pixel_max`` = white)."""

  images: np.ndarray
  labels: np.ndarray  # int32 [N].
  pixel_max: float


def cached_split(path: pathlib.Path | None, key: dict, decode: Callable[[], tuple],
                 on_write: Callable[[pathlib.Path], None] | None = None) -> ArraySplit:
  """``decode()`` (the fields of an :class:`ArraySplit`) through
  :func:`dfkd_jax.data.data_cache.cached`: read from ``path`` when its ``key`` matches
  (``on_write(path)`` once a decoded split is written there)."""
  arrays = data_cache.cached(path, key, lambda: dict(zip(ArraySplit._fields, decode())),
                             on_write)
  return ArraySplit(arrays["images"], arrays["labels"], float(arrays["pixel_max"]))

"""A distilled student as a self-contained folder, and its two-line loader.

``python -m dfkd_jax.export --format=flax`` writes (see ``docs/contracts.md``)::

  student_dir/
    student.json   # the card: architecture, classes, input shape, normalisation,
                   # dataset, method, seed, step, test accuracy, where it came from
    variables/     # orbax checkpoint of {"params": ..., "batch_stats": ...}

and :func:`load_student` reads it back without the run, its teacher or its config::

  predict = dfkd_jax.load_student("student_dir")
  logits = predict(images)   # [N, H, W, C] uint8 or [0, 1] images -> [N, classes]

The folder is written into a temporary sibling and renamed into place, so an interrupted
export leaves no half-written student.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dfkd_jax import models

FORMAT_VERSION = 1
CARD_FILE = "student.json"
VARIABLES_DIR = "variables"


@dataclasses.dataclass(frozen=True)
class StudentCard:
  """What a deployed student needs besides its weights (``student.json``).

  Attributes:
    arch: registered classifier name (:func:`dfkd_jax.models.names`).
    num_classes: number of logits.
    input_shape: ``(H, W, C)`` of the network's input.
    mean: per-channel mean subtracted from ``[0, 1]`` images.
    std: per-channel standard deviation the images are then divided by.
    dataset: the dataset id whose test set the run evaluated on (its preprocessing:
      :func:`dfkd_jax.data.datasets.preprocess`).
    method: the DFKD method of the run (``config.method``).
    seed: the run's (or replica's) seed.
    step: iterations done at the exported checkpoint.
    test_accuracy: the run's test accuracy (%) at that checkpoint, or ``None`` for a
      checkpoint between two evaluations.
    teacher_arch: the teacher it was distilled from.
    source: the run directory and checkpoint it was exported from.
  """

  arch: str
  num_classes: int
  input_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  dataset: str
  method: str
  seed: int
  step: int
  test_accuracy: float | None
  teacher_arch: str
  source: str

  def to_json(self) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "arch": self.arch,
            "num_classes": self.num_classes, "input_shape": list(self.input_shape),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "dataset": self.dataset, "method": self.method, "seed": self.seed,
            "step": self.step, "test_accuracy": self.test_accuracy,
            "teacher_arch": self.teacher_arch, "source": self.source}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "StudentCard":
    if data.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{CARD_FILE} has format_version {data.get('format_version')!r}; "
                       f"this version reads {FORMAT_VERSION}")
    norm = data["normalization"]
    return cls(arch=data["arch"], num_classes=int(data["num_classes"]),
               input_shape=tuple(int(d) for d in data["input_shape"]),
               mean=tuple(norm["mean"]), std=tuple(norm["std"]), dataset=data["dataset"],
               method=data["method"], seed=int(data["seed"]), step=int(data["step"]),
               test_accuracy=data["test_accuracy"], teacher_arch=data["teacher_arch"],
               source=data["source"])

  def module(self):
    """The unbound Flax classifier."""
    return models.get(self.arch, num_classes=self.num_classes,
                      input_shape=self.input_shape)


def staging_dir(out: pathlib.Path) -> pathlib.Path:
  """A fresh temporary sibling of ``out`` (same filesystem, so it renames into place)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def replace_with(staged: pathlib.Path, out: pathlib.Path) -> None:
  """Moves ``staged`` (a file or folder) to ``out``, replacing what is there."""
  if out.is_dir():
    retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, retired / "old")
    os.rename(staged, out)
    shutil.rmtree(retired, ignore_errors=True)
  else:
    os.replace(staged, out)


def save_student(out: str | os.PathLike, variables: Mapping[str, Any],
                 card: StudentCard) -> pathlib.Path:
  """Writes the student folder ``out`` atomically (the caller checks overwriting).

  Args:
    out: the folder to write (replaced if it is a student folder).
    variables: ``{"params": ..., "batch_stats": ...}`` of ``card.arch``.
    card: the card.

  Returns:
    The absolute folder.

  Raises:
    ValueError: ``out`` exists and is not a student folder (never replaced).
  """
  out = pathlib.Path(out).absolute()
  if out.exists() and not is_student_folder(out):
    raise ValueError(f"{out} exists and is not a student folder (student.json and "
                     "variables/ only); save_student replaces only a student folder: "
                     "choose another path")
  staging = staging_dir(out)
  try:
    to_save = jax.tree.map(jnp.asarray, {"params": dict(variables["params"]),
                                         "batch_stats": dict(variables["batch_stats"])})
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(staging / "student" / VARIABLES_DIR, to_save)
      checkpointer.wait_until_finished()
    with open(staging / "student" / CARD_FILE, "w") as f:
      json.dump(card.to_json(), f, indent=2)
    replace_with(staging / "student", out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out


def load_card(path: str | os.PathLike) -> StudentCard:
  """Reads ``student.json`` of a student folder.

  Raises:
    FileNotFoundError: ``path`` is not a student folder.
    ValueError: its ``student.json`` is damaged (one line, naming it).
  """
  card_path = pathlib.Path(path) / CARD_FILE
  if not card_path.is_file():
    raise FileNotFoundError(f"{card_path} not found: {path} is not a student folder "
                            "(write one with python -m dfkd_jax.export --format=flax)")
  try:
    return StudentCard.from_json(json.loads(card_path.read_text()))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    cause = f"no field {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
    raise ValueError(f"{card_path} cannot be read ({cause}); export the student again "
                     "with python -m dfkd_jax.export --format=flax") from None


def is_student_folder(path: pathlib.Path) -> bool:
  """Whether ``path`` is a folder :func:`save_student` wrote: its card and variables,
  nothing else (what ``export --overwrite`` may replace)."""
  try:
    names = {p.name for p in path.iterdir()}
    load_card(path)
  except (OSError, ValueError):
    return False
  return names == {CARD_FILE, VARIABLES_DIR} and (path / VARIABLES_DIR).is_dir()


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """The ``{"params", "batch_stats"}`` of a student folder, as NumPy arrays.

  Raises:
    FileNotFoundError: no ``variables/`` folder.
    ValueError: it does not restore (one line, naming it).
  """
  directory = pathlib.Path(path).absolute() / VARIABLES_DIR
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory} not found: the student folder {path} is "
                            "incomplete; export the student again with python -m "
                            "dfkd_jax.export --format=flax")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.metadata(directory).item_metadata.tree
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
      restored = checkpointer.restore(directory, target)
  except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors.
    cause = (str(e).strip().splitlines() or [""])[0][:200]
    raise ValueError(f"{directory} does not restore ({type(e).__name__}: {cause}); "
                     "export the student again with python -m dfkd_jax.export "
                     "--format=flax") from None
  return {"params": restored.get("params") or {},
          "batch_stats": restored.get("batch_stats") or {}}


# Integer images are scaled to [0, 1] by their dtype's full range; float images outside
# [0, 1] by more than this (0..255 floats) are refused.
_FLOAT_SLACK = 0.5


def check_shape(images, card: StudentCard) -> None:
  """Raises a one-line ValueError unless ``images`` is ``[N, *card.input_shape]``."""
  shape = tuple(getattr(images, "shape", np.shape(images)))
  if len(shape) != 4 or shape[1:] != card.input_shape:
    hint = (" (NCHW? pass NHWC: images.transpose(0, 2, 3, 1))"
            if len(shape) == 4 and shape[1:] == (card.input_shape[2],
                                                  *card.input_shape[:2]) else "")
    raise ValueError(f"images of shape {shape}; the student {card.arch} takes "
                     f"[N, {', '.join(map(str, card.input_shape))}] (NHWC){hint}")


def unit_images(images, card: StudentCard):
  """``images`` as float32 in ``[0, 1]`` of the card's input shape: ``uint8`` /
  ``uint16`` scaled by 255 / 65535, floats as given.

  Raises:
    ValueError: another shape, another integer dtype, or float images far outside
      ``[0, 1]`` (one line, naming the fix).
  """
  check_shape(images, card)
  dtype = np.dtype(images.dtype) if hasattr(images, "dtype") else np.asarray(images).dtype
  if dtype in (np.uint8, np.uint16):
    return jnp.asarray(images, jnp.float32) / float(np.iinfo(dtype).max)
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"images of dtype {dtype}; pass uint8 (0..255), uint16 or float "
                     "images in [0, 1]")
  x = jnp.asarray(images, jnp.float32)
  if not isinstance(x, jax.core.Tracer) and x.size:
    low, high = float(jnp.min(x)), float(jnp.max(x))
    if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
      raise ValueError(f"float images in [{low:g}, {high:g}]; the student takes images "
                       "in [0, 1] (divide 0..255 images by 255, or pass them as uint8), "
                       "or normalised ones with normalized=True")
  return x


def load_student(path: str | os.PathLike) -> Callable[..., jax.Array]:
  """The predict function of a student folder written by ``--format=flax``.

  ``predict(images, normalized=False)`` takes ``[N, H, W, C]`` images at the card's
  ``input_shape``: ``uint8`` (0..255), ``uint16`` or float in ``[0, 1]``
  (``normalized=True``: float, already normalised with the card's mean/std), and returns
  the ``[N, num_classes]`` logits of the student in eval mode (jitted).
  ``predict.card`` is the :class:`StudentCard`, ``predict.variables`` the weights.

  Raises:
    FileNotFoundError: ``path`` is not a student folder, or has no ``variables/``.
    ValueError: a damaged folder; at ``predict``, images of another shape or range
      (one line each).
  """
  card = load_card(path)
  module = card.module()
  variables = load_variables(path)
  mean, std = jnp.asarray(card.mean), jnp.asarray(card.std)

  @functools.partial(jax.jit, static_argnames="normalized")
  def apply(variables, images, normalized):
    x = jnp.asarray(images, jnp.float32)
    return module.apply(variables, x if normalized else (x - mean) / std, train=False)

  def predict(images, normalized: bool = False) -> jax.Array:
    if normalized:
      check_shape(images, card)
    else:
      images = unit_images(images, card)
    return apply(variables, images, normalized)

  predict.card, predict.variables = card, variables
  return predict

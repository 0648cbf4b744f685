"""A distilled student as a self-contained folder, and its two-line loader.

``python -m dfkd_jax.export --format=flax`` writes (see ``docs/contracts.md``)::

  student_dir/
    student.json   # the card: architecture, classes, input shape, normalisation,
                   # dataset, method, seed, step, test accuracy, where it came from
    variables/     # orbax checkpoint of {"params": ..., "batch_stats": ...}

and :func:`load_student` reads it back without the run, its teacher or its config::

  predict = dfkd_jax.load_student("student_dir")
  logits = predict(images)   # [N, H, W, C] images in [0, 1] -> [N, classes]

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
      :func:`dfkd_jax.data.preprocess`).
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
    out: the folder to write (replaced if it exists).
    variables: ``{"params": ..., "batch_stats": ...}`` of ``card.arch``.
    card: the card.

  Returns:
    The absolute folder.
  """
  out = pathlib.Path(out).absolute()
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
  """
  card_path = pathlib.Path(path) / CARD_FILE
  if not card_path.is_file():
    raise FileNotFoundError(f"{card_path} not found: {path} is not a student folder "
                            "(write one with python -m dfkd_jax.export --format=flax)")
  return StudentCard.from_json(json.loads(card_path.read_text()))


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """The ``{"params", "batch_stats"}`` of a student folder, as NumPy arrays."""
  directory = pathlib.Path(path).absolute() / VARIABLES_DIR
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(directory).item_metadata.tree
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    restored = checkpointer.restore(directory, target)
  return {"params": restored.get("params") or {},
          "batch_stats": restored.get("batch_stats") or {}}


def load_student(path: str | os.PathLike) -> Callable[..., jax.Array]:
  """The predict function of a student folder written by ``--format=flax``.

  ``predict(images, normalized=False)`` takes ``[N, H, W, C]`` images in ``[0, 1]`` at
  the card's ``input_shape`` (``normalized=True``: already normalised with the card's
  mean/std) and returns the ``[N, num_classes]`` logits of the student in eval mode
  (jitted). ``predict.card`` is the :class:`StudentCard`, ``predict.variables`` the
  weights.

  Raises:
    FileNotFoundError: ``path`` is not a student folder.
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
    return apply(variables, images, normalized)

  predict.card, predict.variables = card, variables
  return predict

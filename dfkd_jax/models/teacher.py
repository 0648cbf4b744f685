"""The teacher checkpoint format shared by ``train_teacher``, ``convert`` and DFKD.

A teacher is a directory (see ``docs/contracts.md``)::

  teacher_dir/
    teacher.json   # TeacherMeta: arch, classes, input shape, normalisation, ...
    variables/     # orbax checkpoint of {"params": ..., "batch_stats": ...}

or, for a PyTorch module run as it is (:mod:`dfkd_jax.models.torch_module`), its
``state_dict`` in ``state_dict.pt`` instead of ``variables/`` and ``teacher.json``'s
``torch`` naming the module (:func:`save_torch_teacher`).

:func:`save_teacher` writes everything into a temporary sibling directory and renames it
into place, so an interrupted save never leaves a half-written teacher, and it refuses to
replace an existing teacher unless ``overwrite=True``. :func:`load_teacher` rebuilds the
module from the model registry and checks every stored array against the architecture.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dfkd_jax import models
from dfkd_jax.core import workdir as workdir_lib
from dfkd_jax.models import torch_module
from dfkd_jax.parallel import distributed

FORMAT_VERSION = 1
META_FILE = "teacher.json"
VARIABLES_DIR = "variables"
TORCH_STATE_DICT = "state_dict.pt"

Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class TeacherMeta:
  """Metadata of a teacher checkpoint, stored as ``teacher.json``.

  Attributes:
    arch: registered classifier name (:func:`dfkd_jax.models.names`) or
      ``package.module:Name`` import path (:func:`dfkd_jax.models.resolve`).
    num_classes: number of logits.
    input_shape: ``(H, W, C)`` of the normalised input images.
    mean: per-channel mean subtracted from ``[0, 1]`` images before the teacher.
    std: per-channel standard deviation images are divided by.
    dataset: dataset the teacher was trained on (e.g. ``"cifar10"``).
    test_accuracy: test accuracy in percent, or ``None`` if not measured.
    source: where the weights come from (``"train_teacher"``, a converted file, ...).
    class_names: the name of each output class (an image folder's class folders, an
      npz's ``classes``), by index; ``()`` when unknown (teachers of built-in datasets,
      of unnamed data and those saved before names were recorded).
    format_version: version of this format.
    torch: for a PyTorch teacher, ``{"module": "package.module:NAME", "kwargs": {...},
      "state_dict": "state_dict.pt"}``; ``None`` for a Flax one.
  """

  arch: str
  num_classes: int
  input_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  dataset: str
  test_accuracy: float | None = None
  source: str = ""
  class_names: tuple[str, ...] = ()
  format_version: int = FORMAT_VERSION
  torch: Mapping[str, Any] | None = None

  def __post_init__(self):
    object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f"class_names has {len(self.class_names)} names for "
                       f"num_classes={self.num_classes}; give one name per class")
    if len(self.input_shape) != 3:
      raise ValueError(f"input_shape must be (H, W, C), got {self.input_shape}")
    channels = self.input_shape[2]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel "
                       f"of input_shape {self.input_shape}")
    if any(s <= 0 for s in self.std):
      raise ValueError(f"std must be positive, got {self.std}")

  def to_json(self) -> dict[str, Any]:
    """The ``teacher.json`` dictionary (field names of ``docs/contracts.md``)."""
    extra = {} if self.torch is None else {"torch": dict(self.torch)}
    return {
        "format_version": self.format_version,
        "arch": self.arch,
        "num_classes": self.num_classes,
        "input_shape": list(self.input_shape),
        "normalization": {"mean": list(self.mean), "std": list(self.std)},
        "dataset": self.dataset,
        "test_accuracy": self.test_accuracy,
        "source": self.source,
        **({"class_names": list(self.class_names)} if self.class_names else {}),
        **extra,
    }

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "TeacherMeta":
    """Parses a ``teacher.json`` dictionary.

    Raises:
      ValueError: missing fields or an unsupported ``format_version``.
    """
    required = ("format_version", "arch", "num_classes", "input_shape",
                "normalization", "dataset")
    missing = [k for k in required if k not in data]
    if missing:
      raise ValueError(f"{META_FILE} lacks field(s) {missing}")
    if data["format_version"] != FORMAT_VERSION:
      raise ValueError(f"{META_FILE} has format_version {data['format_version']!r}; "
                       f"this version reads {FORMAT_VERSION}")
    norm = data["normalization"]
    return cls(arch=data["arch"], num_classes=int(data["num_classes"]),
               input_shape=tuple(data["input_shape"]), mean=tuple(norm["mean"]),
               std=tuple(norm["std"]), dataset=data["dataset"],
               test_accuracy=data.get("test_accuracy"), source=data.get("source", ""),
               class_names=tuple(data.get("class_names") or ()),
               format_version=data["format_version"], torch=data.get("torch"))

  def normalize(self, images: jax.Array) -> jax.Array:
    """``(images - mean) / std`` for ``[..., C]`` images in ``[0, 1]``."""
    return (images - jnp.asarray(self.mean)) / jnp.asarray(self.std)


def _abstract_variables(module: nn.Module, meta: TeacherMeta) -> dict[str, Any]:
  """Shapes of ``{"params", "batch_stats"}`` the architecture expects."""
  x = jax.ShapeDtypeStruct((1, *meta.input_shape), jnp.float32)
  abstract = jax.eval_shape(module.init, jax.random.key(0), x)
  return {"params": abstract.get("params", {}),
          "batch_stats": abstract.get("batch_stats", {})}


def _check_variables(expected: Mapping[str, Any], actual: Mapping[str, Any],
                     arch: str) -> None:
  """Raises ``ValueError`` naming every missing, unexpected or mis-shaped array."""
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected), sep="/")
  got = flax.traverse_util.flatten_dict(flax.core.unfreeze(actual), sep="/")
  problems = []
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  if missing:
    problems.append(f"missing {missing}")
  if unexpected:
    problems.append(f"unexpected {unexpected}")
  shapes = [f"{k}: {tuple(np.shape(got[k]))} != {tuple(want[k].shape)}"
            for k in sorted(set(want) & set(got))
            if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if shapes:
    problems.append(f"shape mismatches (stored != {arch}) {shapes}")
  if problems:
    raise ValueError(f"Variables do not match architecture {arch!r}: "
                     + "; ".join(problems))


def is_teacher_dir(path: pathlib.Path) -> bool:
  """Whether ``path`` is a teacher directory :func:`save_teacher` wrote (its
  ``teacher.json`` and ``variables/``, nothing else) or an empty folder: what
  ``overwrite`` may replace."""
  try:
    names = {p.name for p in path.iterdir()}
  except OSError:
    return False
  return not names or names <= {META_FILE, VARIABLES_DIR} and META_FILE in names


def check_destination(directory: str | os.PathLike, flag: str, overwrite: bool) -> None:
  """Refuses, before any work, a teacher directory that must not be written: an
  existing one without ``overwrite``; an empty path, the current directory or a folder
  above it; with ``overwrite`` anything but an earlier teacher
  (:func:`dfkd_jax.core.workdir.check_output`): never a run directory or what holds one.

  Raises:
    FileExistsError: it exists and ``overwrite`` is false.
    dfkd_jax.core.workdir.OutputError: it must not be written (one line).
  """
  text = os.fspath(directory)
  if os.path.exists(text) and text.strip() and not overwrite:
    way = "--overwrite" if flag == "--out" else "overwrite=True"
    raise FileExistsError(f"teacher directory {os.path.abspath(text)} already exists; "
                          f"pass {way} to replace it")
  workdir_lib.check_output(text, flag, True, is_teacher_dir,
                           "teacher directory (teacher.json and variables/)")


def save_teacher(directory: str | os.PathLike, variables: Variables, meta: TeacherMeta,
                 overwrite: bool = False, flag: str = "teacher directory"
                 ) -> pathlib.Path:
  """Writes a teacher checkpoint atomically.

  Args:
    directory: the teacher directory to create.
    variables: ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` may be absent
      for networks without BatchNorm); other collections are dropped.
    meta: the metadata; ``meta.arch`` must be a registered classifier.
    overwrite: replace an existing teacher at ``directory`` (only a teacher:
      :func:`check_destination`).
    flag: how the user gave ``directory``, for the messages.

  Returns:
    The absolute teacher directory.

  Raises:
    FileExistsError: ``directory`` exists and ``overwrite`` is false.
    ValueError: unknown architecture, or variables not matching it; a ``directory``
      that must not be written (:class:`dfkd_jax.core.workdir.OutputError`).
  """
  distributed.filesystem_path(directory, flag)
  check_destination(directory, flag, overwrite)
  directory = pathlib.Path(directory).absolute()
  models.resolve(meta.arch, "classifier", "arch")
  module = models.get(meta.arch, num_classes=meta.num_classes,
                      input_shape=meta.input_shape, label="arch")
  to_save = {"params": flax.core.unfreeze(variables["params"]),
             "batch_stats": flax.core.unfreeze(variables.get("batch_stats", {}))}
  _check_variables(_abstract_variables(module, meta), to_save, meta.arch)
  to_save = jax.tree.map(jnp.asarray, to_save)

  def write_variables(staging: pathlib.Path) -> None:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / VARIABLES_DIR, to_save)
    checkpointer.wait_until_finished()
    checkpointer.close()

  return _write_atomically(directory, meta, write_variables)


def save_torch_teacher(directory: str | os.PathLike, state_dict: Mapping[str, Any],
                       meta: TeacherMeta, overwrite: bool = False) -> pathlib.Path:
  """Writes a PyTorch teacher (``meta.torch`` names its module) atomically.

  The ``state_dict`` is checked against the module (:func:`torch_module.teacher_of`)
  and stored with ``torch.save`` as ``state_dict.pt`` (read back with
  ``weights_only=True``: tensors only, nothing unpickled runs code).

  Raises:
    FileExistsError: ``directory`` exists and ``overwrite`` is false.
    ValueError: the module does not import or build, or the weights do not fit it.
    ModuleNotFoundError: torch or torchax is not installed.
  """
  directory = distributed.filesystem_path(directory, "teacher directory").absolute()
  if directory.exists() and not overwrite:
    raise FileExistsError(f"Teacher directory {directory} already exists; pass "
                          "overwrite=True to replace it")
  if not meta.torch:
    raise ValueError(f"meta.torch is {meta.torch!r}; name the module: "
                     "{'module': 'package.module:NAME', 'kwargs': {...}}")
  meta = dataclasses.replace(meta, torch={**meta.torch, "state_dict": TORCH_STATE_DICT})
  teacher = torch_module.teacher_of(meta.torch, label="--torch_module")
  torch_module.variables_from_state_dict(state_dict, teacher)  # Checks the fit.
  return _write_atomically(
      directory, meta,
      lambda staging: torch_module.save_state_dict(state_dict, staging / TORCH_STATE_DICT))


def _write_atomically(directory: pathlib.Path, meta: TeacherMeta, write) -> pathlib.Path:
  """Writes ``teacher.json`` and what ``write(staging)`` writes, then renames into place."""
  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-",
                                          dir=directory.parent))
  try:
    write(staging)
    with open(staging / META_FILE, "w") as f:
      json.dump(meta.to_json(), f, indent=2)
      f.flush()
      os.fsync(f.fileno())
    if directory.exists():  # overwrite: move the old teacher aside, then replace it.
      retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-",
                                              dir=directory.parent))
      os.rename(directory, retired / "teacher")
      os.rename(staging, directory)
      shutil.rmtree(retired, ignore_errors=True)
    else:
      os.rename(staging, directory)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
  return directory


def load_meta(directory: str | os.PathLike) -> TeacherMeta:
  """Reads ``teacher.json`` of a teacher directory.

  Raises:
    FileNotFoundError: no such directory or no ``teacher.json`` in it.
    ValueError: malformed metadata.
  """
  directory = distributed.filesystem_path(directory, "teacher directory")
  if not directory.is_dir():
    raise FileNotFoundError(f"Teacher directory {directory} does not exist")
  meta_path = directory / META_FILE
  if not meta_path.is_file():
    raise FileNotFoundError(f"{meta_path} not found: {directory} is not a teacher "
                            "checkpoint (write one with save_teacher)")
  try:
    with open(meta_path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
  return TeacherMeta.from_json(data)


def load_teacher(directory: str | os.PathLike
                 ) -> tuple[nn.Module, dict[str, Any], TeacherMeta]:
  """Loads a teacher written by :func:`save_teacher`.

  Args:
    directory: the teacher directory.

  Returns:
    ``(module, variables, meta)``: the unbound classifier, ``{"params",
    "batch_stats"}`` as device arrays, and the metadata.

  Raises:
    FileNotFoundError: missing directory, ``teacher.json`` or ``variables/``.
    ValueError: unknown architecture or arrays not matching it.
  """
  directory = pathlib.Path(directory).absolute()
  meta = load_meta(directory)
  if meta.torch is not None:
    return _load_torch_teacher(directory, meta)
  label = f"{directory / META_FILE}: arch"
  models.resolve(meta.arch, "classifier", label)
  module = models.get(meta.arch, num_classes=meta.num_classes,
                      input_shape=meta.input_shape, label=label)
  variables_path = directory / VARIABLES_DIR
  if not variables_path.is_dir():
    raise FileNotFoundError(f"{variables_path} not found: incomplete teacher checkpoint")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      target = None
      if jax.process_count() > 1:
        # Without a target orbax refuses a checkpoint saved by another process count;
        # every process reads the whole (small) teacher onto its first local device.
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
            checkpointer.metadata(variables_path).item_metadata.tree)
      restored = checkpointer.restore(variables_path, target)
  except Exception as e:  # pylint: disable=broad-except
    # orbax, tensorstore and json each fail in their own way (many lines); one line.
    raise ValueError(_damaged_teacher_message(directory, meta, e)) from None
  variables = {"params": restored.get("params", {}) or {},
               "batch_stats": restored.get("batch_stats", {}) or {}}
  _check_variables(_abstract_variables(module, meta), variables, meta.arch)
  return module, variables, meta

def _load_torch_teacher(directory: pathlib.Path, meta: TeacherMeta
                        ) -> tuple[nn.Module, dict[str, Any], TeacherMeta]:
  """:func:`load_teacher` of a PyTorch teacher: imports the module, checks the weights."""
  label = f"{directory / META_FILE}: torch.module"
  teacher = torch_module.teacher_of(meta.torch, label=label)
  path = directory / meta.torch.get("state_dict", TORCH_STATE_DICT)
  state_dict = torch_module.load_state_dict(path)
  variables = torch_module.variables_from_state_dict(state_dict, teacher)
  torch_module.check_runs(teacher, variables, meta.input_shape, meta.num_classes,
                          label, "convert the teacher again with the right "
                          "--torch_kwargs")
  return teacher, variables, meta


def _damaged_teacher_message(directory: pathlib.Path, meta: TeacherMeta,
                             error: Exception) -> str:
  """One line for a teacher whose ``variables/`` cannot be read: which file, the fix."""
  damaged = None
  for path in sorted((directory / VARIABLES_DIR).rglob("*")):
    if path.is_file() and (path.name.startswith("_") or path.parent.name
                           == "array_metadatas"):  # orbax's JSON files.
      try:
        json.loads(path.read_bytes())
      except (ValueError, OSError):
        damaged = path
        break
  what = (f"{damaged} is not valid JSON" if damaged else
          f"the arrays under {directory / VARIABLES_DIR} cannot be read (orbax: "
          f"{type(error).__name__}; a file is truncated or corrupt)")
  return (f"the teacher at {directory} is damaged: {what}. Make it again: "
          f"`python -m dfkd_jax.train_teacher --config=configs/teacher/{meta.dataset}.py "
          f"--workdir={directory} --config.overwrite=True` (a converted teacher: rerun "
          "`python -m dfkd_jax.convert ... --overwrite`)")

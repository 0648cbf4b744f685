"""Trains a teacher classifier on real data and saves it as a teacher checkpoint.

The logic of ``python -m dfkd_jax.train_teacher``; its usage, flags and outputs are in
:mod:`dfkd_jax.train_teacher` (what ``--help`` shows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dfkd_jax import models
from dfkd_jax.data import augment
from dfkd_jax.data import datasets as data
from dfkd_jax.math import optimizers
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import distributed
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import evaluation
from dfkd_jax.run import progress
from dfkd_jax.run import run_config

State = dict[str, Any]  # {"params", "batch_stats", "opt_state"}.

# Teachers (and students) of the 32x32 colour datasets, ``configs/teacher/NAME.py:MODEL``.
COLOUR_MODELS = ("resnet34", "resnet18", "wrn40_2", "wrn16_2", "wrn40_1", "wrn16_1")
GREY_MODELS = ("lenet5", "lenet5_bn")  # 32x32x1 teachers (MNIST, Fashion-MNIST).


def default_config() -> ml_collections.ConfigDict:
  """Every field of a teacher config, set to the peers' CIFAR recipe.

  SGD (lr 0.1, momentum 0.9, coupled weight decay 5e-4), batch 128, 200 epochs, cosine
  decay per step, the dataset's standard augmentation. The files in ``configs/teacher/``
  start from
  this and set the dataset, the model and what their recipe changes.
  """
  config = ml_collections.ConfigDict()
  config.dataset = ""  # A built-in id, or your own folder:PATH / npz:FILE.
  config.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.image_size = 0  # folder:/npz: datasets: resize images to SxS; 0 = native size.
  # Input normalisation recorded in the teacher; empty: the dataset's constants, or for
  # folder:/npz: datasets the per-channel mean/std of the train split.
  config.mean = ()
  config.std = ()
  config.model = ""
  config.num_epochs = 200
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.optimizer = "sgd"  # "sgd" | "adam".
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.lr_schedule = "cosine"  # "cosine" | "step" | "constant".
  config.lr_decay_epochs = (80, 120)  # Used by lr_schedule="step" only.
  config.lr_decay_factor = 0.1
  config.warmup_epochs = 0.0  # Linear warm-up from 0 before the schedule.
  config.label_smoothing = 0.0  # Cross-entropy to (1 - s) one-hot + s / classes.
  # Training augmentation, on device in the jitted step (dfkd_jax.data.augment):
  # augment=False turns it off; else random crops of the images padded by crop_padding
  # pixels (-1: the dataset's, 4 for CIFAR/SVHN/Tiny-ImageNet, none for MNIST and for
  # folder:/npz: data) and horizontal flips (hflip "auto": the dataset's, "on", "off").
  config.augment = True
  config.crop_padding = -1
  config.hflip = "auto"
  config.seed = 0
  config.overwrite = False  # Replace an existing teacher in the workdir.
  return config


def adam_config(config: ml_collections.ConfigDict,
                learning_rate: float) -> ml_collections.ConfigDict:
  """Switches ``config`` to DAFL's LeNet recipe: Adam, no weight decay, no augmentation."""
  config.optimizer = "adam"
  config.learning_rate = learning_rate
  config.momentum = 0.0
  config.weight_decay = 0.0
  config.lr_decay_epochs = ()
  config.augment = False
  return config


def model_from_arg(arg: str | None, config_file: str, default: str = "resnet34",
                   valid: tuple[str, ...] = COLOUR_MODELS) -> str:
  """The architecture named after the config file's colon (``NAME`` or ``model=NAME``).

  Raises:
    ValueError: ``arg`` is not one of ``valid``.
  """
  return run_config.parse_arg(arg, key="model", default=default, valid=valid,
                              config_file=config_file)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimizer and learning-rate schedule of ``config`` (:func:`optimizers.classifier`).

  Fields: ``optimizer`` (``sgd`` | ``adam``), ``learning_rate``, ``momentum``,
  ``nesterov``, ``weight_decay`` (added to the gradient, as PyTorch's SGD/Adam do),
  ``lr_schedule`` (``constant`` | ``cosine`` | ``step``), ``lr_decay_epochs`` and
  ``lr_decay_factor`` (step schedule), ``num_epochs``.
  """
  return optimizers.classifier(
      optimizer=config.optimizer, learning_rate=config.learning_rate,
      momentum=config.momentum, nesterov=config.nesterov,
      weight_decay=config.weight_decay, schedule=config.lr_schedule,
      num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
      decay_epochs=config.lr_decay_epochs, decay_factor=config.lr_decay_factor,
      warmup_epochs=config.warmup_epochs)


HFLIP = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What the training step does to each batch (:func:`augment.crop_and_flip`)."""
  crop_padding: int = 0
  hflip: bool = False
  pad_value: tuple[float, ...] = (0.0,)

  def describe(self) -> str:
    parts = ([f"random crops of {self.crop_padding}-pixel-padded images"]
             if self.crop_padding else []) + (["horizontal flips"] if self.hflip else [])
    return " + ".join(parts) or "none"


def resolve_augmentation(config: ml_collections.ConfigDict, spec: data.DatasetSpec,
                         normalization: tuple[tuple[float, ...], tuple[float, ...]]
                         ) -> Augmentation:
  """The augmentation of ``config`` (checked by :func:`check_fields`) for a dataset of
  ``spec`` (see :func:`default_config`)."""
  if not config.augment:
    return Augmentation()
  padding = (4 if spec.crop else 0) if config.crop_padding == -1 else config.crop_padding
  flip = spec.flip if config.hflip == "auto" else config.hflip == "on"
  if not (padding or flip):
    return Augmentation()
  return Augmentation(padding, flip, augment.black_level(*normalization))


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, naming the field and the fix, on an empty dataset or a bad
  augmentation or label smoothing (before anything is loaded)."""
  if not config.dataset:
    raise ValueError("config.dataset is empty; set --config.dataset=NAME (a built-in "
                     "dataset) or folder:PATH / npz:FILE (your own data)")
  if config.hflip not in HFLIP:
    raise ValueError(f"config.hflip={config.hflip!r}; valid: {', '.join(HFLIP)}")
  if config.crop_padding < -1:
    raise ValueError(f"config.crop_padding={config.crop_padding} must be >= 0 (pixels), "
                     "or -1 for the dataset's")
  if not 0 <= config.label_smoothing < 1:
    raise ValueError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1)")


def make_train_step(module: flax.linen.Module, optimizer: optax.GradientTransformation,
                    augmentation: Augmentation = Augmentation(),
                    label_smoothing: float = 0.0
                    ) -> Callable[[State, jax.Array, jax.Array, jax.Array],
                                  tuple[State, jax.Array]]:
  """A jitted ``(state, images, labels, key) -> (state, loss)`` cross-entropy step.

  ``key`` draws the batch's augmentation (unused without one); the one-hot targets are
  smoothed by ``label_smoothing`` (Szegedy et al. 2016, Sec. 7).
  """

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = module.apply({"params": params, "batch_stats": batch_stats},
                                   images, train=True, mutable=["batch_stats"])
    if label_smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                    label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
    else:  # The integer-label form: teachers trained before smoothing existed, exactly.
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates.get("batch_stats", batch_stats)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, images, labels, key):
    if augmentation.crop_padding or augmentation.hflip:
      images = augment.crop_and_flip(key, images, padding=augmentation.crop_padding,
                                     flip=augmentation.hflip,
                                     pad_value=augmentation.pad_value)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], images, labels)
    params, opt_state = optimizers.apply(optimizer, grads, state["opt_state"],
                                         state["params"])
    return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

  return train_step


def _check_workdir(workdir: pathlib.Path, overwrite: bool, text: str | None = None
                   ) -> None:
  """Refuses (before any training) to replace a teacher or a non-empty folder, and
  with ``overwrite`` anything but a teacher (:func:`dfkd_jax.models.teacher.check_destination`:
  never a run directory, the current directory or a folder above it)."""
  if workdir.exists() and not overwrite and (
      not workdir.is_dir() or any(workdir.iterdir())):
    what = ("a teacher" if (workdir / teacher_lib.META_FILE).is_file()
            else "other files")
    raise FileExistsError(f"workdir {workdir} already holds {what}; choose another "
                          "--workdir or pass --config.overwrite=True to replace it")
  teacher_lib.check_destination(str(workdir) if text is None else text, "--workdir",
                                True)


def train_and_save(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                   log: Callable[[str], None] = print) -> teacher_lib.TeacherMeta:
  """Trains the teacher described by ``config`` and saves it into ``workdir``.

  Args:
    config: a teacher config (see ``configs/teacher/``).
    workdir: the teacher directory to create.
    log: where progress lines go.

  Returns:
    The saved teacher's metadata (with its test accuracy).

  Raises:
    ValueError: bad config values (dataset, model, optimizer, ...), with the valid ones.
    FileNotFoundError: dataset not prepared (the message says how).
    FileExistsError: ``workdir`` already holds a teacher and ``overwrite`` is false.
  """
  text = os.fspath(workdir)
  workdir = distributed.filesystem_path(workdir, "workdir").absolute()
  _check_workdir(workdir, config.overwrite, text)
  check_fields(config)
  dataset = data.get_dataset(config.dataset)
  spec = dataset.spec
  data_shape = spec.stored_shape(config.image_size)
  channels = data_shape[2]
  models.resolve(config.model, "classifier", "config.model")
  input_shape = models.input_shape(config.model, channels=channels, data_shape=data_shape)
  given = _given_normalization(config, spec, channels)
  meta = teacher_lib.TeacherMeta(  # Normalisation from the train split: filled below.
      arch=config.model, num_classes=spec.num_classes, input_shape=input_shape,
      mean=given[0] if given else (0.0,) * channels,
      std=given[1] if given else (1.0,) * channels, dataset=dataset.id,
      source="train_teacher", class_names=getattr(spec, "class_names", ()))
  data.check_teacher_fits(meta, dataset.id, config.image_size)
  module = models.get(config.model, num_classes=spec.num_classes,
                      input_shape=input_shape, label="config.model")

  start = time.time()
  data_dir = config.data_dir or None
  train_split = data.load_split(dataset.id, "train", data_dir=data_dir,
                                image_size=config.image_size, log=log)
  test_split = data.load_split(dataset.id, "test", data_dir=data_dir,
                               image_size=config.image_size, log=log)
  if not given:
    from dfkd_jax.data import file_datasets  # pylint: disable=g-import-not-at-top
    mean, std = file_datasets.normalization(train_split)
    meta = dataclasses.replace(meta, mean=mean, std=std)
  normalization = (meta.mean, meta.std)
  log(f"{dataset.id}: {len(train_split.labels)} train / {len(test_split.labels)} test "
      f"examples loaded in {time.time() - start:.1f}s; model {config.model} "
      f"input {input_shape}, normalisation mean {list(meta.mean)} std {list(meta.std)}")

  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, "config.batch_size", mesh)
  parallel.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)

  steps_per_epoch = len(train_split.labels) // config.batch_size
  optimizer = make_optimizer(config, steps_per_epoch)
  # Jitted: eager init dispatches (and compiles) every op separately, which is slower.
  variables = jax.jit(functools.partial(module.init, train=False))(
      jax.random.key(config.seed), jnp.zeros((1, *input_shape), jnp.float32))
  state = {"params": variables["params"],
           "batch_stats": variables.get("batch_stats", {}),
           "opt_state": optimizer.init(variables["params"])}
  state = parallel.replicate(state, mesh)
  augmentation = resolve_augmentation(config, spec, normalization)
  log(f"augmentation: {augmentation.describe()}")
  train_step = make_train_step(module, optimizer, augmentation, config.label_smoothing)
  augment_key = jax.random.key(config.seed + 1)  # The init's is key(seed).
  eval_step = evaluation.make_eval_step(module)

  accuracy = 0.0
  for epoch in range(config.num_epochs):
    epoch_start = time.time()
    losses = []
    beat = (progress.Heartbeat(log, "in epoch 1", "epoch 1 compiles the training step "
                               "first ...", every=10.0) if epoch == 0
            else contextlib.nullcontext())
    with beat:
      for batch in data.train_batches(train_split, dataset.id,
                                      batch_size=config.batch_size, seed=config.seed,
                                      epoch=epoch, image_shape=input_shape,
                                      normalization=normalization):
        images, labels = parallel.global_batch(
            lambda rows, b=batch: (b.images[rows], b.labels[rows]), config.batch_size,
            mesh)
        key = jax.random.fold_in(augment_key, epoch * steps_per_epoch + len(losses))
        state, loss = train_step(state, images, labels, key)
        losses.append(loss)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    accuracy = evaluation.accuracy(eval_step, variables, test_split, dataset.id,
                                   image_shape=input_shape,
                                   normalization=normalization,
                                   batch_size=config.eval_batch_size, mesh=mesh)
    log(f"epoch {epoch + 1}/{config.num_epochs}: train loss "
        f"{float(jnp.mean(jnp.stack(losses))):.4f}, test accuracy {accuracy:.2f}% "
        f"({time.time() - epoch_start:.1f}s)")

  meta = dataclasses.replace(meta, test_accuracy=round(accuracy, 4))
  variables = jax.device_get({"params": state["params"],
                              "batch_stats": state["batch_stats"]})
  path = teacher_lib.save_teacher(text, variables, meta, flag="--workdir",
                                  overwrite=config.overwrite or workdir.exists())
  log(f"saved teacher {config.model} ({accuracy:.2f}% test accuracy) to {path} "
      f"after {time.time() - start:.1f}s")
  return meta


def _given_normalization(config: ml_collections.ConfigDict, spec: data.DatasetSpec,
                         channels: int) -> tuple[tuple[float, ...], ...] | None:
  """``(mean, std)`` of the config, else the dataset's; ``None``: from the train split.

  Raises:
    ValueError: only one of ``config.mean``/``config.std`` set, or a wrong length.
  """
  mean, std = tuple(config.mean), tuple(config.std)
  if mean or std:
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
      raise ValueError(f"config.mean={list(mean)} and config.std={list(std)} need "
                       f"{channels} value(s) each (one per channel), std > 0; or leave "
                       "both empty")
    return mean, std
  return (spec.mean, spec.std) if spec.mean else None


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """The flags, a bad config file, argument or field as one line, as ``train`` does
  (:func:`dfkd_jax.run.run_config.parse_flags`)."""
  return run_config.parse_flags(
      argv, fields="a teacher config's fields are those of "
      "dfkd_jax.run.train_teacher.default_config(), see docs/config_fields.md")

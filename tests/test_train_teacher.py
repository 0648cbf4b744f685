"""Tests of dfkd_jax.train_teacher on the embedded digits dataset."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from dfkd_jax import models
from dfkd_jax.core import workdir as workdir_lib
from dfkd_jax.data import datasets as data
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import evaluation
from dfkd_jax.run import train_teacher

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs" / "teacher"


def _config_module(name: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f"{name}_config", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _digits_config(**overrides):
  config = _config_module("digits").get_config()
  config.update(overrides)
  return config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_teacher_configs_are_complete_and_valid(path):
  module = _config_module(path.stem)
  config = module.get_config()
  assert list(config.to_dict()) == list(train_teacher.default_config().to_dict())
  if config.dataset:
    assert config.dataset.split(":")[0] in data.SPECS
  else:  # A folder the user unpacks: the docstring's command says which.
    assert "--config.dataset=folder:DATA" in module.__doc__
  assert models.is_classifier(config.model)
  assert config.optimizer in ("sgd", "adam") and config.learning_rate > 0
  if "model" in module.get_config.__code__.co_varnames:  # configs/teacher/X.py:MODEL
    family = (train_teacher.GREY_MODELS if config.model in train_teacher.GREY_MODELS
              else train_teacher.COLOUR_MODELS)
    assert config.model == family[0]
    assert module.get_config(family[-1]).model == family[-1]
    with pytest.raises(ValueError, match=rf"'resnet50' for {path.name}; valid: {family[0]}"):
      module.get_config("resnet50")


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("teachers") / "digits"
  meta = train_teacher.train_and_save(_digits_config(num_epochs=8), workdir,
                                      log=lambda line: None)
  return workdir, meta


def test_digits_teacher_trains_and_saves(digits_teacher):
  workdir, meta = digits_teacher
  assert meta.test_accuracy >= 95.0
  module, variables, loaded = teacher_lib.load_teacher(workdir)
  assert loaded == meta
  assert (loaded.arch, loaded.dataset, loaded.num_classes) == ("digits_cnn", "digits", 10)
  assert loaded.input_shape == (8, 8, 1) and loaded.mean == data.SPECS["digits"].mean
  # The saved variables reproduce the recorded accuracy exactly.
  split = data.load_split("digits", "test")
  accuracy = evaluation.accuracy(
      evaluation.make_eval_step(module), variables, split, "digits",
      image_shape=(8, 8, 1), normalization=(loaded.mean, loaded.std), batch_size=128,
      mesh=parallel.make_mesh(jax.devices()[:1]))
  assert accuracy == pytest.approx(meta.test_accuracy, abs=1e-3)


def test_existing_teacher_or_files_are_refused_unless_overwrite(digits_teacher, tmp_path):
  workdir, meta = digits_teacher
  before = (workdir / teacher_lib.META_FILE).read_text()
  with pytest.raises(FileExistsError, match=r"already holds a teacher.*overwrite"):
    train_teacher.train_and_save(_digits_config(), workdir, log=lambda line: None)
  assert (workdir / teacher_lib.META_FILE).read_text() == before
  copy = tmp_path / "digits"
  copy.mkdir()
  (copy / "notes.txt").write_text("not a teacher")
  with pytest.raises(FileExistsError, match=r"other files"):
    train_teacher.train_and_save(_digits_config(), copy, log=lambda line: None)
  # With overwrite the check passes for a teacher (save_teacher then replaces it
  # atomically; not retrained here to keep the suite fast), and never for other files
  # (issue 37: --overwrite replaces only an earlier output of the same kind).
  train_teacher._check_workdir(workdir, overwrite=True)
  with pytest.raises(workdir_lib.OutputError,
                     match=r"is not an earlier teacher directory"):
    train_teacher._check_workdir(copy, overwrite=True)
  assert (copy / "notes.txt").read_text() == "not a teacher"


@pytest.mark.parametrize("overrides,match", [
    (dict(model="resnet99"), r"config.model='resnet99' is not a registered classifier"),
    (dict(model="lenet5"), r"lenet5.*\(32, 32, 1\).*'digits'"),
    (dict(dataset="cifar10", model="lenet5"), r"lenet5.*1-channel"),
    (dict(optimizer="rmsprop"), r"unknown optimizer 'rmsprop'"),
    (dict(lr_schedule="linear"), r"unknown lr_schedule 'linear'"),
])
def test_bad_config_raises_value_error(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train_teacher.train_and_save(_digits_config(**overrides), tmp_path / "t",
                                 log=lambda line: None)
  assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("overrides,match", [
    (dict(dataset=""), r"config.dataset is empty; set --config.dataset=NAME"),
    (dict(hflip="yes"), r"config.hflip='yes'; valid: auto, on, off"),
    (dict(crop_padding=-2), r"config.crop_padding=-2 must be >= 0"),
    (dict(label_smoothing=1.0), r"config.label_smoothing=1.0 must be in \[0, 1\)"),
])
def test_bad_fields_are_refused_before_any_data_is_loaded(tmp_path, overrides, match):
  lines = []
  with pytest.raises(ValueError, match=match):
    train_teacher.train_and_save(_digits_config(**overrides), tmp_path / "t",
                                 log=lines.append)
  assert not lines and not (tmp_path / "t").exists()


@pytest.mark.parametrize("dataset, overrides, expected", [
    ("cifar10", {}, (4, True)),  # The dataset's standard recipe.
    ("svhn_cropped", {}, (4, False)),
    ("mnist", {}, (0, False)),
    ("cifar10", dict(augment=False), (0, False)),
    ("cifar10", dict(crop_padding=2, hflip="off"), (2, False)),
    ("folder:DIR", {}, (0, False)),  # Own data: none unless asked for (flips can
    ("folder:DIR", dict(crop_padding=4, hflip="on"), (4, True)),  # hurt digits, text).
])
def test_augmentation_follows_the_dataset_unless_set(dataset, overrides, expected):
  spec = (data.SPECS[dataset] if ":" not in dataset
          else data.DatasetSpec(dataset, 2, (8, 8, 3), (), ()))
  config = train_teacher.default_config()
  config.update(overrides)
  got = train_teacher.resolve_augmentation(config, spec, ((0.5,) * 3, (0.25,) * 3))
  assert (got.crop_padding, got.hflip) == expected
  assert got.pad_value == ((-2.0,) * 3 if expected != (0, False) else (0.0,))


def test_train_step_augments_per_key_and_reproducibly():
  module = models.get("digits_cnn", num_classes=10, input_shape=(8, 8, 1), label="m")
  variables = module.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
  optimizer = train_teacher.make_optimizer(_digits_config(), steps_per_epoch=1)
  images = np.asarray(jax.random.normal(jax.random.key(1), (32, 8, 8, 1)))
  labels = np.arange(32, dtype=np.int32) % 10

  def loss(augmentation, key):
    step = train_teacher.make_train_step(module, optimizer, augmentation)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": optimizer.init(variables["params"])}
    return float(step(jax.tree.map(np.array, state), images, labels,
                      jax.random.key(key))[1])

  crop = train_teacher.Augmentation(2, True, (0.0,))
  plain = loss(train_teacher.Augmentation(), 0)
  assert plain == loss(train_teacher.Augmentation(), 7)  # No augmentation: key unused.
  assert loss(crop, 0) == loss(crop, 0)
  assert len({plain, loss(crop, 0), loss(crop, 1)}) == 3


def test_optimizer_schedules():
  config = _digits_config(optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                          lr_schedule="step", lr_decay_epochs=(1, 2),
                          learning_rate=0.1, num_epochs=3)
  optimizer = train_teacher.make_optimizer(config, steps_per_epoch=2)
  params = {"w": np.ones(3, np.float32)}
  state = optimizer.init(params)
  sizes = []
  for _ in range(6):
    updates, state = optimizer.update({"w": np.zeros(3, np.float32)}, state, params)
    sizes.append(float(-updates["w"][0]))
  # Zero gradient: the step is lr * (wd * w), with momentum accumulating.
  assert sizes[0] == pytest.approx(0.1 * 5e-4)
  assert sizes[2] < sizes[1] and sizes[4] < sizes[3]


def test_cli_refuses_existing_teacher_without_traceback(digits_teacher):
  workdir, _ = digits_teacher
  result = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train_teacher",
       f"--config={CONFIGS / 'digits.py'}", f"--workdir={workdir}",
       "--config.num_epochs=1"],
      capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
  assert result.returncode != 0
  assert "already holds a teacher" in result.stderr
  assert "Traceback" not in result.stderr


# (command-line arguments after --config=configs/teacher/, the one line's pattern).
BAD_CLI_CONFIGS = [
    (["digits.py", "--config.num_epochz=3"], r"^error: in --config: 'num_epochz' Did you "
     r"mean \"num_epochs\" instead of \"num_epochz\"\? \(a teacher config's fields are "
     r"those of dfkd_jax.run.train_teacher.default_config\(\)"),
    (["digits.py:resnet18"], r"^error: --config=.*digits.py:resnet18: this config file "
     r"takes no ':ARG' \(only --config.FIELD=VALUE overrides\); see --help$"),
    (["cifar10.py:resnet99"], r"^error: --config=.*cifar10.py:resnet99: unknown model "
     r"'resnet99' for cifar10.py; valid: resnet34, resnet18, .*; see --help$"),
    (["cifar10.py:arch=resnet18"], r"^error: --config=.*: config argument 'arch=resnet18'"
     r": the accepted forms are :MODEL and :model=MODEL"),
]


@pytest.mark.parametrize("args, match", BAD_CLI_CONFIGS,
                         ids=["misspelt_field", "argument_to_none", "unknown_model",
                              "other_key"])
def test_cli_bad_config_field_or_argument_is_one_line_as_train_gives(args, match,
                                                                      tmp_path):
  config, *overrides = args
  result = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train_teacher", f"--config={CONFIGS / config}",
       f"--workdir={tmp_path / 'teacher'}", *overrides],
      capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and re.search(match, lines[0]), result.stderr
  assert not (tmp_path / "teacher").exists()

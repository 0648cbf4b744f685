"""Every config file under configs/ loads and validates, with every argument it documents.

Distillation configs pass ``experiment.validate`` on the default mesh (no teacher is
needed for that); teacher configs build their optimizer. The commands quoted in each
docstring name files that exist and arguments that load.
"""

import ast
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

from dfkd_jax import models
from dfkd_jax.data import datasets as data
from dfkd_jax.methods import presets as methods
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import experiment
from dfkd_jax.run import train_teacher

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.relative_to(REPO).as_posix()
                      for p in (REPO / "configs").rglob("*.py"))
RECIPES = [p for p in CONFIG_FILES if p.startswith("configs/recipes/")]
# `--config=configs/NAME.py` or `--config=configs/NAME.py:ARG` in a docstring.
DOCUMENTED = re.compile(r"--config=(configs/[\w/]+\.py)(?::([\w=]+))?")


def docstring(path: str) -> str:
  return ast.get_docstring(ast.parse((REPO / path).read_text())) or ""


def is_teacher_config(config) -> bool:
  return "method" not in config


def load(path: str):
  return experiment.load_config_file(str(REPO / path))


DISTILLATION = [p for p in CONFIG_FILES if not is_teacher_config(load(p))]


def with_dataset(config, path: str):
  """``config``; one that leaves the dataset to the user (their unpacked folder, which
  its docstring's command passes) gets CIFAR-10's spec, which needs no files here."""
  if not config.dataset:
    assert "--config.dataset=folder:DATA" in docstring(path.partition(":")[0]), path
    config.dataset = "cifar10"
  return config


def documented_commands() -> list[str]:
  found = set()
  for path in CONFIG_FILES:
    for file, arg in DOCUMENTED.findall(docstring(path)):
      found.add(f"{file}:{arg}" if arg else file)
  return sorted(found)


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh()


def check(config_path: str, mesh) -> None:
  config = experiment.load_config_file(str(REPO / config_path))
  if is_teacher_config(config):
    assert list(config) == list(train_teacher.default_config()), config_path
    assert models.is_classifier(config.model)
    train_teacher.make_optimizer(config, steps_per_epoch=10)
  else:
    if not config.dataset:
      with pytest.raises(ValueError, match=r"config.dataset is empty; set "
                         r"--config.dataset=NAME"):
        experiment.validate(config, mesh)
    experiment.validate(with_dataset(config, config_path), mesh)


def test_config_files_are_found():
  # The glob must see the distillation, teacher and recipe configs.
  assert "configs/cifar10.py" in CONFIG_FILES
  assert "configs/teacher/mnist.py" in CONFIG_FILES
  assert len(RECIPES) >= 5, RECIPES


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_loads_and_validates(path, mesh):
  check(path, mesh)


@pytest.mark.parametrize("command", documented_commands())
def test_every_documented_command_loads_and_validates(command, mesh):
  path = command.partition(":")[0]
  assert (REPO / path).is_file(), f"a docstring names {path}, which does not exist"
  check(command, mesh)


@pytest.mark.parametrize("path", DISTILLATION)
def test_every_method_validates_in_every_distillation_config(path, mesh):
  for name in methods.METHODS:
    experiment.validate(with_dataset(
        experiment.load_config_file(f"{REPO / path}:{name}"), path), mesh)


@pytest.mark.parametrize("path", DISTILLATION)
def test_every_config_builds_its_generator_and_student(path):
  """Shapes only (no teacher, no compile): the models exist for the dataset's images."""
  config = with_dataset(load(path), path)
  spec = data.get_dataset(config.dataset).spec
  shape = models.input_shape(config.student, channels=spec.image_shape[-1])
  accepted = set(models.options(config.generator))
  if path in RECIPES:  # A recipe sets no option its generator would ignore.
    assert set(config.generator_options) <= accepted, dict(config.generator_options)
  generator = models.get(config.generator, num_classes=spec.num_classes,
                         latent_dim=config.latent_dim, image_shape=shape,
                         **{k: v for k, v in config.generator_options.items()
                            if k in accepted})
  student = models.get(config.student, num_classes=spec.num_classes, input_shape=shape)
  key = jax.random.key(0)
  z = jax.ShapeDtypeStruct((2, config.latent_dim), jnp.float32)
  variables = jax.eval_shape(lambda k, z: generator.init(k, z, train=False), key, z)
  images = jax.eval_shape(lambda v, z: generator.apply(v, z, train=False), variables, z)
  assert images.shape == (2, *shape)
  logits = jax.eval_shape(lambda k, x: student.init_with_output(k, x)[0], key, images)
  assert logits.shape == (2, spec.num_classes)


@pytest.mark.parametrize("path", [p for p in DISTILLATION if p.count("/") == 1])
def test_protocol_configs_keep_the_meta_step_at_the_student_learning_rate(path):
  """README rule: alpha at 9-10x the student's learning rate cost 8-47 points."""
  config = load(path)
  assert config.meta.alpha == config.student_optimizer.learning_rate, (
      f"{path}: meta.alpha={config.meta.alpha}, student learning rate "
      f"{config.student_optimizer.learning_rate}")


@pytest.mark.parametrize("path", RECIPES)
def test_recipes_quote_a_published_number_and_its_source(path):
  text = docstring(path)
  assert re.search(r"(Published|reports)[^%]{0,200}\d%", text), path
  # The paper's table, or the official README's table of the published runs.
  assert re.search(r"Table \d|README's [\w-]+ table", text), path
  assert DOCUMENTED.search(text) or "train_teacher" in text, path


def _fields(config, prefix=""):
  out = set()
  for key, value in config.items():
    out |= (_fields(value, f"{prefix}{key}.") if hasattr(value, "items")
            else {f"{prefix}{key}"})
  return out


PROTOCOL = [p for p in DISTILLATION if p.count("/") == 1]


def test_protocol_configs_take_the_same_overrides():
  """Issue 26, item 18: e.g. --config.generator_options.base_width=32 in every one."""
  fields = {path: _fields(load(path)) for path in PROTOCOL}
  reference = fields["configs/mnist.py"]
  assert "generator_options.base_width" in reference
  for path, names in fields.items():
    assert names == reference, (path, names ^ reference)


@pytest.mark.parametrize("path", PROTOCOL)
def test_protocol_configs_say_which_values_were_measured(path):
  assert re.search(r"\bMeasured( here)?[: ]", docstring(path)), path

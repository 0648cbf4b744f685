"""Your own Flax models: `package.module:Name` import paths and `models.register`.

The models are those of `tests/own_models.py`, named by import path as a user's package
would be (`own_models:TinyNet`). A teacher of that architecture is trained by
`train_teacher` and distilled into a student and with a generator of the same module;
every broken contract is one line, raised before anything compiles.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dfkd_jax
import own_models
from dfkd_jax import models
from dfkd_jax.data import datasets as data
from dfkd_jax.interop import export
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import experiment
from dfkd_jax.run import run_config
from dfkd_jax.run import train_teacher
from dfkd_jax.run import trainer
from test_trainer import (  # pylint: disable=unused-import
    REPO, cli_args, teacher_dir, tiny_config)

TESTS = pathlib.Path(__file__).resolve().parent
DIGITS = (8, 8, 1)


def test_an_import_path_builds_the_class_or_the_factory_with_its_kind():
  net = models.get("own_models:TinyNet", num_classes=7, input_shape=DIGITS)
  assert isinstance(net, own_models.TinyNet) and net.num_classes == 7
  small = models.get("own_models:tiny_net", num_classes=3, input_shape=DIGITS)
  assert isinstance(small, own_models.TinyNet)
  assert (small.num_classes, small.width) == (3, 8)
  x = jax.ShapeDtypeStruct((5, *DIGITS), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)
  logits, features = jax.eval_shape(
      lambda v, x: net.apply(v, x, features=True), variables, x)
  assert logits.shape == (5, 7) and len(features.bn_moments) == 2
  assert models.is_classifier("own_models:TinyNet")
  assert models.input_shape("own_models:TinyNet", data_shape=(28, 28, 1)) == (28, 28, 1)
  assert models.resolve("own_models:TinyGenerator").kind == "generator"
  assert models.options("own_models:TinyGenerator") == ("image_shape", "latent_dim")
  assert models.output_range("own_models:TinyGenerator") == "normalized"
  generator = models.get("own_models:TinyGenerator", latent_dim=4, image_shape=DIGITS)
  z = jax.ShapeDtypeStruct((2, 4), jnp.float32)
  images = jax.eval_shape(
      lambda z: generator.apply(generator.init(jax.random.key(0), z), z, train=False), z)
  assert images.shape == (2, *DIGITS)


def test_register_names_a_model_like_the_zoos(monkeypatch):
  monkeypatch.setattr(models.MODELS, "_entries", dict(models.MODELS.items()))
  models.register("any_size", own_models.TinyNet)  # Listed nowhere by resolution.
  entry = models.register("tiny_own", own_models.TinyNet, input_shape=(8, 8, None))
  assert entry.kind == "classifier" and entry.check_contract
  assert "tiny_own" in models.names("classifier")
  assert "tiny_own" not in models.names("generator")
  assert models.input_shape("tiny_own") == (8, 8, 3)
  assert isinstance(models.get("tiny_own", num_classes=2, input_shape=DIGITS),
                    own_models.TinyNet)
  assert models.input_shape("any_size", data_shape=(5, 6, 2)) == (5, 6, 2)
  with pytest.raises(ValueError, match=r"'tiny_own' takes input_shape \(8, 8, None\) "
                     r"\(None = any channels\), not \(16, 16, 1\); classifiers for this "
                     r"resolution: none"):
    models.get("tiny_own", input_shape=(16, 16, 1))
  with pytest.raises(ValueError, match="model 'tiny_own' is already registered"):
    models.register("tiny_own", own_models.TinyNet)
  models.register("bad", own_models.WrongLogits)  # Checked when built on a shape.
  with pytest.raises(ValueError, match=r"model='bad': model\(x, train=True\) on a dummy "
                     r"input \[2, 8, 8, 1\] returned \(2, 3\), not logits \(2, 2\)"):
    models.get("bad", num_classes=2, input_shape=DIGITS)
  with pytest.raises(ValueError, match=r"use a plain name without ':'"):
    models.register("own_models:TinyNet", own_models.TinyNet)


# (config field, value, the one line's pattern); every line also names the value.
BAD_MODELS = [
    ("student", "no_such_package.nets:Net", r"cannot import module "
     r"'no_such_package.nets' \(ModuleNotFoundError: .*\); put the folder that holds it "
     r"on PYTHONPATH"),
    ("student", "own_models:Missing", r"module 'own_models' has no attribute 'Missing'; "
     r"it has: .*TinyNet"),
    ("student", "own_models:PlainClass", r"is the class PlainClass, not a "
     r"flax.linen.Module subclass; pass a Linen module class or a factory"),
    ("student", "own_models:NOT_CALLABLE", r"is an object of type int, not a Linen "
     r"module"),
    ("student", "my_pkg.MyNet", r"is not a registered classifier; classifiers: "
     r"digits_cnn, .*wrn40_2; or your own Flax module as 'package.module:Name' \(did you "
     r"mean 'my_pkg:MyNet'\?\)"),
    ("student", "dafl_generator", r"is a generator, not a classifier; classifiers: "),
    ("generator", "own_models:TinyNet", r"is a classifier, not a generator; generators: "
     r"dafl_generator, dfad_generator, fast_generator, mad_generator, nayer_generator; "
     r"or your own"),
]
# Broken contracts found by running the model abstractly on the run's shapes.
BAD_CONTRACTS = [
    ("student", "own_models:WrongLogits", r"model\(x, train=True\) on a dummy input "
     r"\[2, 8, 8, 1\] returned \(2, 11\), not logits \(2, 10\) = \(batch, num_classes\)"),
    ("student", "own_models:NoTrainFlag", r"init on a dummy input \[2, 8, 8, 1\] failed "
     r"\(TypeError: .*unexpected keyword argument 'train'\); a classifier takes "),
    ("student", "own_models:NoFeatures", r"model\(x, features=True\) must return "
     r"\(logits \[N, 10\], dfkd_jax.models.ClassifierFeatures"),
    # Eval mode (the test accuracy, the probe, export) and a second batch size (issue 37,
    # item 8): these passed the check, then failed or read 0% at the first epoch end.
    ("student", "own_models:EvalTuple", r"model\(x, train=False\) on a dummy input "
     r"\[2, 8, 8, 1\] returned a tuple of 2 \(\(2, 10\), \(2, 64\)\), not logits "
     r"\(2, 10\) = \(batch, num_classes\) in eval mode, as the test accuracy"),
    ("student", "own_models:EvalExtraLogit", r"model\(x, train=False\) on a dummy input "
     r"\[2, 8, 8, 1\] returned \(2, 11\), not logits \(2, 10\) = \(batch, "
     r"num_classes\) in eval mode"),
    ("student", "own_models:FixedBatch", r"model\(x, train=True\) on a dummy input "
     r"\[3, 8, 8, 1\] \(a second batch size, after 2: nothing may depend on the batch "
     r"size\) failed \(ScopeParamShapeError: "),
    ("generator", "own_models:FixedBatchGenerator", r"model\(z, train=True\) on a dummy "
     r"z \[3, 16\] \(a second batch size, after 2: nothing may depend on the batch "
     r"size\) failed \(TypeError: cannot reshape"),
]


@pytest.mark.parametrize("field, value, match", BAD_MODELS)
def test_a_bad_model_name_is_one_line_when_the_config_is_validated(field, value, match):
  config = run_config.default_config()
  config[field] = value
  with pytest.raises(ValueError) as info:
    run_config.validate(config, parallel.make_mesh())
  message = str(info.value)
  assert message.startswith(f"config.{field}={value!r}") and "\n" not in message
  assert re.search(match, message), message


@pytest.mark.parametrize("field, value, match", BAD_CONTRACTS)
def test_a_broken_contract_is_one_line_before_anything_compiles(
    field, value, match, teacher_dir, monkeypatch):
  monkeypatch.setattr(jax, "jit", _no_compiling)  # build() must fail before any jit.
  config = tiny_config(teacher_dir, "dfkd", **{field: value})
  with pytest.raises(ValueError) as info:
    experiment.build(config, log=lambda line: None)
  message = str(info.value)
  assert message.startswith(f"config.{field}={value!r}: ") and "\n" not in message
  assert re.search(match, message), message


def _no_compiling(*args, **kwargs):
  raise AssertionError("jax.jit was called")


def test_the_cli_refuses_a_bad_student_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.train", f"--config={REPO / 'configs/digits.py'}",
       "--config.student=my_pkg.MyNet", f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.student='my_pkg.MyNet' is not a registered classifier; "
      "classifiers: ")
  assert "dafl_generator" not in proc.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("student, words", [
    ("own_models:EvalTuple", "model(x, train=False) on a dummy input [2, 8, 8, 1] "
     "returned a tuple of 2 ((2, 10), (2, 64)), not logits (2, 10)"),
    ("own_models:EvalExtraLogit", "model(x, train=False) on a dummy input [2, 8, 8, 1] "
     "returned (2, 11), not logits (2, 10) = (batch, num_classes) in eval mode"),
    ("own_models:FixedBatch", "model(x, train=True) on a dummy input [3, 8, 8, 1] (a "
     "second batch size, after 2: nothing may depend on the batch size) failed"),
])
def test_the_cli_refuses_a_student_whose_eval_mode_or_batch_size_breaks_the_contract(
    student, words, teacher_dir, tmp_path):
  """Issue 37, item 8: these passed the check, then the run failed at the first epoch
  end (a traceback) or read a wrong accuracy."""
  config = tiny_config(teacher_dir, "dfkd", num_epochs=1)
  proc = subprocess.run(
      cli_args(config, tmp_path / "run") + [f"--config.student={student}"],
      capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}"))
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert lines[0].startswith(f"error: config.student={student!r}: {words}"), lines[0]
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert not (tmp_path / "run" / trainer.SUMMARY_FILE).exists()


@pytest.fixture(name="own_teacher", scope="module")
def fixture_own_teacher(tmp_path_factory):
  """An own_models:TinyNet teacher trained on digits by train_teacher (8 epochs)."""
  config = experiment.load_config_file(str(REPO / "configs/teacher/digits.py"))
  config.model = "own_models:TinyNet"
  config.num_epochs = 8
  config.learning_rate = 0.01
  workdir = tmp_path_factory.mktemp("own_teacher") / "teacher"
  meta = train_teacher.train_and_save(config, workdir, log=lambda line: None)
  return workdir, meta


@pytest.mark.slow
def test_an_own_teacher_trains_and_distils_into_an_own_student(own_teacher, tmp_path):
  workdir, meta = own_teacher
  assert meta.arch == "own_models:TinyNet" and meta.input_shape == DIGITS
  assert meta.test_accuracy > 80.0
  module, variables, loaded = teacher_lib.load_teacher(workdir)
  assert isinstance(module, own_models.TinyNet) and loaded == meta
  assert set(variables["batch_stats"]) == {"bn1", "bn2"}
  config = tiny_config(workdir, "dfkd", student="own_models:tiny_net",
                       generator="own_models:TinyGenerator")
  result = trainer.run(config, tmp_path / "run", log=lambda line: None)
  summary = json.loads((tmp_path / "run" / trainer.SUMMARY_FILE).read_text())
  assert summary["teacher_accuracy"] == pytest.approx(meta.test_accuracy, abs=1e-3)
  assert len(summary["test_accuracy"]) == 2 and result["epochs_completed"] == 2
  assert summary["config"]["student"] == "own_models:tiny_net"
  assert np.isfinite(summary["acc_max"])
  # The student out: a Flax folder whose predictions give the run's accuracy.
  export.export(tmp_path / "run", "flax", tmp_path / "student", log=lambda line: None)
  predict = dfkd_jax.load_student(tmp_path / "student")
  assert predict.card.arch == "own_models:tiny_net"
  test = data.load_split("digits", "test")
  logits = np.asarray(predict(test.images / test.pixel_max))
  accuracy = 100.0 * float(np.mean(np.argmax(logits, -1) == test.labels))
  assert accuracy == pytest.approx(summary["test_accuracy"][-1], abs=1e-9)
  with pytest.raises(export.ExportError, match=r"--format=torch does not cover the "
                     r"student 'own_models:tiny_net'; it covers .*; use --format=onnx"):
    export.export(tmp_path / "run", "torch", tmp_path / "student.pth")


def test_a_teacher_whose_module_is_gone_is_one_line(own_teacher, tmp_path):
  workdir, meta = own_teacher
  moved = tmp_path / "teacher"
  subprocess.run(["cp", "-r", str(workdir), str(moved)], check=True)
  data = json.loads((moved / teacher_lib.META_FILE).read_text())
  data["arch"] = "gone_package.nets:TinyNet"
  (moved / teacher_lib.META_FILE).write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"teacher.json: arch='gone_package.nets:TinyNet':"
                     r" cannot import module 'gone_package.nets' .* on PYTHONPATH"):
    teacher_lib.load_teacher(moved)

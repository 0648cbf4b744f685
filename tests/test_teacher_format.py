"""Teacher checkpoint format: round trip, no-overwrite, atomicity and clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax import models
from dfkd_jax.models import teacher


def _digits_teacher():
  module = models.get("digits_cnn")
  abstract = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), abstract)
  meta = teacher.TeacherMeta(arch="digits_cnn", num_classes=10, input_shape=(8, 8, 1),
                             mean=(0.3,), std=(0.4,), dataset="digits",
                             test_accuracy=98.1, source="unit test")
  return module, variables, meta


def test_round_trip(tmp_path):
  module, variables, meta = _digits_teacher()
  out = teacher.save_teacher(tmp_path / "t", variables, meta)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temp dirs left
  data = json.loads((out / "teacher.json").read_text())
  assert data["format_version"] == teacher.FORMAT_VERSION
  assert data["normalization"] == {"mean": [0.3], "std": [0.4]}
  assert data["input_shape"] == [8, 8, 1]

  loaded_module, loaded, loaded_meta = teacher.load_teacher(out)
  assert loaded_meta == meta and loaded_module == module
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  x = jnp.ones((1, 8, 8, 1))
  np.testing.assert_array_equal(loaded_module.apply(loaded, x), module.apply(variables, x))
  np.testing.assert_allclose(meta.normalize(jnp.full((1, 1, 1, 1), 0.7)), 1.0)


def test_no_overwrite_unless_asked(tmp_path):
  _, variables, meta = _digits_teacher()
  teacher.save_teacher(tmp_path / "t", variables, meta)
  with pytest.raises(FileExistsError, match="overwrite"):
    teacher.save_teacher(tmp_path / "t", variables, meta)
  changed = jax.tree.map(lambda a: a + 1, variables)
  teacher.save_teacher(tmp_path / "t", changed,
                       teacher.TeacherMeta(**{**meta.__dict__, "test_accuracy": 99.0}),
                       overwrite=True)
  _, loaded, loaded_meta = teacher.load_teacher(tmp_path / "t")
  assert loaded_meta.test_accuracy == 99.0
  jax.tree.map(np.testing.assert_array_equal, loaded, changed)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_wrong_variables_are_refused_before_writing(tmp_path):
  _, variables, meta = _digits_teacher()
  bad = jax.tree.map(lambda a: a, variables)
  bad["params"]["fc"]["kernel"] = jnp.zeros((64, 7))
  with pytest.raises(ValueError, match="fc/kernel"):
    teacher.save_teacher(tmp_path / "t", bad, meta)
  assert not (tmp_path / "t").exists()


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    teacher.load_teacher(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="teacher.json"):
    teacher.load_teacher(tmp_path / "empty")

  _, variables, meta = _digits_teacher()
  out = teacher.save_teacher(tmp_path / "t", variables, meta)
  data = json.loads((out / "teacher.json").read_text())
  (out / "teacher.json").write_text(json.dumps({**data, "arch": "resnet99"}))
  with pytest.raises(ValueError, match=r"teacher.json: arch='resnet99' is not a "
                     r"registered classifier; classifiers: digits_cnn, .*; or your own "
                     r"Flax module"):
    teacher.load_teacher(out)
  # Arrays that do not fit the recorded architecture (a half-width net's weights).
  (out / "teacher.json").write_text(json.dumps({**data, "arch": "digits_cnn_half"}))
  with pytest.raises(ValueError, match="shape mismatches"):
    teacher.load_teacher(out)


def test_meta_validation():
  with pytest.raises(ValueError, match="one value per channel"):
    teacher.TeacherMeta(arch="resnet18", num_classes=10, input_shape=(32, 32, 3),
                        mean=(0.5,), std=(0.5,), dataset="cifar10")


@pytest.mark.parametrize("damage", ["largest", "every"])
def test_a_damaged_teacher_is_one_line_naming_it_and_the_fix(tmp_path, damage):
  """Issue 26, item 2: truncated files under variables/ (a disk filled while copying)."""
  _, variables, meta = _digits_teacher()
  out = teacher.save_teacher(tmp_path / "t", variables, meta)
  files = sorted((p for p in (out / "variables").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  for path in files[-1:] if damage == "largest" else files:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(ValueError) as e:
    teacher.load_teacher(out)
  message = str(e.value)
  assert "\n" not in message and e.value.__cause__ is None
  assert message.startswith(f"the teacher at {out} is damaged: ")
  assert (f"python -m dfkd_jax.train_teacher --config=configs/teacher/digits.py "
          f"--workdir={out} --config.overwrite=True") in message
  if damage == "every":  # A JSON file of orbax's, by name.
    assert "/variables/_CHECKPOINT_METADATA is not valid JSON" in message
  else:
    assert f"the arrays under {out / 'variables'} cannot be read" in message

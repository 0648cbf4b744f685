"""The summary.json contract (dfkd_jax.metrics.summary.Summary): round trip and rejections."""

import dataclasses
import json
import re

import pytest

from dfkd_jax.metrics import summary as summary_lib


def _summary(acc=(50.0, 70.0, 60.0), alignment=(None, 0.25, -0.5)):
  return summary_lib.Summary.of_run(
      method="mb_dfkd", dataset="digits", seed=3, teacher_accuracy=98.0,
      test_accuracy=acc, alignment=alignment, student_steps_per_second=2.5,
      config={"seed": 3})


def test_round_trip_through_the_file_keeps_every_field(tmp_path):
  original = _summary()
  original.write(tmp_path / "summary.json")
  loaded = summary_lib.Summary.load(tmp_path / "summary.json")
  assert loaded == original
  assert loaded.acc_max == 70.0 and loaded.epochs_completed == 3
  assert loaded.cumulative_mean_accuracy == (50.0, 60.0, 60.0)
  assert loaded.learning_evolution[0] == (60.0, pytest.approx(200 / 3))


def test_json_has_the_documented_fields_in_order():
  data = _summary().to_json()
  assert list(data) == ["method", "dataset", "seed", "teacher_accuracy", "test_accuracy",
                        "acc_max", "learning_evolution", "cumulative_mean_accuracy",
                        "alignment", "student_steps_per_second", "epochs_completed",
                        "config"]
  assert "alignment" not in _summary(alignment=(None, None, None)).to_json()
  json.dumps(data, allow_nan=False)


@pytest.mark.parametrize("key", ["train_seconds", "train_cpu_seconds"])
def test_train_seconds_round_trip_and_must_match_the_curve(key):
  timed = dataclasses.replace(_summary(), **{key: (10.0, 20.5, 31.0)})
  data = timed.to_json()
  assert data[key] == [10.0, 20.5, 31.0]
  assert summary_lib.Summary.from_json(data) == timed
  assert key not in _summary().to_json()  # Runs made before it: absent.
  assert summary_lib.Summary.from_json(dict(data, **{key: None})) == _summary()
  for bad, message in (([10.0], f"{key} has 1 values but test_accuracy has 3"),
                       ([10.0, 20.5, 31.0, 40.0],
                        f"{key} has 4 values but test_accuracy has 3"),
                       ([10.0, "x", 30.0], f"{key}[1] must be a finite number")):
    with pytest.raises(ValueError) as error:
      summary_lib.Summary.from_json(dict(data, **{key: bad}), "x.json")
    assert str(error.value).startswith(f"x.json: {message}")
    assert "\n" not in str(error.value)


def test_train_cpu_seconds_sit_beside_train_seconds():
  both = dataclasses.replace(_summary(), train_seconds=(10.0, 20.0, 30.0),
                             train_cpu_seconds=(15.0, 30.0, 45.0), cpu_cores=2)
  keys = list(both.to_json())
  assert keys[keys.index("train_seconds") + 1] == "train_cpu_seconds"
  assert keys[-1] == "cpu_cores"


def test_cpu_cores_round_trip_are_optional_and_validated():
  cores = dataclasses.replace(_summary(), cpu_cores=2)
  data = cores.to_json()
  assert data["cpu_cores"] == 2 and list(data)[-1] == "cpu_cores"
  assert summary_lib.Summary.from_json(data) == cores
  old = _summary().to_json()
  assert "cpu_cores" not in old   # Runs made before it, accelerators: absent.
  assert summary_lib.Summary.from_json(old).cpu_cores is None
  assert summary_lib.Summary.from_json(dict(old, cpu_cores=None)).cpu_cores is None
  for bad in (0, -1, 1.5, "2", True):
    with pytest.raises(ValueError, match=r"x.json: cpu_cores must be a positive integer "
                       rf"\(the CPU cores the run had\) or null, got {bad!r}"):
      summary_lib.Summary.from_json(dict(old, cpu_cores=bad), "x.json")


def test_host_round_trips_is_optional_and_validated():
  timed = dataclasses.replace(_summary(), cpu_cores=2, host="AMD EPYC 7B13")
  data = timed.to_json()
  assert data["host"] == "AMD EPYC 7B13" and list(data)[-2:] == ["cpu_cores", "host"]
  assert summary_lib.Summary.from_json(data) == timed
  old = _summary().to_json()
  assert "host" not in old   # Runs made before it was recorded.
  assert summary_lib.Summary.from_json(old).host is None
  assert summary_lib.Summary.from_json(dict(old, host=None)).host is None
  for bad in ("", "  ", 3, ["AMD"]):
    with pytest.raises(ValueError, match=r"x.json: host must be a non-empty string \(the "
                       rf"CPU model or device kind the run was timed on\) or null, got "
                       rf"{re.escape(repr(bad))}"):
      summary_lib.Summary.from_json(dict(old, host=bad), "x.json")


def test_a_run_before_its_first_epoch_has_an_empty_curve():
  empty = _summary(acc=(), alignment=())
  assert empty.acc_max is None and empty.to_json()["learning_evolution"] == {}
  assert summary_lib.Summary.from_json(empty.to_json()) == empty


@pytest.mark.parametrize("field, value, words", [
    ("seed", "3", "seed must be an integer"),
    ("test_accuracy", [50.0, float("nan")], r"test_accuracy\[1\] must be a finite"),
    ("cumulative_mean_accuracy", [1.0], "has 1 values but test_accuracy has 3"),
    ("method", "", "method must be a non-empty string"),
])
def test_malformed_fields_are_errors_naming_the_file(field, value, words):
  data = _summary().to_json()
  data[field] = value
  with pytest.raises(ValueError, match=f"run/summary.json: .*{words}"):
    summary_lib.Summary.from_json(data, "run/summary.json")

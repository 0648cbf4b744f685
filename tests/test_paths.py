"""Run directories and teachers are filesystem paths: a URL is a clear error, early.

``pathlib`` would turn ``gs://bucket/run`` into a local folder ``gs:/bucket/run``, so a
run on a pod would silently write its checkpoints on one host's disk.
"""

import pathlib

import pytest

from dfkd_jax.models import teacher
from dfkd_jax.parallel import distributed
from dfkd_jax.run import experiment
from dfkd_jax.run import train_teacher
from dfkd_jax.run import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
URLS = ["gs://bucket/runs/c10", "s3://bucket/teacher", "file:///tmp/run",
        "hdfs://namenode/x"]


@pytest.mark.parametrize("url", URLS)
def test_urls_are_refused_with_the_fix(url):
  with pytest.raises(ValueError, match=r"--workdir='?.*is a URL.*mount it"):
    distributed.filesystem_path(url, "--workdir")


@pytest.mark.parametrize("path", ["runs/c10", "/abs/run", "./gs:/odd", "~/teachers/x",
                                  "C:/runs", pathlib.Path("teachers/mnist")])
def test_filesystem_paths_pass_unchanged(path):
  assert distributed.filesystem_path(path, "--workdir") == pathlib.Path(path)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
  """Runs in an empty folder: whatever a refused call wrote would show up here."""
  monkeypatch.chdir(tmp_path)
  yield tmp_path
  assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_trainer_refuses_a_url_workdir_before_building_anything(in_tmp):
  config = experiment.load_config_file(f"{REPO / 'configs/digits.py'}:lra_mb")
  config.teacher_dir = str(in_tmp / "no_teacher")  # Never reached.
  config.teacher_config = ""
  with pytest.raises(ValueError, match="workdir='gs://bucket/run' is a URL"):
    trainer.run(config, "gs://bucket/run", log=lambda s: None)


def test_trainer_refuses_a_url_teacher_dir(in_tmp):
  config = experiment.load_config_file(f"{REPO / 'configs/digits.py'}:lra_mb")
  config.teacher_dir = "gs://bucket/teachers/digits"
  with pytest.raises(ValueError, match="config.teacher_dir='gs://bucket/teachers/digits'"
                                       " is a URL"):
    experiment.build(config, log=lambda s: None)


def test_teacher_training_refuses_a_url_before_training(in_tmp):
  config = experiment.load_config_file(str(REPO / "configs/teacher/digits.py"))
  lines = []
  with pytest.raises(ValueError, match="workdir='gs://bucket/t' is a URL"):
    train_teacher.train_and_save(config, "gs://bucket/t", log=lines.append)
  assert not lines  # Not a single epoch ran.


def test_teacher_format_refuses_urls(in_tmp):
  with pytest.raises(ValueError, match="teacher directory='gs://b/t' is a URL"):
    teacher.load_meta("gs://b/t")
  with pytest.raises(ValueError, match="teacher directory='gs://b/t' is a URL"):
    teacher.save_teacher("gs://b/t", {"params": {}}, None)

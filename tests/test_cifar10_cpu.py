"""The committed CIFAR-10 teacher of configs/cifar10_cpu.py: intact, and as good as it
says on the CIFAR-10 (JPEG folder) test set."""

import hashlib
import pathlib
import re

import jax
import pytest

from dfkd_jax.data import datasets as data
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import evaluation
from dfkd_jax.run import experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER = REPO / "assets" / "teachers" / "cifar10_wrn16_2"


def _recorded_hashes() -> dict[str, str]:
  """``{relative path: sha256}`` from the teacher's README table."""
  text = (TEACHER / "README.md").read_text()
  return dict((path, digest) for digest, path in
              re.findall(r"^\| `([0-9a-f]{64})` \| `([^`]+)` \|", text, re.M))


def test_every_file_of_the_teacher_has_its_recorded_sha256():
  recorded = _recorded_hashes()
  files = sorted(p.relative_to(TEACHER).as_posix() for p in TEACHER.rglob("*")
                 if p.is_file() and p.name != "README.md")
  assert sorted(recorded) == files
  for path in files:
    digest = hashlib.sha256((TEACHER / path).read_bytes()).hexdigest()
    assert digest == recorded[path], f"{path} changed (or is a Git LFS pointer)"


def test_the_protocol_config_uses_it_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = experiment.load_config_file(str(REPO / "configs/cifar10_cpu.py:dfkd"))
  assert pathlib.Path(config.teacher_dir) == TEACHER
  meta = teacher_lib.load_meta(config.teacher_dir)
  assert (meta.arch, meta.num_classes, meta.input_shape) == ("wrn16_2", 10, (32, 32, 3))
  assert meta.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog",
                              "frog", "horse", "ship", "truck")


@pytest.mark.slow
def test_it_scores_what_it_records_on_the_jpeg_test_set(cifar10_jpeg_test):
  module, variables, meta = teacher_lib.load_teacher(TEACHER)
  dataset = f"folder:{cifar10_jpeg_test}"
  data.check_teacher_fits(meta, dataset)
  split = data.load_split(dataset, "test", log=lambda line: None)
  accuracy = evaluation.accuracy(
      evaluation.make_eval_step(module), variables, split, dataset,
      image_shape=meta.input_shape, normalization=(meta.mean, meta.std),
      batch_size=500, mesh=parallel.make_mesh(jax.devices()[:1]))
  assert accuracy == pytest.approx(meta.test_accuracy, abs=0.015)

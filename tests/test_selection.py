"""Data-free model selection (issue 29): criteria, the kept checkpoint, the report.

One tiny 2-replica mb_dfkd run with the criteria (module-scoped) serves the end-to-end
tests; the same run without criteria and a resumed one hit the session's compilation
cache. The rest works on synthetic curves and summaries.
"""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dfkd_jax.interop import export
from dfkd_jax.math import losses
from dfkd_jax.metrics import selection
from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import checkpoints as checkpoints_lib
from dfkd_jax.run import probe as probe_lib
from dfkd_jax.run import run_config
from dfkd_jax.run import run_outputs
from dfkd_jax.run import train_teacher
from dfkd_jax.run import trainer
from dfkd_jax.study import report
from dfkd_jax.study import selection_report
from dfkd_jax.study import study_runs
from test_trainer import teacher_dir, tiny_config  # pylint: disable=unused-import  # fixture

REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS = (0, 1)
EPOCHS = 3
# Two probe slots of 16 samples (<= the tiny batch of 32); a constant learning rate so
# that a run extended with --allow_config_change=num_epochs equals an uninterrupted one;
# a criterion that can keep an epoch other than the last (the default is `last`).
SELECTION = {"selection.criterion": "agreement", "selection.probe_size": 32,
             "selection.probe_epochs": 2,
             "student_optimizer.schedule": "constant", "iterations_per_epoch": 1,
             "student_steps": 1, "checkpoints_to_keep": 1, "num_seeds": len(SEEDS)}
OFF = {"selection.probe_size": 0, "selection.criterion": "last"}


def config(teacher_dir, **overrides):
  return tiny_config(teacher_dir, "mb_dfkd", **{**SELECTION, "num_epochs": EPOCHS,
                                                **overrides})


def summaries(result):
  return result["replicas"]


@pytest.fixture(scope="module")
def with_criteria(teacher_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("with_criteria")
  lines = []
  result = trainer.run(config(teacher_dir), workdir, log=lines.append)
  return workdir, summaries(result), lines


def disk_steps(workdir):
  return sorted(int(p.name) for p in (workdir / trainer.CHECKPOINT_DIR).iterdir()
                if p.name.isdigit())


@pytest.mark.slow
def test_criteria_are_finite_in_range_and_per_replica(with_criteria):
  workdir, runs, lines = with_criteria
  assert [r["seed"] for r in runs] == list(SEEDS)
  for run in runs:
    criteria = run["criteria"]
    assert set(criteria) == {"agreement", "js", "replay_agreement", "replay_js",
                             *selection.HEALTH}
    assert all(len(v) == EPOCHS for v in criteria.values())
    assert all(0.0 <= a <= 1.0 for a in criteria["agreement"])
    assert all(0.0 <= j <= math.log(2) + 1e-6 for j in criteria["js"])
    # The memory is written at the end of epoch 1, before its criteria: every epoch
    # has a replay batch.
    assert all(v is not None and 0.0 <= v <= 1.0 for v in criteria["replay_agreement"])
    assert run["criterion"] == "agreement"
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in criteria["probe_diversity"])
    assert all(f in (0, 1, 2, 3) for f in criteria["fault"])
    chosen = selection.selected_epoch("agreement", criteria, EPOCHS)
    assert run["selected_epoch"] == chosen + 1
    assert run["selected_accuracy"] == run["test_accuracy"][chosen]
    assert "collapsed" in run
    on_disk = json.loads((workdir / f"seed_{run['seed']}" / "summary.json").read_text())
    assert on_disk["criteria"] == criteria
  # Each replica is scored on its own probe (its seed's key) and its own student.
  assert runs[0]["criteria"]["js"] != runs[1]["criteria"]["js"]
  assert any(line.startswith("epoch 3/3: students") for line in lines)


@pytest.mark.slow
def test_training_numbers_are_unchanged_by_the_criteria(teacher_dir, tmp_path,
                                                        with_criteria):
  _, runs, _ = with_criteria
  plain = summaries(trainer.run(config(teacher_dir, **OFF), tmp_path, log=lambda s: None))
  for with_, without in zip(runs, plain):
    assert with_["test_accuracy"] == without["test_accuracy"]
    assert "criteria" not in without or not without["criteria"]
    assert without["selected_epoch"] == EPOCHS  # last.
  assert not (tmp_path / trainer.CHECKPOINT_DIR / str(EPOCHS) / "probe").exists()


@pytest.mark.slow
def test_the_selected_checkpoint_survives_rotation_and_resume(teacher_dir, tmp_path,
                                                              with_criteria):
  workdir, runs, _ = with_criteria
  selected = {r["selected_epoch"] for r in runs}  # iterations_per_epoch = 1.
  assert disk_steps(workdir) == sorted(selected | {EPOCHS})  # checkpoints_to_keep = 1.
  # The same run in two parts: the probe and the kept steps come back on resume.
  trainer.run(config(teacher_dir, num_epochs=EPOCHS - 1), tmp_path, log=lambda s: None)
  resumed = summaries(trainer.run(config(teacher_dir), tmp_path, log=lambda s: None,
                                  allow_config_change=("num_epochs",)))
  for one, two in zip(runs, resumed):
    assert two["test_accuracy"] == one["test_accuracy"]
    assert two["criteria"] == one["criteria"]
    assert two["selected_epoch"] == one["selected_epoch"]
  assert disk_steps(tmp_path) == disk_steps(workdir)
  # export's default is the kept student.
  run = export.read_run(workdir)
  for k, seed in enumerate(SEEDS):
    assert export.selected_step(run, k) == runs[k]["selected_epoch"]


def test_kept_steps_are_never_rotated_out_and_are_kept_again_after_a_restart(tmp_path):
  state = {"w": np.zeros(3, np.float32)}
  directory = tmp_path / "checkpoints"
  checkpoints = checkpoints_lib.Checkpoints(directory, 1, print, True)
  for step in range(1, 6):
    if step == 3:
      checkpoints.keep({2})
    checkpoints.save(step, state, {"step": step})
  checkpoints.close()
  assert sorted(int(p.name) for p in directory.iterdir()) == [2, 5]
  again = checkpoints_lib.Checkpoints(directory, 1, print, True)  # A resumed run.
  assert again.restore(state)[1] == {"step": 5} and again.restore_probe(state) is None
  again.keep({2, 6})
  again.save(6, state, {"step": 6}, probe=state)
  again.keep({6})
  again.save(7, state, {"step": 7})
  again.close()
  assert sorted(int(p.name) for p in directory.iterdir()) == [6, 7]


# ---------------------------------------------------------------------------
# Synthetic curves, bad input, the report.
# ---------------------------------------------------------------------------


BEST = 4  # 0-based best epoch of the synthetic curve below.
CURVE = [40.0, 55.0, 61.0, 58.0, 72.0, 66.0, 60.0]


def test_a_criterion_that_tracks_the_curve_chooses_its_best_epoch():
  agreement = [a / 100 - 0.05 for a in CURVE]       # Higher is better.
  js = [0.7 - a / 200 for a in CURVE]               # Lower is better.
  noise = [0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4]       # Does not track it.
  criteria = {"agreement": agreement, "js": js, "replay_agreement": noise}
  assert selection.selected_epoch("agreement", criteria, len(CURVE)) == BEST
  assert selection.selected_epoch("js", criteria, len(CURVE)) == BEST
  assert selection.selected_epoch("last", criteria, len(CURVE)) == len(CURVE) - 1
  assert selection.selected_epoch("replay_agreement", criteria, len(CURVE)) == 0
  assert selection.rank_correlation(agreement, CURVE) == pytest.approx(1.0)
  assert selection.rank_correlation(js, CURVE, higher_is_better=False) == pytest.approx(
      1.0)
  # Epochs without values (a run resumed from before criteria) are never chosen; ties
  # go to the latest epoch.
  assert selection.select_epoch([None, 0.5, float("nan"), 0.5]) == 3
  assert selection.selected_epoch("agreement", {}, 3) == 2
  summary = summary_lib.Summary.of_run(
      method="dfkd", dataset="digits", seed=0, teacher_accuracy=99.0, test_accuracy=CURVE,
      alignment=[None] * len(CURVE), student_steps_per_second=None, config={},
      criteria=criteria, criterion="js")
  assert summary.selected_epoch == BEST + 1 and summary.selected_accuracy == 72.0
  assert summary_lib.Summary.from_json(summary.to_json()) == summary


def test_a_run_at_chance_agreement_for_several_epochs_is_collapsed():
  chance = [0.1, 0.12, 0.09, 0.11]  # Recorded before the health signals existed.
  assert "epochs 1-3" in selection.collapse({"agreement": chance}, 10, 3)
  dip = {"agreement": [0.1, 0.5, 0.1, 0.1]}
  assert selection.collapse(dip, 10, 3, finished=False) is None
  # Finished, `last` keeps epoch 4, at chance (main kept it unflagged).
  assert "the kept student (epoch 4, by last) is faulty" in selection.collapse(dip, 10, 3)
  assert selection.collapse({"agreement": chance}, 10, 0) is None
  history = run_outputs.History(teacher_accuracy=99.0)
  for a in chance[:3]:
    history.end_epoch(10.0, {"agreement": a}, num_classes=10, collapse_epochs=3)
  assert history.collapsed and "collapsed" in history.collapsed
  line = run_outputs._epoch_line(2, 3, [history], [0], {"student_loss": 1.0}, "ETA 0")
  assert "WARNING collapsed" in line
  history.end_epoch(40.0, {"agreement": 0.6}, num_classes=10, collapse_epochs=3)
  assert history.collapsed is None  # It recovered: the next lines and summary say none.
  line = run_outputs._epoch_line(3, 4, [history], [0], {"student_loss": 1.0}, "ETA 0")
  assert "collapsed" not in line


# ---------------------------------------------------------------------------
# Collapse and divergence (issue 37, item 5): the pure functions.
# ---------------------------------------------------------------------------

CLASSES = 10
HEALTHY, DIVERGED, PROBE_COLLAPSED, CHANCE = range(4)


def _health(student_logits, teacher_logits, kd_loss=losses.mae):
  """:func:`dfkd_jax.run.probe.health` on one device's rows, jitted as the epoch end is."""
  weight = jnp.ones(teacher_logits.shape[:1], jnp.float32)
  fn = jax.vmap(lambda s, t, w: probe_lib.health(s, t, w, kd_loss, CLASSES),
                axis_name=probe_lib.AXIS)
  out = jax.jit(fn)(student_logits[None], teacher_logits[None], weight[None])
  return {k: float(v[0]) for k, v in out.items()}


def _probe_logits(labels, scale=8.0):
  return scale * jax.nn.one_hot(jnp.asarray(labels), CLASSES)


BALANCED = np.arange(200) % CLASSES            # Every class, equally often.
ONE_CLASS = np.full(200, 3)                    # What a collapsed generator makes.
MOSTLY_ONE = np.where(np.arange(200) < 100, 3, np.arange(200) % CLASSES)  # 55% 3s.


@pytest.mark.parametrize("name, teacher, student, fault", [
    ("the teacher's twin", BALANCED, lambda t: t, HEALTHY),
    ("one class on a balanced probe", BALANCED, lambda t: np.full_like(t, 3), CHANCE),
    # Plain agreement reads 0.55 here; balanced agreement sees the constant student.
    ("one class on a probe skewed to it", MOSTLY_ONE, lambda t: np.full_like(t, 3),
     CHANCE),
    ("the twin on a one-class probe", ONE_CLASS, lambda t: t, PROBE_COLLAPSED),
    ("one class on a one-class probe", ONE_CLASS, lambda t: t, PROBE_COLLAPSED),
])
def test_health_signals_on_the_device(name, teacher, student, fault):
  del name
  got = _health(_probe_logits(student(teacher)), _probe_logits(teacher))
  assert got["fault"] == fault, got
  chex.assert_scalar_in(got["probe_diversity"], 0.0, 1.0 + 1e-6)
  chex.assert_scalar_in(got["balanced_agreement"], 0.0, 1.0)
  if teacher is BALANCED:
    np.testing.assert_allclose(got["probe_diversity"], 1.0, rtol=1e-5)
  if teacher is ONE_CLASS:
    assert got["probe_diversity"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kd_loss", [losses.mae, losses.kl_divergence])
@pytest.mark.parametrize("scale, fault", [(8.0, HEALTHY), (1e6, DIVERGED),
                                          (float("nan"), DIVERGED)])
def test_an_exploding_or_non_finite_student_is_diverged(kd_loss, scale, fault):
  teacher = _probe_logits(BALANCED)
  student = jnp.roll(teacher, 0, -1) * scale / 8.0
  if scale == 1e6:  # Huge and wrong: what a diverging student outputs.
    student = jnp.roll(teacher, 1, -1) * scale
  got = _health(student, teacher, kd_loss)
  assert got["fault"] == fault, got
  if fault == DIVERGED and np.isfinite(scale):
    assert got["loss_ratio"] > selection.DIVERGED_RATIO


@pytest.mark.parametrize("diversity, balanced, ratio, code", [
    (0.9, 0.8, 0.3, HEALTHY),
    (0.9, 0.8, 11.0, DIVERGED),
    (0.9, 0.8, float("nan"), DIVERGED),
    (0.9, 0.8, float("inf"), DIVERGED),
    (0.2, 0.8, 0.3, PROBE_COLLAPSED),
    (0.2, 0.1, 50.0, DIVERGED),                # Divergence first.
    (0.9, 0.14, 0.3, CHANCE),
    (0.9, 0.15, 0.3, HEALTHY),
])
def test_fault_code_is_the_same_on_numpy_and_jitted(diversity, balanced, ratio, code):
  args = (np.float32(diversity), np.float32(balanced), np.float32(ratio))
  assert int(selection.fault_code(*args, CLASSES)) == code
  jitted = jax.jit(lambda *a: selection.fault_code(*a, CLASSES))
  chex.assert_trees_all_equal(jitted(*args), jnp.asarray(code, jnp.int32))


@pytest.mark.parametrize("name, faults, last, agreement", [
    ("healthy", [0, 0, 0], 2, 1),
    ("the last epoch at chance", [0, 0, CHANCE], 1, 1),
    ("the best epoch collapsed", [0, PROBE_COLLAPSED, 0], 2, 2),
    ("every epoch faulty", [CHANCE, CHANCE, CHANCE], 2, 1),
    ("not measured", [None, 0, CHANCE], 1, 1),
])
def test_the_probe_criteria_skip_faulty_epochs(name, faults, last, agreement):
  del name, last
  criteria = {"agreement": [0.5, 0.9, 0.6], "fault": faults}
  assert selection.selected_epoch("last", criteria, 3) == 2  # The flag warns instead.
  assert selection.selected_epoch("agreement", criteria, 3) == agreement


@pytest.mark.parametrize("faults, epochs, expected", [
    ([0, 0, 0, 0], 3, None),
    ([0, CHANCE, CHANCE, 0], 3, None),         # A dip the selection steps over.
    ([0, 0, 0, DIVERGED], 3, "in epoch 4 the student diverged"),
    ([0, CHANCE, CHANCE, CHANCE], 3, "in epochs 2-4 the student agrees"),
    # A streak the run recovered from (a CIFAR-10 dfkd seed: chance in epochs 1-3,
    # 60.49% at the end) is no collapse; a later streak that ends the run is.
    ([CHANCE, CHANCE, CHANCE, 0, 0], 3, None),
    ([CHANCE, CHANCE, CHANCE, 0, CHANCE, CHANCE, CHANCE, CHANCE], 3,
     "in epochs 5-7 the student agrees"),
    ([PROBE_COLLAPSED] * 2, 3, "every epoch (1-2) the generator collapsed"),
    ([CHANCE], 3, "in epoch 1 the student agrees"),
    ([0, 0, CHANCE], 3, "the kept student (epoch 3, by last) is faulty: the student"),
    ([CHANCE, DIVERGED], 0, None),             # 0: off.
])
def test_collapse_flags_divergence_at_once_runs_of_faults_and_all_faulty(
    faults, epochs, expected):
  n = len(faults)
  criteria = {"agreement": [0.5] * n, "balanced_agreement": [0.1] * n,
              "probe_diversity": [0.2] * n, "loss_ratio": [None] * n, "fault": faults}
  if expected and "diverged" not in expected and "in epochs " not in expected:
    # A run under way may still get a healthy epoch: only its end says "all faulty"
    # (a faulty streak is said as it happens, and unsaid if the run recovers).
    assert selection.collapse(criteria, CLASSES, epochs, finished=False) is None
  got = selection.collapse(criteria, CLASSES, epochs)
  if expected is None:
    assert got is None
  else:
    assert got.startswith("collapsed: ") and expected in got, got
    assert "\n" not in got


def test_the_epoch_line_warns_of_a_faulty_epoch_and_of_a_collapsed_run():
  history = run_outputs.History(teacher_accuracy=99.0)
  health = {"agreement": 0.2, "balanced_agreement": 0.1, "probe_diversity": 0.9,
            "loss_ratio": 0.9}
  history.end_epoch(80.0, {**health, "agreement": 0.8, "balanced_agreement": 0.8,
                           "fault": 0}, num_classes=10, collapse_epochs=3,
                    finished=False)
  history.end_epoch(10.0, {**health, "fault": CHANCE}, num_classes=10,
                    collapse_epochs=3, finished=False)
  assert history.collapsed is None
  line = run_outputs._epoch_line(1, 3, [history], [0], {"student_loss": 1.0}, "ETA 0",
                                 10)
  assert "WARNING this epoch's student is faulty: the student agrees" in line
  history.end_epoch(10.0, {**health, "loss_ratio": 1e9, "fault": DIVERGED},
                    num_classes=10, collapse_epochs=3)
  line = run_outputs._epoch_line(2, 3, [history], [0], {"student_loss": 1.0}, "ETA 0",
                                 10)
  assert "WARNING collapsed: in epoch 3 the student diverged" in line
  summary = run_outputs.summary({"method": "dfkd", "dataset": "digits", "seed": 0,
                                 "selection": {"criterion": "last"}}, history)
  assert summary.selected_epoch == 3 and summary.collapsed == history.collapsed
  assert summary_lib.Summary.from_json(summary.to_json()) == summary


def test_the_epoch_line_of_a_warm_up_epoch_says_so_instead_of_warning():
  """A fast method's warm-up epochs train no student: chance agreement is expected."""
  history = run_outputs.History(teacher_accuracy=99.0)
  chance = {"agreement": 0.1, "balanced_agreement": 0.1, "probe_diversity": 0.9,
            "loss_ratio": 0.9, "fault": CHANCE}
  for _ in range(3):
    history.end_epoch(10.0, chance, num_classes=10, collapse_epochs=3, finished=False,
                      untrained_epochs=4)
  assert history.collapsed is None
  line = run_outputs._epoch_line(2, 40, [history], [0], {"student_loss": 1.0}, "ETA 0",
                                 10, untrained_epochs=4)
  assert "warm-up epoch 3 of 4: synthesis only, the student is not trained before " \
         "epoch 5" in line and "WARNING" not in line, line
  line = run_outputs._epoch_line(2, 40, [history], [0], {"student_loss": 1.0}, "ETA 0",
                                 10, untrained_epochs=2)  # Past the warm-up: faulty.
  assert "warm-up" not in line and "WARNING this epoch's student is faulty" in line, line


def test_report_marks_collapsed_runs(tmp_path):
  acc = [50.0, 10.0, 10.0]
  write_run(tmp_path / "runs", "dfkd", 0, acc, [0.5, 0.1, 0.1])
  path = tmp_path / "runs" / "dfkd_s1"
  path.mkdir(parents=True)
  summary_lib.Summary.of_run(
      method="dfkd", dataset="digits", seed=1, teacher_accuracy=99.0,
      test_accuracy=acc, alignment=[None] * 3, student_steps_per_second=1.0, config={},
      criteria={"agreement": [0.9] * 3, "fault": [PROBE_COLLAPSED] * 3},
      criterion="last", collapsed="collapsed: in every epoch (1-3) the generator "
      "collapsed").write(path / report.SUMMARY_FILE)
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  table = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  assert "COLLAPSED" in table and "1 of 2 runs" in table, table
  lines = [l for l in table.splitlines() if "`dfkd` seed 1" in l]
  assert len(lines) == 1 and "COLLAPSED: in every epoch (1-3)" in lines[0], table


# Real collapses from real settings (issue 37, item 5): the digits config, its own
# teacher, a few epochs. On main all three were read as healthy runs.
REAL = {"tensorboard": False, "num_epochs": 3, "iterations_per_epoch": 2}


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
  """The quickstart's teacher, trained as configs/teacher/digits.py ships (~20 s)."""
  path = tmp_path_factory.mktemp("shipped_teacher") / "digits"
  train_teacher.train_and_save(
      run_config.load_config_file(str(REPO / "configs/teacher/digits.py")), path,
      log=lambda s: None)
  return path


def _digits(teacher_dir, method="lra_mb", **overrides):
  cfg = run_config.load_config_file(f"{REPO / 'configs/digits.py'}:{method}")
  cfg.teacher_dir, cfg.teacher_config = str(teacher_dir), ""
  for key, value in {**REAL, **overrides}.items():
    *parents, leaf = key.split(".")
    target = cfg
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return cfg


def test_a_generator_driven_to_collapse_is_flagged_by_the_cli(digits_teacher, tmp_path):
  """The generator's learning rate 1e3: the student stays at chance while its plain
  probe agreement reads ~0.95 (the probe comes from the collapsed generator)."""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "dfkd_jax.train",
          f"--config={REPO / 'configs/digits.py'}:lra_mb", f"--workdir={workdir}",
          f"--config.teacher_dir={digits_teacher}", "--config.teacher_config=",
          "--config.generator_optimizer.learning_rate=1e3"] + [
              f"--config.{k}={v}" for k, v in REAL.items()]
  done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert max(summary["test_accuracy"]) < 30.0, summary["test_accuracy"]  # It did collapse.
  assert min(summary["criteria"]["agreement"]) > 0.5  # What main trusted.
  assert summary["collapsed"] and "the generator collapsed" in summary["collapsed"]
  assert set(summary["criteria"]["fault"]) == {2.0}
  assert "; WARNING collapsed: in epoch" in done.stdout, done.stdout[-3000:]
  last = done.stdout.strip().splitlines()[-1]
  assert last.startswith("done: ") and "(COLLAPSED: in epoch" in last, last


def test_a_diverging_student_is_flagged_in_its_first_epoch(digits_teacher, tmp_path):
  """The student's learning rate 50: its loss explodes (~1e5-1e12) and NaNs follow;
  the one epoch recorded before the NaN is flagged, not kept as a healthy student."""
  lines = []
  cfg = _digits(digits_teacher, "lra_mb", **{"student_optimizer.learning_rate": 50.0})
  try:
    trainer.run(cfg, tmp_path, log=lines.append)
  except trainer.NonFiniteLossError:
    pass  # The run stops at the NaN; its summary keeps the epochs before it.
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["collapsed"], summary  # main: None, a kept student at 6%.
  assert summary["collapsed"].startswith("collapsed: in epoch 1 the student diverged")
  assert any("WARNING collapsed: in epoch 1 the student diverged" in l for l in lines)
  assert summary["criteria"]["fault"][0] == 1.0, summary["criteria"]


def test_a_healthy_run_is_not_flagged_and_keeps_its_last_epoch(digits_teacher,
                                                               tmp_path):
  lines = []
  cfg = _digits(digits_teacher, "lra_mb", num_epochs=4, iterations_per_epoch=4)
  summary = trainer.run(cfg, tmp_path, log=lines.append)
  assert summary["test_accuracy"][-1] > 50.0, summary["test_accuracy"]
  assert summary["collapsed"] is None and not any("WARNING" in l for l in lines), lines
  assert set(summary["criteria"]["fault"]) == {0.0}, summary["criteria"]
  assert summary["selected_epoch"] == 4


@pytest.mark.parametrize("overrides, error", [
    ({"selection.criterion": "best"}, "config.selection.criterion='best' is unknown"),
    ({"selection.criterion": "replay_js"}, "needs a replay source"),
    ({"selection.criterion": "agreement", "selection.probe_size": 0}, "needs the probe set"),
    ({"selection.probe_size": 33}, "does not fit"),
    ({"selection.probe_size": 128, "selection.probe_epochs": 2}, "does not fit"),
    ({"selection.probe_epochs": 0}, "config.selection.probe_epochs=0 must be"),
])
def test_bad_selection_input_is_one_line_before_any_compile(tmp_path, overrides, error):
  cfg = tiny_config(tmp_path, "dfkd", **overrides)  # dfkd: no replay.
  with pytest.raises(ValueError, match=error) as info:
    run_config.validate(cfg, parallel.make_mesh())
  assert "\n" not in str(info.value)


def test_a_probe_that_does_not_divide_over_the_devices_is_refused():
  options = {"criterion": "agreement", "probe_size": 64, "probe_epochs": 4,
             "collapse_epochs": 3}
  selection.check(options, False, 32, 4)
  with pytest.raises(ValueError, match="multiple of the device count"):
    selection.check(options, False, 32, 3)


def write_run(root, method, seed, acc, agreement, **more_criteria):
  path = pathlib.Path(root) / f"{method}_s{seed}"
  path.mkdir(parents=True)
  summary_lib.Summary.of_run(
      method=method, dataset="digits", seed=seed, teacher_accuracy=99.0,
      test_accuracy=acc, alignment=[None] * len(acc), student_steps_per_second=1.0,
      config={}, criteria={"agreement": agreement, **more_criteria},
      criterion="agreement"
  ).write(path / report.SUMMARY_FILE)


def test_report_adds_acc_sel_acc_last_and_each_criterions_regret(tmp_path):
  rng = np.random.default_rng(0)
  regrets = {"lra_mb": [], "mb_dfkd": []}
  for seed in range(3):
    for method, shift in (("lra_mb", 2.0), ("mb_dfkd", 0.0)):
      acc = list(60 + shift + rng.normal(0, 3, 6))
      write_run(tmp_path / "runs", method, seed, acc, [a / 100 for a in acc])
      regrets[method].append(max(acc) - acc[-1])
  # A run made before selection still loads and reports.
  summary_lib.Summary.of_run(
      method="dfkd", dataset="digits", seed=0, teacher_accuracy=99.0,
      test_accuracy=[50.0, 60.0], alignment=[None, None], student_steps_per_second=1.0,
      config={}).write((tmp_path / "runs" / "old").mkdir() or
                       tmp_path / "runs" / "old" / report.SUMMARY_FILE)
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  table = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  assert "| Acc_max | Acc_sel | Acc_last |" in table
  assert "### Data-free model selection" in table
  with open(tmp_path / "out" / report.SELECTION_CSV) as f:
    rows = {(r["method"], r["criterion"]): r for r in csv.DictReader(f)}
  assert ("dfkd", "last") not in rows  # No criteria recorded.
  for method, values in regrets.items():
    np.testing.assert_allclose(float(rows[method, "last"]["regret_mean"]),
                               np.mean(values))
    # agreement tracks the accuracy exactly: no regret, rank correlation 1.
    assert float(rows[method, "agreement"]["regret_mean"]) == 0.0
    np.testing.assert_allclose(float(rows[method, "agreement"]["spearman_mean"]), 1.0)
  with open(tmp_path / "out" / report.TABLE_CSV) as f:
    records = {r["method"]: r for r in csv.DictReader(f)}
  assert records["dfkd"]["acc_sel_mean"] == ""
  np.testing.assert_allclose(float(records["lra_mb"]["acc_sel_mean"]),
                             float(records["lra_mb"]["acc_max_mean"]))
  with open(tmp_path / "out" / report.PAIRED_CSV) as f:
    columns = {r["column"] for r in csv.DictReader(f)}
  assert {"acc_sel", "acc_last", "acc_max"} <= columns


def test_regret_against_the_last_epoch_has_t_intervals_holm_p_and_a_pooled_row(tmp_path):
  """A criterion that tracks the curve has regret 0; against ``last`` its paired
  difference is minus the last epoch's regret, with the paired t interval and p; the
  pooled row has only the criteria every method records."""
  rng = np.random.default_rng(1)
  last_regrets = {"lra_mb": [], "mb_dfkd": []}
  for seed in range(4):
    for method in last_regrets:
      acc = list(60 + rng.normal(0, 3, 6))
      replay = ({"replay_agreement": [a / 100 for a in acc[::-1]]}
                if method == "lra_mb" else {})
      write_run(tmp_path / "runs", method, seed, acc, [a / 100 for a in acc], **replay)
      last_regrets[method].append(max(acc) - acc[-1])
  runs = study_runs.group_runs(study_runs.load_runs([tmp_path / "runs"]))["digits"]
  table = {(row.method, row.criterion): row for row in selection_report.rows(runs)}
  pooled = selection_report.ALL_METHODS
  assert {c for m, c in table if m == pooled} == {"last", "agreement"}
  assert ("lra_mb", "replay_agreement") in table
  last_regrets[pooled] = last_regrets["lra_mb"] + last_regrets["mb_dfkd"]
  cells = [row for row in table.values() if row.versus_last is not None]
  assert len(cells) == 4  # agreement x 3 rows, replay_agreement x 1; none for last.
  p_values = []
  for method, regrets in last_regrets.items():
    regrets = np.asarray(regrets)
    last, agreement = table[method, "last"], table[method, "agreement"]
    assert last.versus_last is None
    np.testing.assert_allclose(last.regret_interval,
                               stats.ttest_1samp(regrets, 0).confidence_interval())
    assert agreement.regret == (0.0, 0.0)
    d = agreement.versus_last
    np.testing.assert_allclose(d.mean, -regrets.mean())
    expected = stats.ttest_rel(np.zeros_like(regrets), regrets)
    np.testing.assert_allclose([d.ci_low, d.ci_high], expected.confidence_interval())
    np.testing.assert_allclose(d.t_p, expected.pvalue)
    p_values.append(d.t_p)
  # Holm over the table's four cells: the smallest p is multiplied by 4.
  p_values.append(table["lra_mb", "replay_agreement"].versus_last.t_p)
  smallest = min(cells, key=lambda row: row.versus_last.t_p).versus_last
  np.testing.assert_allclose(smallest.adjusted_p, min(1.0, 4 * min(p_values)))
  text = selection_report.markdown(list(table.values()))
  assert "4 criterion-vs-last cells" in text and f"| {pooled} | agreement | 8 |" in text

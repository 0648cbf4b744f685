"""Time to accuracy in the report (``--time_budgets``): summaries with known
train_seconds, train_cpu_seconds, cpu_cores and test accuracy give known cells,
verdicts and files, charged by the clock ``--time_clock`` says."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from dfkd_jax import report as report_cli
from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.study import figures
from dfkd_jax.study import paired_stats
from dfkd_jax.study import report
from dfkd_jax.study import study_runs
from dfkd_jax.study import time_report
from dfkd_jax.study import time_to_accuracy as tta

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(root, method, seed, acc, seconds=None, cores=1, num_seeds=None,
              per_epoch=10, criterion="last", dataset="mnist", cpu_seconds=None,
              host=None):
  """A trainer's summary.json: per-epoch ``acc`` and cumulative ``seconds`` (wall) and
  ``cpu_seconds`` (process CPU; ``None``: not recorded)."""
  config = {"method": method, "seed": seed, "num_epochs": len(acc),
            "iterations_per_epoch": per_epoch}
  if num_seeds is not None:
    config["num_seeds"] = num_seeds
  folder = pathlib.Path(root) / f"{dataset}_{method}_s{seed}"
  folder.mkdir(parents=True, exist_ok=True)
  summary_lib.Summary.of_run(
      method=method, dataset=dataset, seed=seed, teacher_accuracy=99.0,
      test_accuracy=[float(a) for a in acc], alignment=[None] * len(acc),
      student_steps_per_second=1.0, config=config, criterion=criterion,
      train_seconds=() if seconds is None else seconds,
      cpu_cores=cores, train_cpu_seconds=cpu_seconds or (), host=host
  ).write(folder / report.SUMMARY_FILE)
  return folder


def time_json(out):
  return json.loads((pathlib.Path(out) / tta.TIME_JSON).read_text())


def method_json(data, method, dataset="mnist"):
  return next(m for m in data["datasets"][dataset]["methods"] if m["method"] == method)


def per_seed(data, method, seed, dataset="mnist"):
  """{budget: accuracy or None} of one seed."""
  return {b["budget"]: b["per_seed"][str(seed)]
          for b in method_json(data, method, dataset)["budgets"]}


# ---------------------------------------------------------------------------
# Accuracy at a budget, and the cost.
# ---------------------------------------------------------------------------


def test_accuracy_at_a_budget_is_the_last_epoch_within_it_never_extrapolated(tmp_path):
  # Epochs end at 1, 2 and 3 core-minutes (1 core, 1 seed).
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0, 70.0], [60.0, 120.0, 180.0])
  budgets = [0.5, 1.0, 1.5, 2.99, 3.0, 3.5]
  report.write_report([tmp_path / "runs"], tmp_path / "out", time_budgets=budgets)
  assert per_seed(time_json(tmp_path / "out"), "dfkd", 0) == {
      0.5: None,    # Before the first epoch: not reached.
      1.0: 50.0,    # At an epoch's end: that epoch.
      1.5: 50.0,    # Between epochs: the last one completed.
      2.99: 60.0,
      3.0: 70.0,
      3.5: None}    # Past the run's end: not reached, not its last accuracy.
  rows = table_rows((tmp_path / "out" / tta.TIME_MARKDOWN).read_text())
  assert rows["dfkd"][2:8] == ["not reached", "50.00 (n=1)", "50.00 (n=1)",
                               "60.00 (n=1)", "70.00 (n=1)", "not reached"]
  assert rows["dfkd"][8:] == ["70.00", "3 (last)", "70.00", "6.000", "1.0, 3.0",
                              "wall × cores"]   # No train_cpu_seconds: wall x cores.


def table_rows(text):
  """{method: cells} of the time tables."""
  rows, inside = {}, False
  for line in text.splitlines():
    if line.startswith("| Method"):
      inside = True
    elif line.startswith("| ") and inside:
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows[cells[0]] = cells
    elif not line.startswith("|"):
      inside = False
  return rows


@pytest.mark.parametrize("cores, expected", [(1, [0.5, 1.0, 1.5]), (2, [1.0, 2.0, 3.0])])
def test_core_seconds_per_seed_count_the_cores_and_divide_by_the_seeds(tmp_path, cores,
                                                                       expected):
  # A program of 3 seeds (replicas) on `cores` cores: 90 s a program epoch.
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0, 70.0], [90.0, 180.0, 270.0],
            cores=cores, num_seeds=3)
  run, = study_runs.load_runs([tmp_path / "runs"])
  assert (run.num_seeds, run.cpu_cores) == (3, cores)
  timed, left_out = tta.timed_runs([run])
  assert not left_out
  np.testing.assert_allclose(timed[0].core_seconds / 60, expected)
  # 30 iterations per seed over 3 epochs: 270 s x cores / 3 seeds / 30.
  np.testing.assert_allclose(timed[0].seconds_per_iteration, 3.0 * cores)
  report.write_report([tmp_path / "runs"], tmp_path / "out", time_budgets=[1.0, 2.5])
  at = per_seed(time_json(tmp_path / "out"), "dfkd", 0)
  assert at == ({1.0: 60.0, 2.5: None} if cores == 1 else {1.0: 50.0, 2.5: 60.0})


def test_num_seeds_is_one_when_the_config_lacks_it(tmp_path):
  write_run(tmp_path / "runs", "dfkd", 0, [50.0], [120.0], cores=2)
  run, = study_runs.load_runs([tmp_path / "runs"])
  assert run.num_seeds == 1
  np.testing.assert_allclose(tta.timed_runs([run])[0][0].core_seconds, [240.0])


@pytest.mark.parametrize("cpu_seconds, at, clock, end", [
    # No CPU seconds (a run made before them): 120 s a program epoch x 2 cores / 2 seeds.
    ([], {1.5: None, 3.0: 50.0, 4.0: 60.0}, tta.WALL_CLOCK, 240.0),
    # Process CPU: 180 CPU seconds a program epoch / 2 seeds, whatever the cores.
    ([180.0, 360.0], {1.5: 50.0, 3.0: 60.0, 4.0: None}, tta.CPU_CLOCK, 180.0),
], ids=["wall", "cpu"])
def test_reads_what_the_trainer_writes(tmp_path, cpu_seconds, at, clock, end):
  """The trainer's own summary (History -> summary.json) of a 2-seed program on 2
  cores: each seed's cost is its program's CPU seconds / 2 seeds where recorded, else
  its wall seconds x 2 cores / 2 seeds."""
  from dfkd_jax.run import experiment  # pylint: disable=g-import-not-at-top
  from dfkd_jax.run import run_outputs  # pylint: disable=g-import-not-at-top
  config = experiment.default_config()
  config.method, config.num_epochs, config.num_seeds = "dfkd", 2, 2
  for seed in range(2):
    history = run_outputs.History(teacher_accuracy=98.0, test_accuracy=[50.0, 60.0],
                                  alignment=[None, None], train_seconds=[120.0, 240.0],
                                  cpu_cores=2, train_cpu_seconds=cpu_seconds)
    folder = tmp_path / "runs" / f"seed_{seed}"
    folder.mkdir(parents=True)
    run_outputs.summary(config, history, seed).write(folder / report.SUMMARY_FILE)
  report.write_report([tmp_path / "runs"], tmp_path / "out",
                      time_budgets=[1.5, 3.0, 4.0])
  data = time_json(tmp_path / "out")
  assert per_seed(data, "dfkd", 1, "digits") == at
  row = method_json(data, "dfkd", "digits")
  assert row["cpu_cores"] == [2, 2] and row["clock"] == [clock, clock]
  np.testing.assert_allclose(row["core_seconds_per_iteration_per_seed"]["mean"],
                             end / (2 * config.iterations_per_epoch))


def clock_study(root):
  """Seed 0 records process CPU seconds (1.5 and 3 core-minutes per epoch; its wall
  clock, inflated by a loaded machine, says 4 and 8), seed 1 only wall (2 and 4)."""
  write_run(root, "dfkd", 0, [50.0, 60.0], [120.0, 240.0], cores=2,
            cpu_seconds=[90.0, 180.0])
  write_run(root, "dfkd", 1, [52.0, 62.0], [60.0, 120.0], cores=2)


@pytest.mark.parametrize("flags, at_0, clocks", [
    ([], {1.5: 50.0, 3.0: 60.0, 4.0: None, 8.0: None}, [tta.CPU_CLOCK, tta.WALL_CLOCK]),
    (["--time_clock=cpu"], {1.5: 50.0, 3.0: 60.0, 4.0: None, 8.0: None},
     [tta.CPU_CLOCK, tta.WALL_CLOCK]),
    (["--time_clock=wall"], {1.5: None, 3.0: None, 4.0: 50.0, 8.0: 60.0},
     [tta.WALL_CLOCK, tta.WALL_CLOCK]),
], ids=["default", "cpu", "wall"])
def test_the_clock_is_process_cpu_where_recorded_else_wall_x_cores(tmp_path, capsys,
                                                                   flags, at_0, clocks):
  clock_study(tmp_path / "runs")
  code = report_cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                          "--time_budgets=1.5,3,4,8", *flags])
  assert code == 0, capsys.readouterr().err
  data = time_json(tmp_path / "out")
  assert per_seed(data, "dfkd", 0) == at_0
  assert per_seed(data, "dfkd", 1) == {1.5: None, 3.0: 52.0, 4.0: 62.0, 8.0: None}
  assert method_json(data, "dfkd")["clock"] == clocks
  wall = flags == ["--time_clock=wall"]
  assert data["time_clock"] == ("wall" if wall else "cpu")
  assert data["cost"] == time_report.COST[data["time_clock"]]
  text = (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  assert text.count(time_report.cost_text(data["time_clock"])) == 1
  clock_cell = table_rows(text)["dfkd"][-1]
  mixed = ("Charged by wall × cores (their summary.json has no train_cpu_seconds), "
           "beside runs charged by process CPU: dfkd seed 1.")
  if wall:
    assert clock_cell == "wall × cores" and mixed not in text
    assert "for every run (--time_clock=wall" in text
  else:
    assert clock_cell == "process CPU: 1 (seed 0); wall × cores: 1 (seed 1)"
    assert mixed in text
    assert "`train_cpu_seconds / num_seeds` where summary.json records it" in text


@pytest.mark.parametrize("cores", [1, 2, 8])
@pytest.mark.parametrize("num_seeds", [1, 3])
def test_cpu_seconds_are_core_seconds_whatever_the_cores_divided_by_the_seeds(
    tmp_path, cores, num_seeds):
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0], [100.0, 200.0], cores=cores,
            num_seeds=num_seeds, cpu_seconds=[150.0, 300.0])
  run, = study_runs.load_runs([tmp_path / "runs"])
  (timed,), _ = tta.timed_runs([run])
  np.testing.assert_allclose(timed.core_seconds, np.array([150.0, 300.0]) / num_seeds)
  assert (timed.clock, timed.cores, timed.assumed) == (tta.CPU_CLOCK, cores, False)
  (walled,), _ = tta.timed_runs([run], time_clock="wall")
  np.testing.assert_allclose(walled.core_seconds,
                             np.array([100.0, 200.0]) * cores / num_seeds)
  assert walled.clock == tta.WALL_CLOCK


def test_step_mean_is_over_the_range_every_seed_covers():
  curves = [(np.array([1.0, 2.0, 4.0]), np.array([10.0, 20.0, 40.0])),
            (np.array([1.5, 3.0]), np.array([30.0, 50.0]))]
  mean = tta.step_mean(curves)
  np.testing.assert_allclose(mean.x, [1.5, 2.0, 3.0])   # From 1.5 to 3.0 only.
  np.testing.assert_allclose(mean.mean, [20.0, 25.0, 35.0])
  np.testing.assert_allclose(mean.low, [10.0, 20.0, 20.0])
  np.testing.assert_allclose(mean.high, [30.0, 30.0, 50.0])
  assert tta.step_mean([(np.array([1.0]), np.array([1.0])),
                        (np.array([2.0]), np.array([2.0]))]) is None  # No overlap.


def test_a_budget_some_seeds_did_not_reach_counts_only_those_that_did(tmp_path):
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0], [60.0, 120.0])
  write_run(tmp_path / "runs", "dfkd", 1, [54.0, 62.0, 64.0], [60.0, 120.0, 180.0])
  report.write_report([tmp_path / "runs"], tmp_path / "out", time_budgets=[2, 3])
  cells = table_rows((tmp_path / "out" / tta.TIME_MARKDOWN).read_text())["dfkd"]
  assert cells[2] == f"61.00 ± {math.sqrt(2):.2f} (n=2)"
  assert cells[3] == "64.00 (n=1; 1 not reached)"
  budget = method_json(time_json(tmp_path / "out"), "dfkd")["budgets"][1]
  assert (budget["mean"], budget["n"], budget["not_reached"]) == (64.0, 1, 1)


# ---------------------------------------------------------------------------
# Paired verdicts at the budgets, and Holm's family.
# ---------------------------------------------------------------------------

SEEDS = range(5)


def paired_study(root, shift=3.0, hosts=(None, None)):
  """lra_mb and mb_dfkd, 5 seeds; lra_mb's epochs cost 1.5 core-minutes, mb_dfkd's 1;
  timed on ``hosts`` (lra_mb's, mb_dfkd's; ``None``: not recorded)."""
  rng = np.random.default_rng(0)
  for seed in SEEDS:
    base = 50.0 + np.cumsum(rng.normal(4.0, 1.0, 6))
    write_run(root, "lra_mb", seed, base + shift + rng.normal(0, 0.5, 6),
              [90.0 * (e + 1) for e in range(6)], host=hosts[0])
    write_run(root, "mb_dfkd", seed, base + rng.normal(0, 0.5, 6),
              [60.0 * (e + 1) for e in range(6)], host=hosts[1])


def accuracy_at(root, method, seed, budget):
  """The accuracy at ``budget`` read back from the written summary (the test's own)."""
  summary = summary_lib.Summary.load(
      pathlib.Path(root) / f"mnist_{method}_s{seed}" / report.SUMMARY_FILE)
  done = [a for a, t in zip(summary.test_accuracy, summary.train_seconds)
          if t <= budget * 60]
  return done[-1]


def test_paired_verdicts_are_scipy_s_numbers_with_holm_over_the_whole_family(tmp_path):
  paired_study(tmp_path / "runs")
  budgets = [2.0, 4.5, 7.0]   # 7 core-minutes: past mb_dfkd's end (6): not compared.
  report.write_report([tmp_path / "runs"], tmp_path / "out",
                      pairs=[("lra_mb", "mb_dfkd")], time_budgets=budgets)
  cells = time_json(tmp_path / "out")["datasets"]["mnist"]["pairs"]
  assert [c["budget"] for c in cells] == [2.0, 4.5]
  for cell in cells:
    a = [accuracy_at(tmp_path / "runs", "lra_mb", s, cell["budget"]) for s in SEEDS]
    b = [accuracy_at(tmp_path / "runs", "mb_dfkd", s, cell["budget"]) for s in SEEDS]
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (cell["method_a"], cell["method_b"], cell["n"]) == ("lra_mb", "mb_dfkd", 5)
    np.testing.assert_allclose(cell["mean_difference"], d.mean())
    np.testing.assert_allclose([cell["ci_low"], cell["ci_high"]],
                               [d.mean() - half, d.mean() + half])
    np.testing.assert_allclose(cell["t_p"], stats.ttest_rel(a, b).pvalue)
    np.testing.assert_allclose(cell["wilcoxon_p"], stats.wilcoxon(d).pvalue)
  # One family: paired.md's cells, then the time cells, adjusted together.
  with open(tmp_path / "out" / report.PAIRED_CSV) as f:
    table = list(csv.DictReader(f))
  raw = [float(r["t_p"]) for r in table] + [c["t_p"] for c in cells]
  holm = paired_stats.holm(raw)
  np.testing.assert_allclose([float(r["holm_p"]) for r in table], holm[:len(table)])
  np.testing.assert_allclose([c["holm_p"] for c in cells], holm[len(table):])
  assert holm[-1] > cells[-1]["t_p"]   # The correction did something.
  family = (f"all {len(raw)} cells of paired.md and time_to_accuracy.md ({len(table)} "
            "in paired.md: every dataset × pair × Table 1 column; 2 in "
            "time_to_accuracy.md: every dataset × pair × time budget)")
  assert family in (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  assert family in (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text()
  text = (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  assert "### lra_mb − mb_dfkd" in text and "| ≤ 4.5 | 5 (seeds 0-4) |" in text
  assert ("Not compared (fewer than 2 seeds of both reached it): ≤ 7 core-minutes per "
          "seed.") in text


def test_a_true_difference_at_a_budget_is_marked(tmp_path):
  paired_study(tmp_path / "runs", shift=12.0)
  report.write_report([tmp_path / "runs"], tmp_path / "out",
                      pairs=[("lra_mb", "mb_dfkd")], time_budgets=[3.0])
  cell, = time_json(tmp_path / "out")["datasets"]["mnist"]["pairs"]
  assert cell["significant"] == 1 and cell["holm_p"] < 0.05
  row = next(line for line in (tmp_path / "out" / tta.TIME_MARKDOWN).read_text(
      ).splitlines() if line.startswith("| ≤ 3 |"))
  assert f"| **{cell['mean_difference']:+.2f}** * |" in row and row.endswith("| - |")


def test_without_time_budgets_the_family_is_paired_md_alone(tmp_path):
  paired_study(tmp_path / "runs")
  result = report.write_report([tmp_path / "runs"], tmp_path / "out",
                               pairs=[("lra_mb", "mb_dfkd")])
  assert not (tmp_path / "out" / tta.TIME_MARKDOWN).exists()
  assert not any("time_to_accuracy" in str(p) for p in result["files"])
  with open(tmp_path / "out" / report.PAIRED_CSV) as f:
    table = list(csv.DictReader(f))
  np.testing.assert_allclose([float(r["holm_p"]) for r in table],
                             paired_stats.holm([float(r["t_p"]) for r in table]))
  assert f"all {len(table)} cells below" in (tmp_path / "out" /
                                             report.PAIRED_MARKDOWN).read_text()


INTEL, AMD = "Intel(R) Xeon(R) Processor", "AMD EPYC 7B13"


@pytest.mark.parametrize("hosts, given, compared", [
    ((None, None), {}, True),              # Neither records one (older runs): as before.
    ((INTEL, INTEL), {}, True),
    ((INTEL, AMD), {}, False),
    ((INTEL, None), {}, False),            # A host beside runs that name none.
    ((None, None), {"lra_mb": INTEL}, False),   # --host for one method's old runs.
    ((None, None), {"lra_mb": INTEL, "mb_dfkd": INTEL}, True),
    ((AMD, None), {"lra_mb": INTEL, "mb_dfkd": AMD}, True),   # A run's record wins.
])
def test_methods_are_compared_by_time_only_on_one_host(tmp_path, hosts, given, compared):
  paired_study(tmp_path / "runs", hosts=hosts)
  report.write_report([tmp_path / "runs"], tmp_path / "out", pairs=[("lra_mb", "mb_dfkd")],
                      time_budgets=[2.0, 4.5], hosts=given)
  data = time_json(tmp_path / "out")
  assert len(data["datasets"]["mnist"]["pairs"]) == (2 if compared else 0)
  text = (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  assert ("Not compared at any budget (their runs were timed on different hosts): "
          "lra_mb − mb_dfkd." in text) == (not compared)
  # The cells at the same iterations (paired.md) do not depend on the host.
  with open(tmp_path / "out" / report.PAIRED_CSV) as f:
    assert len(list(csv.DictReader(f))) > 0
  recorded = {m: hosts[i] or given.get(m) for i, m in enumerate(("lra_mb", "mb_dfkd"))}
  for method, host in recorded.items():
    assert method_json(data, method)["host"] == [host] * len(SEEDS)
  # The table and the figure name the hosts when there are two.
  runs = tta.with_hosts(study_runs.load_runs([tmp_path / "runs"]), given)
  timed = {m: tta.timed_runs(rs)[0]
           for m, rs in study_runs.group_runs(runs)["mnist"].items()}
  labels = list(time_report.figure_panels(timed)[0][1])
  if compared:
    assert "Timed on more than one host" not in text
    assert sorted(labels) == ["lra_mb", "mb_dfkd"]
  else:
    named = {m: tta.host_text(h) for m, h in recorded.items()}
    assert (f"Timed on more than one host (a core-second of one machine is not one of "
            f"another; methods are compared by time only on one host): mb_dfkd: "
            f"{named['mb_dfkd']}; lra_mb: {named['lra_mb']}.") in text
    assert sorted(labels) == [f"{m} ({named[m]})" for m in ("lra_mb", "mb_dfkd")]


def test_parse_hosts():
  assert tta.parse_hosts(["lra_mb=Intel(R) Xeon(R) Processor", " dfad = AMD EPYC "]) == {
      "lra_mb": "Intel(R) Xeon(R) Processor", "dfad": "AMD EPYC"}
  assert tta.parse_hosts(["a=X", "a=X"]) == {"a": "X"}
  with pytest.raises(ValueError, match="^--host gives a two hosts, 'X' and 'Y'; pass one"):
    tta.parse_hosts(["a=X", "a=Y"])


# ---------------------------------------------------------------------------
# The figure, runs without timing, the command line.
# ---------------------------------------------------------------------------


def test_a_folder_dataset_names_its_figure_by_its_folder(tmp_path):
  dataset = "folder:/data/cifar10_jpeg"
  for seed in range(2):
    write_run(tmp_path / "runs", "dfkd", seed, [20.0, 40.0 + seed], seconds=[60.0, 120.0],
              dataset=dataset)
  result = report.write_report([tmp_path / "runs"], tmp_path / "out", time_budgets=[1.0])
  png = tmp_path / "out" / f"folder_cifar10_jpeg_{tta.FIGURE}"
  assert png in result["files"] and png.read_bytes().startswith(PNG_SIGNATURE)
  assert f"]({png.name})" in (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()


def test_the_figure_is_written_with_a_panel_against_time_and_one_against_iterations(
    tmp_path):
  paired_study(tmp_path / "runs")
  result = report.write_report([tmp_path / "runs"], tmp_path / "out",
                               time_budgets=[2.0, 4.0])
  png = tmp_path / "out" / f"mnist_{tta.FIGURE}"
  assert png in result["files"]
  assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 5000
  assert f"]({png.name})" in (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  runs = study_runs.group_runs(study_runs.load_runs([tmp_path / "runs"]))["mnist"]
  study = tta.TimeStudy.of({"mnist": runs}, [2.0, 4.0], [])
  panels = time_report.figure_panels(study.timed["mnist"])
  fig = figures.step_figure(panels, "t", tta.BAND, 99.0, [2.0, 4.0], "budgets")
  time_axis, iteration_axis = fig.axes
  assert time_axis.get_xlabel() == "core-minutes per seed"
  assert iteration_axis.get_xlabel() == "iterations per seed"
  legend = [t.get_text() for t in time_axis.get_legend().get_texts()]
  assert legend == ["mb_dfkd (n=5)", "lra_mb (n=5)", "teacher (99.00%)", "budgets",
                    "band: min–max over seeds"]
  means = {line.get_label(): line for line in iteration_axis.lines
           if not line.get_label().startswith("_")}
  expected = np.mean([r.test_accuracy for r in runs["lra_mb"]], axis=0)
  np.testing.assert_allclose(means["lra_mb (n=5)"].get_ydata(), expected)
  np.testing.assert_allclose(means["lra_mb (n=5)"].get_xdata(), 10 * np.arange(1, 7))


def test_runs_without_train_seconds_or_cores_are_listed_and_left_out(tmp_path):
  runs = tmp_path / "runs"
  write_run(runs, "dfkd", 0, [50.0, 60.0], [60.0, 120.0])
  write_run(runs, "dfkd", 1, [52.0, 58.0], cores=None)         # Before train_seconds.
  write_run(runs, "mb_dfkd", 0, [40.0, 45.0], [30.0, 60.0], cores=None)  # No cores.
  lines = []
  result = report.write_report([runs], tmp_path / "out", time_budgets=[1.0],
                               log=lines.append)
  text = (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  assert ("Left out of the time table: dfkd seed 1: no train_seconds (made before it "
          "was recorded); mb_dfkd seed 0: no cpu_cores (an accelerator or multi-process "
          "run, or made before it was recorded; --cpu_cores=N gives such runs N).") in text
  assert list(table_rows(text)) == ["dfkd"]
  assert table_rows(text)["dfkd"][1] == "1 (seed 0)"
  assert lines == [f"time to accuracy: 2 run(s) left out, without train_seconds or "
                   f"cpu_cores (listed in {tmp_path / 'out' / tta.TIME_MARKDOWN})"]
  assert len(result["runs"]) == 3   # Table 1 keeps them all.
  # --cpu_cores gives the runs without cores that many, and says so.
  report.write_report([runs], tmp_path / "out2", time_budgets=[1.0], cpu_cores=2)
  text = (tmp_path / "out2" / tta.TIME_MARKDOWN).read_text()
  assert list(table_rows(text)) == ["dfkd", "mb_dfkd"]
  assert ("Cores given by --cpu_cores=2 (their summary.json does not record them): "
          "mb_dfkd seed 0.") in text
  assert per_seed(time_json(tmp_path / "out2"), "mb_dfkd", 0) == {1.0: 40.0}


def test_a_dataset_without_timed_runs_says_so(tmp_path):
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0], cores=None)
  report.write_report([tmp_path / "runs"], tmp_path / "out", time_budgets=[1.0])
  text = (tmp_path / "out" / tta.TIME_MARKDOWN).read_text()
  assert "No run of this dataset records train_seconds and cpu_cores" in text
  assert not (tmp_path / "out" / f"mnist_{tta.FIGURE}").exists()


def test_parse_budgets():
  assert tta.parse_budgets("60, 15,30,15") == (15.0, 30.0, 60.0)
  assert tta.parse_budgets("7.5") == (7.5,)


@pytest.mark.parametrize("flags, message", [
    (["--time_budgets=15,x"], "error: --time_budgets item 'x' is not a positive number "
                              "of core-minutes per seed; pass e.g. --time_budgets=15,30,60"),
    (["--time_budgets=0"], "error: --time_budgets item '0' is not a positive number"),
    (["--time_budgets=-5,10"], "error: --time_budgets item '-5' is not a positive"),
    (["--time_budgets=nan"], "error: --time_budgets item 'nan' is not a positive"),
    (["--time_budgets=10,,20"], "error: --time_budgets item '' is not a positive"),
    (["--cpu_cores=2"], "error: --cpu_cores=2 is for the time table; pass "
                        "--time_budgets too (e.g. --time_budgets=15,30,60)"),
    (["--time_budgets=10", "--cpu_cores=0"], "error: --cpu_cores=0 is not a positive "
                                             "number of cores"),
    (["--time_budgets=10", "--time_clock=gpu"],
     "error: --time_clock=gpu is not a clock; pass cpu (process CPU seconds where "
     "recorded, else wall x cores) or wall (always wall x cores)"),
    (["--time_budgets=10", "--time_clock="], "error: --time_clock= is not a clock"),
    (["--time_clock=wall"], "error: --time_clock=wall is for the time table; pass "
                            "--time_budgets too (e.g. --time_budgets=15,30,60)"),
    (["--time_budgets=10", "--host=dfkd"],
     "error: --host=dfkd is not METHOD=HOST; pass e.g. --host='lra_mb=Intel(R) Xeon(R) "
     "Processor' for the runs of lra_mb whose summary.json does not record their host"),
    (["--time_budgets=10", "--host=dfkd="], "error: --host=dfkd= is not METHOD=HOST"),
    (["--host=dfkd=AMD EPYC"], "error: --host=dfkd=AMD EPYC is for the time table; pass "
                               "--time_budgets too (e.g. --time_budgets=15,30,60)"),
    (["--time_budgets=10", "--host=dfad=AMD EPYC"],
     "error: --host names method(s) ['dfad'] that no run has; the runs' methods are "
     "['dfkd']"),
])
def test_bad_time_flags_are_one_line_errors(tmp_path, capsys, flags, message):
  write_run(tmp_path / "runs", "dfkd", 0, [50.0], [60.0])
  code = report_cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                          *flags])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith(message) and err.count("\n") == 1, err
  assert not (tmp_path / "out").exists()


def test_cli_end_to_end(tmp_path):
  paired_study(tmp_path / "runs")
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0], cores=None)  # An old run.
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.report", str(tmp_path / "runs"), "--out",
       str(tmp_path / "out"), "--time_budgets=2,4", "--pairs=lra_mb:mb_dfkd"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and not proc.stderr, proc.stderr
  assert "time to accuracy: 1 run(s) left out" in proc.stdout
  assert "time_to_accuracy.md" in proc.stdout.splitlines()[-1]
  data = time_json(tmp_path / "out")
  assert data["budgets"] == [2.0, 4.0] and data["unit"] == "core-minutes per seed"
  assert [p["budget"] for p in data["datasets"]["mnist"]["pairs"]] == [2.0, 4.0]
  assert f"]({tta.TIME_MARKDOWN})" in (tmp_path / "out" / report.TABLE_MARKDOWN
                                       ).read_text()

"""Tests of the results report on synthetic summary.json files with known values."""

import csv
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from dfkd_jax.methods import presets as methods
from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.run import experiment
from dfkd_jax.study import figures
from dfkd_jax.study import paired_stats
from dfkd_jax.study import report
from dfkd_jax.study import study_runs

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PERCENTILES = ("0", "20", "40", "60", "80")


def summary(method, seed, acc, evolution, acc_max, dataset="mnist", alignment=None,
            teacher=99.0, steps=10.0):
  """A summary.json dict whose table values are given directly (not computed)."""
  out = {"method": method, "dataset": dataset, "seed": seed, "teacher_accuracy": teacher,
         "test_accuracy": list(acc), "acc_max": acc_max,
         "learning_evolution": {p: {"mean": m, "var": v}
                                for p, (m, v) in zip(PERCENTILES, evolution)},
         "cumulative_mean_accuracy": [sum(acc[:i + 1]) / (i + 1) for i in range(len(acc))],
         "student_steps_per_second": steps, "config": {"method": method}}
  if alignment is not None:
    out["alignment"] = alignment
  return out


def write(root, name, data):
  path = pathlib.Path(root) / name
  path.mkdir(parents=True, exist_ok=True)
  (path / report.SUMMARY_FILE).write_text(
      data if isinstance(data, str) else json.dumps(data))
  return path


# lra_mb: three seeds with chosen per-percentile values; dfkd: one seed.
LRA_EVOLUTION = {0: [(80.0, 4.0), (70.0, 3.0), (75.0, 2.0), (78.0, 1.0), (79.0, 0.5)],
                 1: [(82.0, 6.0), (72.0, 3.0), (76.0, 2.0), (79.0, 1.0), (80.0, 0.5)],
                 2: [(84.0, 8.0), (74.0, 3.0), (77.0, 2.0), (80.0, 1.0), (81.0, 0.5)]}
LRA_ACC_MAX = {0: 90.0, 1: 91.0, 2: 95.0}
LRA_CURVES = {0: [50.0, 60.0, 70.0], 1: [52.0, 64.0, 70.0], 2: [54.0, 62.0, 76.0]}


@pytest.fixture
def runs_dir(tmp_path):
  root = tmp_path / "runs"
  for seed in range(3):
    write(root, f"lra_mb_s{seed}",
          summary("lra_mb", seed, LRA_CURVES[seed], LRA_EVOLUTION[seed],
                  LRA_ACC_MAX[seed], alignment=[None, 0.1 * (seed + 1), 0.2],
                  steps=10.0 + seed))
  write(root / "baselines", "dfkd_s0",
        summary("dfkd", 0, [40.0, 45.0, 50.0], [(45.0, 16.5), (47.5, 6.25), (47.5, 6.25),
                                                 (50.0, 0.0), (50.0, 0.0)], 50.0))
  write(root, "custom_s7",
        summary("my_new_method", 7, [30.0, 31.0, 32.0], [(31.0, 0.5)] * 5, 32.0))
  write(root, "mb_dfkd_s0",
        summary("mb_dfkd", 0, [45.0, 55.0, 65.0], [(55.0, 66.0)] * 5, 65.0))
  return root


def sample_std(values):
  m = sum(values) / len(values)
  return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def markdown_rows(text):
  """{method: [cells]} of the rows of the Table 1 Markdown tables (not the data-free
  selection tables that may follow them)."""
  rows, table1 = {}, False
  for line in text.splitlines():
    if line.startswith("| Method"):
      table1 = line.startswith("| Method | Runs (seeds)")
    elif line.startswith("| ") and table1:
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows[cells[0]] = cells
  return rows


def test_table_cells_are_mean_and_sample_std_over_seeds(runs_dir, tmp_path):
  result = report.write_report([runs_dir], tmp_path / "out")
  text = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  rows = markdown_rows(text)
  cells = rows["lra_mb"]
  assert cells[1:3] == ["3 (seeds 0-2)", "3"]
  for i, p in enumerate(PERCENTILES):
    means = [LRA_EVOLUTION[s][i][0] for s in range(3)]
    varis = [LRA_EVOLUTION[s][i][1] for s in range(3)]
    mean_cell, var_cell = cells[3 + 2 * i], cells[4 + 2 * i]
    assert mean_cell == f"{sum(means) / 3:.2f} ± {sample_std(means):.2f}", p
    assert var_cell == f"{sum(varis) / 3:.2f} ± {sample_std(varis):.2f}", p
  # Hand-computed: mean(80, 82, 84) = 82, std = 2; Acc_max mean(90, 91, 95) = 92,
  # std = sqrt((4 + 1 + 9) / 2) = sqrt(7).
  assert cells[3] == "82.00 ± 2.00"
  assert cells[4] == "6.00 ± 2.00"
  assert cells[13] == f"92.00 ± {math.sqrt(7):.2f}"
  assert cells[14] == "11.0 ± 1.0"
  # One run: its own values, without a spread.
  assert rows["dfkd"][3:5] == ["45.00", "16.50"]
  assert rows["dfkd"][13] == "50.00"
  assert len(result["runs"]) == 6


def test_csv_has_the_numbers_and_empty_std_for_one_run(runs_dir, tmp_path):
  report.write_report([runs_dir], tmp_path / "out")
  with open(tmp_path / "out" / report.TABLE_CSV) as f:
    records = {r["method"]: r for r in csv.DictReader(f)}
  lra = records["lra_mb"]
  assert lra["runs"] == "3" and lra["seeds"] == "0 1 2" and lra["dataset"] == "mnist"
  np.testing.assert_allclose(float(lra["mean_above_p20_mean"]), 72.0)
  np.testing.assert_allclose(float(lra["mean_above_p20_std"]), 2.0)
  np.testing.assert_allclose(float(lra["var_above_p80_mean"]), 0.5)
  np.testing.assert_allclose(float(lra["var_above_p80_std"]), 0.0)
  np.testing.assert_allclose(float(lra["acc_max_std"]), math.sqrt(7))
  assert records["dfkd"]["acc_max_std"] == ""
  np.testing.assert_allclose(float(records["dfkd"]["acc_max_mean"]), 50.0)


def test_rows_follow_the_paper_order_with_unknown_methods_last(runs_dir, tmp_path):
  report.write_report([runs_dir], tmp_path / "out")
  rows = markdown_rows((tmp_path / "out" / report.TABLE_MARKDOWN).read_text())
  assert list(rows) == ["dfkd", "mb_dfkd", "lra_mb", "my_new_method"]


def test_figures_are_written_as_non_empty_pngs(runs_dir, tmp_path):
  result = report.write_report([runs_dir], tmp_path / "out")
  names = ("mnist_test_accuracy.png", "mnist_cumulative_mean_accuracy.png",
           "mnist_alignment.png")
  for name in names:
    path = tmp_path / "out" / name
    assert path in result["files"]
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 5000, name
  text = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  for name in names:
    assert f"]({name})" in text


def test_every_method_of_table_1_gets_its_own_line_style():
  names = [f"method{i}" for i in range(11)]
  styles = figures.line_styles(names)
  assert len(set(styles.values())) == len(names) == len(styles)
  assert figures.line_styles(names[:3]) == {n: styles[n] for n in names[:3]}


def test_no_alignment_figure_when_no_run_logs_it(tmp_path):
  write(tmp_path / "runs", "a", summary("dfkd", 0, [1.0, 2.0], [(1.5, 0.25)] * 5, 2.0))
  result = report.write_report([tmp_path / "runs"], tmp_path / "out")
  assert not (tmp_path / "out" / "mnist_alignment.png").exists()
  assert (tmp_path / "out" / "mnist_test_accuracy.png") in result["files"]
  assert "No run logs alignment" in (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()


def test_curve_stats_ignore_missing_epochs_and_cut_to_the_common_length():
  mean, std = figures.curve_stats([np.array([1.0, np.nan, 3.0, 9.0]),
                                   np.array([3.0, 4.0, 5.0])])
  np.testing.assert_allclose(mean, [2.0, 4.0, 4.0])
  np.testing.assert_allclose(std, [math.sqrt(2), 0.0, math.sqrt(2)])
  mean, std = figures.curve_stats([np.array([np.nan, 1.0])])
  assert np.isnan(mean[0]) and np.isnan(std[0])
  np.testing.assert_allclose(mean[1:], [1.0])


def test_datasets_get_separate_tables_and_figures(tmp_path):
  write(tmp_path / "runs", "m", summary("dfkd", 0, [1.0, 2.0], [(1.5, 0.25)] * 5, 2.0))
  write(tmp_path / "runs", "c", summary("dfkd", 0, [3.0, 4.0], [(3.5, 0.25)] * 5, 4.0,
                                        dataset="cifar10"))
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  text = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  assert "## cifar10" in text and "## mnist" in text
  assert (tmp_path / "out" / "cifar10_test_accuracy.png").is_file()
  assert (tmp_path / "out" / "mnist_test_accuracy.png").is_file()
  with open(tmp_path / "out" / report.TABLE_CSV) as f:
    assert sorted(r["dataset"] for r in csv.DictReader(f)) == ["cifar10", "mnist"]


@pytest.mark.parametrize("dataset, stem", [
    ("folder:/data/cifar10_jpeg", "folder_cifar10_jpeg"),
    ("npz:../my data/digits.npz", "npz_digits.npz"),
    ("folder:DATA/", "folder_DATA"),
    ("mnist", "mnist"),
])
def test_a_file_dataset_names_its_figures_by_its_folder(tmp_path, dataset, stem):
  """A folder:/npz: dataset id holds a path: the figures are named by its last part."""
  assert figures.file_stem(dataset) == stem
  write(tmp_path / "runs", "f", summary("dfkd", 0, [1.0, 2.0], [(1.5, 0.25)] * 5, 2.0,
                                        dataset=dataset))
  result = report.write_report([tmp_path / "runs"], tmp_path / "out")
  png = tmp_path / "out" / f"{stem}_test_accuracy.png"
  assert png in result["files"] and png.is_file()
  assert f"## {dataset}" in (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()


def test_cli_end_to_end(runs_dir, tmp_path):
  out = tmp_path / "cli_out"
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.report", str(runs_dir / "lra_mb_s0"),
       str(runs_dir / "lra_mb_s1"), str(runs_dir / "baselines"), "--out", str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "3 runs" in proc.stdout
  rows = markdown_rows((out / report.TABLE_MARKDOWN).read_text())
  assert list(rows) == ["dfkd", "lra_mb"]
  assert rows["lra_mb"][3] == f"81.00 ± {sample_std([80.0, 82.0]):.2f}"
  assert (out / "mnist_cumulative_mean_accuracy.png").read_bytes().startswith(
      PNG_SIGNATURE)


def test_cli_bad_input_is_an_error_naming_the_path(tmp_path):
  bad = write(tmp_path, "bad", "{not json")
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.report", str(bad), "--out", str(tmp_path / "o")],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert f"{bad / report.SUMMARY_FILE}" in proc.stderr and "not valid JSON" in proc.stderr
  assert not (tmp_path / "o").exists()


def _without(key):
  data = summary("dfkd", 0, [1.0], [(1.0, 0.0)] * 5, 1.0)
  del data[key]
  return data


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected a JSON object"),
    (_without("learning_evolution"), r"missing field\(s\) \['learning_evolution'\]"),
    (_without("method"), r"missing field\(s\) \['method'\]"),
    (dict(summary("dfkd", 0, [1.0, 2.0], [(1.0, 0.0)] * 5, 1.0), test_accuracy=[1.0, "x"]),
     r"test_accuracy\[1\] must be a finite number, got 'x'"),
    (summary("dfkd", 0, [], [(1.0, 0.0)] * 5, 1.0), "test_accuracy is empty"),
    (summary("dfkd", 0, [1.0], [(1.0, 0.0)] * 5, None), "acc_max must be a finite"),
    (summary("dfkd", 0, [1.0, 2.0], [(1.0, 0.0)] * 5, 2.0, alignment=[0.1]),
     "alignment has 1 values but test_accuracy has 2"),
    (summary("dfkd", "0", [1.0], [(1.0, 0.0)] * 5, 1.0), "seed must be an integer"),
    (dict(summary("dfkd", 0, [1.0], [(1.0, 0.0)] * 5, 1.0),
          learning_evolution={"0": {"mean": 1.0}}), r"learning_evolution\['0'\]"),
])
def test_invalid_summary_is_a_clear_error_naming_the_path(tmp_path, content, message):
  path = write(tmp_path, "run", content if isinstance(content, str) else json.dumps(
      content)) / report.SUMMARY_FILE
  with pytest.raises(ValueError, match=message) as info:
    report.write_report([path.parent], tmp_path / "out")
  assert str(path.resolve()) in str(info.value)
  assert not (tmp_path / "out").exists()


def test_missing_and_empty_directories_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="run directory .*nowhere does not exist"):
    study_runs.load_runs([tmp_path / "nowhere"])
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"no summary.json in .*empty"):
    study_runs.load_runs([tmp_path / "empty"])


def test_two_runs_with_the_same_method_and_seed_are_an_error(tmp_path):
  data = summary("lra_mb", 3, [1.0], [(1.0, 0.0)] * 5, 1.0)
  write(tmp_path, "a", data)
  write(tmp_path, "b", data)
  with pytest.raises(ValueError, match=r"seed 3: .*a/summary.json and .*b/summary.json"):
    study_runs.load_runs([tmp_path / "a", tmp_path / "b"])
  # The same run passed twice (directory and its parent) is read once.
  both = [tmp_path / "a", tmp_path / "a" / "summary.json"]
  assert len(study_runs.load_runs(both)) == 1


def test_runs_of_a_method_with_different_percentiles_are_an_error(tmp_path):
  a = summary("dfkd", 0, [1.0], [(1.0, 0.0)] * 5, 1.0)
  b = summary("dfkd", 1, [1.0], [(1.0, 0.0)] * 5, 1.0)
  del b["learning_evolution"]["80"]
  write(tmp_path / "runs", "a", a)
  write(tmp_path / "runs", "b", b)
  with pytest.raises(ValueError, match="different learning_evolution percentiles"):
    report.write_report([tmp_path / "runs"], tmp_path / "out")


def test_reads_what_the_trainer_writes(tmp_path):
  """The trainer's own summary() output (the contract) goes through the report."""
  from dfkd_jax.run import run_outputs  # pylint: disable=g-import-not-at-top
  for seed, acc in enumerate(([50.0, 70.0, 60.0], [55.0, 65.0, 75.0])):
    config = experiment.default_config()
    config.method, config.seed, config.num_epochs = "mb_dfkd", seed, len(acc)
    history = run_outputs.History(teacher_accuracy=98.0, test_accuracy=acc,
                              alignment=[None, 0.25, -0.5], student_steps_per_second=3.0)
    write(tmp_path / "runs", f"s{seed}", run_outputs.summary(config, history).to_json())
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  rows = markdown_rows((tmp_path / "out" / report.TABLE_MARKDOWN).read_text())
  # 0th percentile = whole run: means 60 and 65 -> 62.50 ± 3.54; Acc_max 70 and 75.
  assert rows["mb_dfkd"][3] == f"62.50 ± {sample_std([60.0, 65.0]):.2f}"
  assert rows["mb_dfkd"][13] == f"72.50 ± {sample_std([70.0, 75.0]):.2f}"
  assert (tmp_path / "out" / "digits_alignment.png").read_bytes().startswith(
      PNG_SIGNATURE)


# ---------------------------------------------------------------------------
# Paired statistics (paired.md / paired.csv) on summaries written by the trainer's
# Summary.of_run, with known differences.
# ---------------------------------------------------------------------------

EPOCHS = 6


def write_run(root, method, seed, acc, dataset="mnist"):
  """Writes the summary.json of a run with per-epoch accuracies ``acc``."""
  path = pathlib.Path(root) / f"{dataset}_{method}_s{seed}"
  path.mkdir(parents=True, exist_ok=True)
  summary_lib.Summary.of_run(
      method=method, dataset=dataset, seed=seed, teacher_accuracy=99.0,
      test_accuracy=[float(a) for a in acc], alignment=[None] * len(acc),
      student_steps_per_second=1.0, config={}).write(path / report.SUMMARY_FILE)
  return summary_lib.Summary.load(path / report.SUMMARY_FILE)


def paired_records(out):
  with open(out / report.PAIRED_CSV) as f:
    return {(r["method_a"], r["method_b"], r["column"]): r for r in csv.DictReader(f)}


def shifted_runs(root, shift, seeds=range(8), noise=0.3, rng_seed=0):
  """lra_mb = a per-seed base curve + ``shift`` + noise; mb_dfkd = the base + noise."""
  rng = np.random.default_rng(rng_seed)
  summaries = {}
  for seed in seeds:
    base = 60.0 + np.cumsum(rng.normal(0.0, 2.0, EPOCHS))
    summaries["lra_mb", seed] = write_run(
        root, "lra_mb", seed, base + shift + rng.normal(0.0, noise, EPOCHS))
    summaries["mb_dfkd", seed] = write_run(
        root, "mb_dfkd", seed, base + rng.normal(0.0, noise, EPOCHS))
  return summaries


ACCURACY_COLUMNS = ("acc_max",) + tuple(f"mean_above_p{p}" for p in PERCENTILES)


def test_a_true_paired_difference_is_significant_with_the_right_sign(tmp_path):
  shifted_runs(tmp_path / "runs", shift=5.0)
  result = report.write_report([tmp_path / "runs"], tmp_path / "out")
  assert tmp_path / "out" / report.PAIRED_MARKDOWN in result["files"]
  records = paired_records(tmp_path / "out")
  for column in ACCURACY_COLUMNS:
    rec = records["lra_mb", "mb_dfkd", column]
    assert rec["n"] == "8" and rec["seeds"] == "0 1 2 3 4 5 6 7"
    assert rec["significant"] == "1", column
    assert float(rec["t_p"]) < 0.05
    # 8 seeds all of one sign: the exact Wilcoxon p is its minimum, 2 / 2^8.
    np.testing.assert_allclose(float(rec["wilcoxon_p"]), 2 / 2 ** 8)
    assert 4.0 < float(rec["mean_difference"]) < 6.0, column
    assert 0.0 < float(rec["ci_low"]) <= float(rec["mean_difference"]) <= float(
        rec["ci_high"])
  text = (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text()
  assert "### lra_mb − mb_dfkd (n = 8 seeds" in text
  assert "| Acc_max | **+" in text and "paired t" in text
  assert f"]({report.PAIRED_MARKDOWN})" in (tmp_path / "out" /
                                             report.TABLE_MARKDOWN).read_text()


def test_the_reversed_pair_has_the_opposite_sign(tmp_path):
  shifted_runs(tmp_path / "runs", shift=5.0)
  report.write_report([tmp_path / "runs"], tmp_path / "out",
                      pairs=[("mb_dfkd", "lra_mb")])
  records = paired_records(tmp_path / "out")
  assert {k[:2] for k in records} == {("mb_dfkd", "lra_mb")}
  rec = records["mb_dfkd", "lra_mb", "acc_max"]
  assert float(rec["ci_high"]) < 0.0 and rec["significant"] == "1"


def test_a_null_difference_is_not_significant(tmp_path):
  # Both methods: the same base curve per seed plus independent noise of one size.
  # A fixed RNG makes the outcome deterministic; the test below checks that the rate of
  # such false positives is the stated level.
  shifted_runs(tmp_path / "runs", shift=0.0, noise=1.0, rng_seed=0)
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  for column in ACCURACY_COLUMNS:
    rec = paired_records(tmp_path / "out")["lra_mb", "mb_dfkd", column]
    assert rec["significant"] == "0" and float(rec["t_p"]) >= 0.05, column
    assert float(rec["ci_low"]) < 0.0 < float(rec["ci_high"]), column
  rows = [line for line in (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text(
      ).splitlines() if line.startswith(("| Acc_max", "| μ"))]
  assert len(rows) == len(ACCURACY_COLUMNS)
  assert not any("**" in row for row in rows)


def test_unpaired_seeds_are_ignored(tmp_path):
  summaries = shifted_runs(tmp_path / "runs", shift=5.0, seeds=range(4))
  write_run(tmp_path / "runs", "lra_mb", 9, [0.0] * EPOCHS)     # No mb_dfkd seed 9.
  write_run(tmp_path / "runs", "mb_dfkd", 8, [100.0] * EPOCHS)  # No lra_mb seed 8.
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  rec = paired_records(tmp_path / "out")["lra_mb", "mb_dfkd", "acc_max"]
  assert rec["n"] == "4" and rec["seeds"] == "0 1 2 3"
  expected = np.mean([summaries["lra_mb", s].acc_max - summaries["mb_dfkd", s].acc_max
                      for s in range(4)])
  np.testing.assert_allclose(float(rec["mean_difference"]), expected)


@pytest.mark.parametrize("lra_seeds, base_seeds", [((0,), (0,)), ((0, 1), (1, 2))])
def test_fewer_than_two_shared_seeds_write_no_paired_table(tmp_path, lra_seeds,
                                                           base_seeds):
  for seed in lra_seeds:
    write_run(tmp_path / "runs", "lra_mb", seed, [60.0, 70.0])
  for seed in base_seeds:
    write_run(tmp_path / "runs", "mb_dfkd", seed, [50.0, 55.0])
  result = report.write_report([tmp_path / "runs"], tmp_path / "out")
  assert not (tmp_path / "out" / report.PAIRED_MARKDOWN).exists()
  assert not (tmp_path / "out" / report.PAIRED_CSV).exists()
  assert tmp_path / "out" / report.TABLE_MARKDOWN in result["files"]
  assert report.PAIRED_MARKDOWN not in (tmp_path / "out" /
                                        report.TABLE_MARKDOWN).read_text()


def test_default_pairs_compare_each_replay_method_with_dfkd_and_its_control():
  pairs = set(paired_stats.DEFAULT_PAIRS)
  # Each meta method against its joint-update control (methods.py).
  assert {("lra_mb", "mb_dfkd"), ("lra_pre", "pre_dfkd"), ("lra_ema", "ema_dfkd")} <= pairs
  for meta, control in [("lra_mb", "mb_dfkd"), ("lra_pre", "pre_dfkd"),
                        ("lra_ema", "ema_dfkd")]:
    assert methods.get(control) == dataclasses.replace(
        methods.resolve(meta, "joint"), description=methods.get(control).description)
  # Fast DFKD's exact meta-gradient against its first-order one (the same round).
  assert ("fast_exact", "fast") in pairs
  assert methods.get("fast_exact") == dataclasses.replace(
      methods.get("fast"), meta_gradient="exact",
      description=methods.get("fast_exact").description)
  replay = [m for m, method in methods.METHODS.items() if method.replay != "none"]
  assert sorted(replay) == sorted(paired_stats.REPLAY_METHODS)
  for method in replay:
    assert (method, "dfkd") in pairs
  assert len(pairs) == 4 + len(replay)


def test_null_differences_are_significant_at_about_the_stated_level():
  rng = np.random.default_rng(0)
  draws = 400
  hits = 0
  for _ in range(draws):
    base = rng.normal(60.0, 2.0, 8)
    hits += paired_stats.paired_difference(base + rng.normal(0.0, 1.0, 8),
                                           base + rng.normal(0.0, 1.0, 8)).significant
  # 5% of 400 = 20 expected; [10, 34] is over 3 binomial standard deviations each way.
  assert 10 <= hits <= 34


def test_wilcoxon_cannot_reach_significance_with_five_seeds_but_paired_t_can():
  d = paired_stats.paired_difference([5.0, 6.1, 4.9, 5.2, 5.5], [0.0] * 5)
  np.testing.assert_allclose(d.wilcoxon_p, 2 / 2 ** 5)
  assert d.wilcoxon_p > 0.05 and d.t_p < 0.05 and d.significant


def test_paired_difference_is_deterministic_and_handles_equal_values():
  a, b = [3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 7.0, 1.0, 8.0, 2.0]
  assert paired_stats.paired_difference(a, b) == paired_stats.paired_difference(a, b)
  same = paired_stats.paired_difference(a, a)
  assert (same.mean, same.ci_low, same.ci_high, same.t_p, same.wilcoxon_p) == (
      0.0, 0.0, 0.0, 1.0, 1.0)
  assert not same.significant
  with pytest.raises(ValueError, match="at least 2"):
    paired_stats.paired_difference([1.0], [2.0])


def test_parse_pairs():
  assert paired_stats.parse_pairs("lra_mb:mb_dfkd, a:b,a:b") == (
      ("lra_mb", "mb_dfkd"), ("a", "b"))
  for bad in ("lra_mb", "a:b:c", "a:", "a:a", "a:b,"):
    with pytest.raises(ValueError, match="is not METHOD_A:METHOD_B"):
      paired_stats.parse_pairs(bad)


def test_cli_pairs_flag_overrides_and_rejects_a_bad_pair(tmp_path):
  shifted_runs(tmp_path / "runs", shift=5.0, seeds=range(3))
  for seed in range(3):
    write_run(tmp_path / "runs", "dfkd", seed, [40.0] * EPOCHS)
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.report", str(tmp_path / "runs"), "--out",
       str(tmp_path / "out"), "--pairs=mb_dfkd:dfkd"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert {k[:2] for k in paired_records(tmp_path / "out")} == {("mb_dfkd", "dfkd")}
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.report", str(tmp_path / "runs"), "--out",
       str(tmp_path / "bad_out"), "--pairs=lra_mb-dfkd"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.count("\n") == 1 and "'lra_mb-dfkd'" in proc.stderr
  assert not (tmp_path / "bad_out").exists()
  with pytest.raises(ValueError, match=r"method\(s\) \['lra_mbb'\] that no run has"):
    report.write_report([tmp_path / "runs"], tmp_path / "bad_out",
                        pairs=[("lra_mbb", "dfkd")])
  assert not (tmp_path / "bad_out").exists()


def test_figures_show_one_epoch_runs_per_seed_lines_and_integer_epochs(tmp_path):
  for seed in range(2):
    write_run(tmp_path / "runs", "dfkd", seed, [40.0 + seed])
  for seed in range(3):
    write_run(tmp_path / "runs", "lra_mb", seed, [50.0 + seed, 55.0, 60.0])
  result = report.write_report([tmp_path / "runs"], tmp_path / "out")
  png = tmp_path / "out" / "mnist_test_accuracy.png"
  assert png in result["files"] and png.read_bytes().startswith(PNG_SIGNATURE)

  by_method = study_runs.group_runs(study_runs.load_runs([tmp_path / "runs"]))["mnist"]
  fig = figures.curve_figure(by_method, lambda r: r.test_accuracy, "t", "y")
  ax = fig.axes[0]
  fig.canvas.draw()
  # A thin line per seed plus the mean, for each method: 2 + 1 and 3 + 1.
  assert len(ax.lines) == 7
  assert all(line.get_marker() not in (None, "None", "", " ") for line in ax.lines)
  means = {line.get_label(): line for line in ax.lines if not line.get_label(
      ).startswith("_")}
  assert set(means) == {"dfkd", "lra_mb"}
  np.testing.assert_allclose(means["dfkd"].get_ydata(), [40.5])
  np.testing.assert_allclose(means["lra_mb"].get_ydata(), [51.0, 55.0, 60.0])
  ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
  assert ticks and all(float(t).is_integer() for t in ticks)


def test_a_labelled_workdir_is_its_own_row_and_pairs_with_its_method(tmp_path):
  """An ablation: the same method and seeds in two folders, one labelled."""
  shifted_runs(tmp_path / "runs", shift=5.0, seeds=range(4))
  for seed in range(4):  # lra_mb again, another variant of it.
    write_run(tmp_path / "ablation", "lra_mb", seed, [40.0 + seed] * EPOCHS)
  with pytest.raises(ValueError, match="two runs of method 'lra_mb'"):
    study_runs.load_runs([tmp_path / "runs", tmp_path / "ablation"])
  assert study_runs.split_label(f"lra_mb_fo={tmp_path}") == ("lra_mb_fo", str(tmp_path))
  assert study_runs.split_label(tmp_path) == (None, tmp_path)
  odd = tmp_path / "a=b"
  odd.mkdir()
  # An existing path stays one.
  assert study_runs.split_label(str(odd)) == (None, str(odd))
  result = report.write_report(
      [tmp_path / "runs", f"lra_mb_fo={tmp_path / 'ablation'}"], tmp_path / "out",
      pairs=[("lra_mb_fo", "lra_mb")])
  assert len(result["runs"]) == 12
  rows = markdown_rows((tmp_path / "out" / report.TABLE_MARKDOWN).read_text())
  assert list(rows) == ["mb_dfkd", "lra_mb", "lra_mb_fo"]
  assert rows["lra_mb_fo"][1] == "4 (seeds 0-3)"
  records = paired_records(tmp_path / "out")
  assert records["lra_mb_fo", "lra_mb", "acc_max"]["n"] == "4"
  assert float(records["lra_mb_fo", "lra_mb", "acc_max"]["mean_difference"]) < 0


# ---------------------------------------------------------------------------
# Intervals, Holm's correction and minimum detectable differences (issue 30), and the
# report's readability (issue 26, item 15).
# ---------------------------------------------------------------------------


def test_the_default_interval_is_the_paired_t_interval():
  a, b = [3.0, 1.0, 4.0, 1.0, 5.0], [2.0, -1.5, 1.0, 0.5, 2.5]
  d = paired_stats.paired_difference(a, b)
  expected = stats.ttest_rel(a, b).confidence_interval(0.95)
  np.testing.assert_allclose([d.ci_low, d.ci_high], [expected.low, expected.high],
                             rtol=1e-12)
  assert d.interval == "t"
  np.testing.assert_allclose(d.sd, np.std(np.subtract(a, b), ddof=1))
  boot = paired_stats.paired_difference(a, b, interval="bootstrap")
  expected = stats.bootstrap((np.subtract(a, b),), np.mean, n_resamples=10_000,
                             method="percentile", rng=np.random.default_rng(0)
                             ).confidence_interval
  assert (boot.ci_low, boot.ci_high) == (expected.low, expected.high)
  assert (boot.t_p, boot.mean, boot.interval) == (d.t_p, d.mean, "bootstrap")
  with pytest.raises(ValueError, match="unknown interval 'normal'; valid: t, bootstrap"):
    paired_stats.paired_difference(a, b, interval="normal")


def test_the_t_interval_covers_the_true_difference_at_five_seeds_the_bootstrap_not():
  """At n = 5 (the MNIST study) the t interval holds its 95%; the percentile bootstrap,
  the old default, is too narrow."""
  rng = np.random.default_rng(1)
  draws, true = 400, 2.0
  covered = {"t": 0, "bootstrap": 0}
  intervals = {"t": paired_stats.t_interval,   # What paired_difference uses (above).
               "bootstrap": paired_stats.bootstrap_interval}
  for _ in range(draws):
    base = rng.normal(60.0, 3.0, 5)
    d = (base + true + rng.normal(0.0, 1.0, 5)) - (base + rng.normal(0.0, 1.0, 5))
    for kind, interval in intervals.items():
      low, high = interval(d)
      covered[kind] += low <= true <= high
  # 95% of 400 = 380; [366, 394] is over 3 binomial standard deviations each way.
  assert 366 <= covered["t"] <= 394, covered
  assert covered["bootstrap"] < 366, covered


def test_holm_adjusts_as_hand_computed():
  # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max 0.06.
  np.testing.assert_allclose(paired_stats.holm([0.01, 0.04, 0.03, 0.005]),
                             [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(paired_stats.holm([0.5, 0.9, float("nan")]), [1.0, 1.0, 1.0])
  np.testing.assert_allclose(paired_stats.holm([0.02]), [0.02])


def test_holm_keeps_the_familywise_error_at_the_level_where_raw_p_does_not():
  """200 families of 20 null paired t-tests (8 seeds): any cell marked in ~64% of the
  families without the correction, in at most ~5% with it."""
  rng = np.random.default_rng(0)
  families, cells, n = 200, 20, 8
  base = rng.normal(60.0, 2.0, (families, cells, n))
  p = stats.ttest_rel(base + rng.normal(0, 1, base.shape),
                      base + rng.normal(0, 1, base.shape), axis=-1).pvalue
  raw_any = sum(bool((row < 0.05).any()) for row in p)
  holm_any = sum(bool((paired_stats.holm(row) < 0.05).any()) for row in p)
  assert raw_any > 100, raw_any      # 1 - 0.95^20 = 64% of 200 = 128.
  assert holm_any <= 19, holm_any    # At most 5% (10) + 3 binomial sd.


def test_minimum_detectable_difference_has_the_stated_power():
  """A paired t-test at the returned difference rejects 80% of the time (simulated)."""
  sd, n = 1.5, 8
  mdd = paired_stats.minimum_detectable_difference(sd, n)
  rng = np.random.default_rng(0)
  d = rng.normal(mdd, sd, (4000, n))
  power = np.mean(stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05)
  assert abs(power - 0.8) < 0.02, power      # 3 binomial sd = 0.019.
  below = np.mean(stats.ttest_1samp(d - 0.5 * mdd, 0.0, axis=1).pvalue < 0.05)
  assert below < 0.5
  # Large n: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n).
  np.testing.assert_allclose(paired_stats.minimum_detectable_difference(2.0, 400),
                             (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 2.0 / 20,
                             rtol=5e-3)
  # Few pairs: larger; n = 2 has one degree of freedom (scipy's NaN lower tail).
  assert paired_stats.minimum_detectable_difference(1.0, 2) > \
      paired_stats.minimum_detectable_difference(1.0, 3) > 2 * mdd / sd
  assert paired_stats.minimum_detectable_difference(0.0, 5) == 0.0


def test_report_marks_cells_by_holm_adjusted_p_over_the_whole_report(tmp_path):
  """A small true shift: several cells have a raw paired t p < 0.05 but a Holm-adjusted
  p >= 0.05 over the report's family (every dataset x pair x column); only the adjusted
  p marks, and cells not marked show their minimum detectable difference."""
  shifted_runs(tmp_path / "runs", shift=0.6, noise=1.0, rng_seed=0)
  for seed in range(5):  # A large difference on another dataset: the same family.
    write_run(tmp_path / "runs", "dfkd", seed, [50.0 + seed] * EPOCHS, dataset="cifar10")
    write_run(tmp_path / "runs", "lra_mb", seed, [60.0 + 1.1 * seed] * EPOCHS,
              dataset="cifar10")
  report.write_report([tmp_path / "runs"], tmp_path / "out",
                      pairs=[("lra_mb", "mb_dfkd"), ("lra_mb", "dfkd")])
  with open(tmp_path / "out" / report.PAIRED_CSV) as f:
    records = list(csv.DictReader(f))
  assert {(r["dataset"], r["method_a"], r["method_b"]) for r in records} == {
      ("mnist", "lra_mb", "mb_dfkd"), ("cifar10", "lra_mb", "dfkd")}
  t_p = [float(r["t_p"]) for r in records]
  np.testing.assert_allclose([float(r["holm_p"]) for r in records],
                             paired_stats.holm(t_p))
  for r in records:
    assert r["significant"] == str(int(float(r["holm_p"]) < 0.05
                                       and int(r["n"]) >= paired_stats.FEW_SEEDS)), r
    np.testing.assert_allclose(
        float(r["min_detectable_difference"]),
        paired_stats.minimum_detectable_difference(float(r["sd_difference"]), int(r["n"])))
  mnist = {r["column"]: r for r in records if r["dataset"] == "mnist"}
  raw_only = [c for c, r in mnist.items()
              if float(r["t_p"]) < 0.05 <= float(r["holm_p"])]
  assert len(raw_only) >= 3, mnist
  text = (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text()
  assert f"all {len(records)} cells" in text and "Holm" in text
  assert "| Holm p |" in text and "95% t CI" in text

  def table(dataset):
    section = text.split(f"## {dataset}")[1].split("\n## ")[0]
    return {line.split("|")[1].strip(): line for line in section.splitlines()
            if line.startswith(("| Acc_max", "| μ", "| σ²"))}

  rows = table("mnist")
  for column in raw_only:
    row = rows[paired_stats.column_title(column)]
    assert "**" not in row, row
    mdd = float(mnist[column]["min_detectable_difference"])
    assert row.rstrip(" |").endswith(f"| {mdd:.2f}"), row
  rows = table("cifar10")
  cifar = {r["column"]: r for r in records if r["dataset"] == "cifar10"}
  marked = [c for c, r in cifar.items() if r["significant"] == "1"]
  assert set(marked) == set(ACCURACY_COLUMNS), cifar   # The variances do not differ.
  for column in marked:
    row = rows[paired_stats.column_title(column)]
    assert "| **+" in row and row.rstrip(" |").endswith("| -"), row


def test_the_bootstrap_interval_is_a_report_option(tmp_path):
  shifted_runs(tmp_path / "runs", shift=5.0, seeds=range(5))
  proc = subprocess.run(
      [sys.executable, "-m", "dfkd_jax.report", str(tmp_path / "runs"), "--out",
       str(tmp_path / "out"), "--interval=bootstrap"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  text = (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text()
  assert "95% bootstrap CI" in text and "percentile bootstrap" in text
  assert {r["interval"] for r in paired_records(tmp_path / "out").values()} == {
      "bootstrap"}
  with pytest.raises(ValueError, match="unknown interval 'bca'"):
    report.write_report([tmp_path / "runs"], tmp_path / "bad", interval="bca")
  assert not (tmp_path / "bad").exists()


def test_a_single_run_reads_as_one_run_with_its_seed_not_as_zero(tmp_path):
  write_run(tmp_path / "runs", "dfkd", 0, [50.0, 60.0])
  for seed in (0, 1, 2, 5):
    write_run(tmp_path / "runs", "lra_mb", seed, [50.0, 60.0 + seed])
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  text = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  assert "| Method | Runs (seeds) | Epochs |" in text
  rows = markdown_rows(text)
  assert rows["dfkd"][1] == "1 (seed 0)"
  assert rows["lra_mb"][1] == "4 (seeds 0-2, 5)"
  assert report.seeds_text([3, 4]) == "2 (seeds 3, 4)"


@pytest.mark.parametrize("seeds, caveat", [(range(3), True), (range(5), False)])
def test_pairs_with_few_seeds_carry_a_caveat(tmp_path, seeds, caveat):
  shifted_runs(tmp_path / "runs", shift=5.0, seeds=seeds)
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  text = (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text()
  assert ("**Caveat.** Only n = 3 shared seeds" in text) == caveat
  if caveat:
    assert "cannot go below 0.25" in text and "descriptive" in text


def test_accuracy_figures_draw_the_teacher_line(tmp_path):
  for seed in range(2):
    write_run(tmp_path / "runs", "dfkd", seed, [40.0 + seed, 50.0])
  by_method = study_runs.group_runs(study_runs.load_runs([tmp_path / "runs"]))["mnist"]
  fig = figures.curve_figure(by_method, lambda r: r.test_accuracy, "t", "y",
                             teacher_accuracy=99.0)
  teacher = [line for line in fig.axes[0].lines
             if line.get_label().startswith("teacher")]
  assert len(teacher) == 1 and teacher[0].get_label() == "teacher (99.00%)"
  np.testing.assert_allclose(teacher[0].get_ydata(), [99.0, 99.0])
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert "teacher (99.00%)" in legend
  # write_report passes the runs' teacher accuracy to both accuracy figures only.
  calls = []
  original = figures.curve_figure
  def spy(by_method, curve_of, title, ylabel, teacher_accuracy=None):
    calls.append((title, teacher_accuracy))
    return original(by_method, curve_of, title, ylabel, teacher_accuracy)
  figures.curve_figure = spy
  try:
    report.write_report([tmp_path / "runs"], tmp_path / "out")
  finally:
    figures.curve_figure = original
  assert [t for _, t in calls] == [99.0, 99.0, None], calls


# ---------------------------------------------------------------------------
# Run folders as users keep them (issue 37, item 9): links, unfinished runs, few seeds.
# ---------------------------------------------------------------------------


def write_planned(folder, method, seed, acc, planned):
  """A trainer's summary.json of a run whose config asks for ``planned`` epochs."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  summary_lib.Summary.of_run(
      method=method, dataset="digits", seed=seed, teacher_accuracy=99.0,
      test_accuracy=[float(a) for a in acc], alignment=[None] * len(acc),
      student_steps_per_second=1.0,
      config={"method": method, "seed": seed, "num_epochs": planned},
  ).write(folder / report.SUMMARY_FILE)


def run_report(*args, cwd):
  return subprocess.run([sys.executable, "-m", "dfkd_jax.report", *map(str, args)],
                        cwd=cwd, capture_output=True, text=True, timeout=300,
                        check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_symlinked_run_folders_are_followed_once_and_dead_links_named(tmp_path):
  runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
  for seed in range(3):
    write_planned(runs / f"dfkd_s{seed}", "dfkd", seed, [40.0, 50.0 + seed], 2)
    write_planned(elsewhere / f"lra_mb_s{seed}", "lra_mb", seed, [60.0, 70.0 + seed], 2)
    (runs / f"lra_mb_s{seed}").symlink_to(elsewhere / f"lra_mb_s{seed}")
  write_planned(elsewhere / "more" / "mb_dfkd_s0", "mb_dfkd", 0, [50.0, 55.0], 2)
  (runs / "more").symlink_to(elsewhere / "more")  # A linked folder of runs.
  (runs / "loop").symlink_to(runs)                # A link back up the tree.
  (runs / "moved").symlink_to(tmp_path / "gone")  # A link to nothing.
  proc = run_report(runs, "--out", tmp_path / "out", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().splitlines()[-1].startswith("7 runs -> ")
  assert (f"warning: skipped {runs / 'moved'}: a symbolic link to {tmp_path / 'gone'}, "
          "which does not exist") in proc.stdout
  rows = markdown_rows((tmp_path / "out" / report.TABLE_MARKDOWN).read_text())
  assert (rows["dfkd"][1], rows["lra_mb"][1], rows["mb_dfkd"][1]) == (
      "3 (seeds 0-2)", "3 (seeds 0-2)", "1 (seed 0)")


def test_unfinished_runs_are_marked_and_enter_no_statistic_of_the_finished(tmp_path):
  runs = tmp_path / "runs"
  for seed in range(6):  # Seed 4 stopped after 4 of 6 epochs, seed 5 was killed after 1.
    epochs = {4: 4, 5: 1}.get(seed, 6)
    write_planned(runs / f"lra_mb_s{seed}", "lra_mb", seed,
                  [60.0 + 2 * e + seed for e in range(epochs)], 6)
    write_planned(runs / f"mb_dfkd_s{seed}", "mb_dfkd", seed,
                  [50.0 + 2 * e + seed for e in range(6)], 6)
  proc = run_report(runs, "--out", tmp_path / "out", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  for seed, epochs in ((4, 4), (5, 1)):
    assert (f"warning: {runs / f'lra_mb_s{seed}' / report.SUMMARY_FILE} is unfinished: "
            f"{epochs} of 6 epochs") in proc.stdout
  text = (tmp_path / "out" / report.TABLE_MARKDOWN).read_text()
  rows = markdown_rows(text)
  assert rows["lra_mb"][1:3] == ["4 (seeds 0-3)", "6"]
  assert rows["lra_mb"][13] == f"71.50 ± {sample_std([70.0, 71.0, 72.0, 73.0]):.2f}"
  assert rows["lra_mb (unfinished)"][1:3] == ["2 (seeds 4, 5)", "1-4 of 6"]
  assert ("**Warning: 2 unfinished run(s)** (lra_mb seed 4: 4 of 6 epochs; lra_mb seed "
          "5: 1 of 6 epochs)") in text
  assert "- `lra_mb (unfinished)` seed 5: 1 of 6 epochs" in text
  records = paired_records(tmp_path / "out")  # Paired over the finished seeds only.
  assert records["lra_mb", "mb_dfkd", "acc_max"]["seeds"] == "0 1 2 3"


@pytest.mark.parametrize("seeds, marked", [(2, False), (4, False), (5, True)])
def test_no_cell_is_bold_below_the_n_the_caveat_calls_descriptive(tmp_path, seeds,
                                                                   marked):
  for seed in range(seeds):  # lra_mb 20 points above mb_dfkd on every seed.
    noise = 0.01 * seed * (-1) ** seed
    write_planned(tmp_path / "runs" / f"a{seed}", "lra_mb", seed,
                  [70.0 + seed, 90.0 + seed + noise], 2)
    write_planned(tmp_path / "runs" / f"b{seed}", "mb_dfkd", seed,
                  [50.0 + seed, 70.0 + seed - noise], 2)
  report.write_report([tmp_path / "runs"], tmp_path / "out")
  rec = paired_records(tmp_path / "out")["lra_mb", "mb_dfkd", "acc_max"]
  assert float(rec["holm_p"]) < 0.05 and rec["significant"] == str(int(marked))
  text = (tmp_path / "out" / report.PAIRED_MARKDOWN).read_text()
  row = next(l for l in text.splitlines() if l.startswith("| Acc_max"))
  assert ("| **+20." in row) == marked, row
  caveat = f"Only n = {seeds} shared seeds" in text  # "Read this pair as descriptive".
  assert caveat == (seeds < paired_stats.FEW_SEEDS) and caveat != marked


def test_an_out_that_is_a_file_is_one_line(tmp_path):
  write_planned(tmp_path / "runs" / "s0", "dfkd", 0, [50.0], 1)
  (tmp_path / "out.md").write_text("mine")
  proc = run_report(tmp_path / "runs", "--out", tmp_path / "out.md", cwd=tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip() == (f"error: --out={tmp_path / 'out.md'} is a file, not a "
                                 "folder; pass a folder to write the tables and figures "
                                 "in (it is created)")
  assert (tmp_path / "out.md").read_text() == "mine"

"""The benchmark harness in its smoke mode (tiny digits config): JSON fields and sanity.

No timing is asserted here: speed targets are reported by the benchmarks, not tested.
"""

import argparse
import json
import math
import pathlib
import subprocess
import sys

import pytest

from benchmarks import iteration_speed
from benchmarks import tables
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import trainer
from test_trainer import teacher_dir  # pylint: disable=unused-import  # fixture

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """One smoke run of the joint and the meta method (the meta-overhead pair)."""
  out = tmp_path_factory.mktemp("bench") / "smoke.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.iteration_speed", "--smoke",
       "--methods=mb_dfkd,lra_mb", "--matmul_dtypes=float32,bfloat16", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = json.loads(proc.stdout)
  assert json.loads(out.read_text()) == printed
  return printed


@pytest.mark.slow
def test_smoke_run_reports_every_case_with_sane_numbers(smoke):
  assert smoke["backend"] == "cpu" and smoke["device_count"] >= 1
  assert "random init" in smoke["teacher_weights"]
  for key in ("load_average_1_5_15min_before", "load_average_1_5_15min_after"):
    assert len(smoke[key]) == 3 and all(v >= 0 for v in smoke[key])
  assert smoke["matmul"]["size"] == 256 and smoke["matmul"]["flops_per_second"] > 0
  results = smoke["results"]
  assert [(r["method"], r["pair"], r["batch_size"]) for r in results] == [
      ("mb_dfkd", "digits", 32), ("lra_mb", "digits", 32)]
  for r in results:
    assert r["generator_steps"] == 1 and r["student_steps"] == 1
    assert r["input_shape"] == [8, 8, 1] and r["step_loop"] == "scan"
    assert r["compile_seconds"] > 0
    times = r["seconds_per_iteration_all"]
    assert len(times) == 2 and all(t > 0 for t in times)
    assert min(times) <= r["seconds_per_iteration"] <= max(times)
    assert math.isclose(r["examples_per_second"],
                        32 * 2 / r["seconds_per_iteration"], rel_tol=1e-9)
    assert math.isclose(r["student_steps_per_second"], 1 / r["seconds_per_iteration"],
                        rel_tol=1e-9)
    assert r["flops_per_iteration"] > 0
    assert math.isclose(r["achieved_flops_per_second"],
                        r["flops_per_iteration"] / r["seconds_per_iteration"],
                        rel_tol=1e-9)
    assert r["fraction_of_matmul_flops"] > 0
    assert r["peak_memory"]["bytes"] > 0 and "RSS" in r["peak_memory"]["source"]
    memory = r["memory_analysis"]
    assert memory["argument_size_in_bytes"] > 0 and memory["temp_size_in_bytes"] > 0
  # --matmul_dtypes: each case against the f32 (compute dtype) and a bf16 matmul.
  references = smoke["matmul_references"]
  assert set(references) == {"float32", "bfloat16"}
  assert references["float32"] == smoke["matmul"]
  assert references["bfloat16"]["dtype"] == "bfloat16"
  for r in results:
    fractions = r["fraction_of_matmul_flops_by_dtype"]
    assert math.isclose(fractions["float32"], r["fraction_of_matmul_flops"])
    assert math.isclose(fractions["bfloat16"], r["achieved_flops_per_second"]
                        / references["bfloat16"]["flops_per_second"])
  # The meta update does strictly more arithmetic than the joint update.
  assert results[1]["flops_per_iteration"] > results[0]["flops_per_iteration"]


@pytest.mark.slow
def test_smoke_run_reports_the_meta_overhead(smoke):
  (overhead,) = smoke["meta_overhead"]
  joint, meta = smoke["results"]
  assert (overhead["method"], overhead["baseline"]) == ("lra_mb", "mb_dfkd")
  assert math.isclose(overhead["ratio"],
                      meta["seconds_per_iteration"] / joint["seconds_per_iteration"])
  assert overhead["target"] == 1.8
  assert overhead["within_target"] == (overhead["ratio"] <= 1.8)


def test_meta_overhead_pairs_each_meta_method_with_its_joint_baseline():
  rows = [{"pair": "p", "batch_size": b, "method": m, "seconds_per_iteration": t}
          for b, m, t in [(64, "mb_dfkd", 2.0), (64, "lra_mb", 3.0), (64, "dfkd", 1.0),
                          (128, "lra_mb", 5.0), (64, "pre_dfkd", 4.0),
                          (64, "lra_pre", 10.0)]]
  out = {(o["method"], o["batch_size"]): o for o in
         iteration_speed.meta_overhead(rows)}
  assert set(out) == {("lra_mb", 64), ("lra_pre", 64)}  # No mb_dfkd at batch 128.
  assert out[("lra_mb", 64)]["ratio"] == 1.5 and out[("lra_mb", 64)]["within_target"]
  assert out[("lra_pre", 64)]["ratio"] == 2.5
  assert not out[("lra_pre", 64)]["within_target"]


@pytest.mark.parametrize("args, message", [
    (["--methods=nope"], "unknown method 'nope'"),
    (["--pairs=vgg"], "unknown pair 'vgg'"),
    (["--batch_sizes=0"], "batch size 0 must be a positive multiple"),
])
def test_bad_arguments_are_clear_errors_before_compiling(args, message, capsys):
  assert iteration_speed.main(args + ["--matmul_size=8"]) == 1
  assert message in capsys.readouterr().err


@pytest.mark.slow
def test_markdown_tables_of_the_smoke_result(smoke, tmp_path, capsys):
  path = tmp_path / "smoke.json"
  path.write_text(json.dumps(smoke))
  assert tables.main([str(path)]) == 0
  text = capsys.readouterr().out
  rows = [l for l in text.splitlines() if l.startswith("| digits_cnn -> digits_cnn_half")]
  assert len(rows) == 3  # Two methods and one overhead row.
  joint = smoke["results"][0]
  assert f"| {joint['seconds_per_iteration']:.3f} |" in rows[0]
  ratio = smoke["meta_overhead"][0]["ratio"]
  assert f"lra_mb / mb_dfkd = {ratio:.2f}" in rows[2]
  assert "Load average" in text


@pytest.mark.slow
def test_accelerator_mode_counts_the_flops_of_every_scanned_step(tmp_path):
  """The accelerator path (steps in ``lax.scan``), forced on the CPU.

  XLA's cost analysis counts a loop body once, so the scanned program's own count
  misses steps; the harness counts FLOPs on the same iteration lowered unrolled, which
  must agree with the compiled unrolled program that the CPU mode times.
  """
  smoke = dict(iteration_speed.SMOKE, student_steps=3, repeats=1)
  runs = {}
  for loop in ("scan", "unroll"):
    result = iteration_speed.run_suite(
        ["mb_dfkd"], smoke["pairs"], smoke["batch_sizes"], smoke["repeats"],
        smoke["student_steps"], smoke["latent_dim"], "", loop, smoke["matmul_size"])
    (runs[loop],) = result["results"]
  scan, unroll = runs["scan"], runs["unroll"]
  assert (scan["step_loop"], unroll["step_loop"]) == ("scan", "unroll")
  assert "lowered with unrolled steps" in scan["flops_source"]
  assert "compiled (unrolled)" in unroll["flops_source"]
  # Same arithmetic; the lowered (pre-optimisation) and compiled counts differ by a
  # few percent of XLA simplifications.
  assert math.isclose(scan["flops_per_iteration"], unroll["flops_per_iteration"],
                      rel_tol=0.1)
  pair = iteration_speed.PAIRS["digits"]
  teacher = iteration_speed.save_random_teacher(pair, tmp_path)
  case = iteration_speed.compile_case("mb_dfkd", "digits", iteration_speed.make_config(
      pair, "mb_dfkd", 32, teacher, 3, 16, "", "scan"))
  scanned_only = iteration_speed._flops(case.compiled.cost_analysis())  # pylint: disable=protected-access
  # Counting the scanned program itself would miss the repeated student steps.
  assert scanned_only < 0.8 * scan["flops_per_iteration"]


class _FakeDevice:

  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_peak_memory_reads_device_stats_where_the_backend_reports_them(monkeypatch):
  monkeypatch.setattr(iteration_speed.jax, "local_devices", lambda: [
      _FakeDevice({"peak_bytes_in_use": 7, "bytes_in_use": 1}),
      _FakeDevice({"peak_bytes_in_use": 11})])
  assert iteration_speed.peak_memory() == {
      "source": "device memory_stats peak_bytes_in_use (max over local devices)",
      "bytes": 11}
  # A backend without stats (the CPU) falls back to the process's peak RSS.
  monkeypatch.setattr(iteration_speed.jax, "local_devices",
                      lambda: [_FakeDevice(None)])
  fallback = iteration_speed.peak_memory()
  assert "RSS" in fallback["source"] and fallback["bytes"] > 0


def test_first_epoch_reads_the_trainer_lines_it_times():
  from benchmarks import first_epoch  # pylint: disable=g-import-not-at-top
  lines = [(1.0, "loading the teacher, building the models ..."),
           (9.5, "compiled and ran the first iteration in 3.2 s (loaded from the "
                 "compilation cache)"),
           (11.0, "epoch 1/12, iteration 4/10: 2.0 it/s, student loss 0.5"),
           (14.25, "epoch 1/12: student 71.39% (max 71.39%, teacher 99.72%), ..."),
           (20.0, "epoch 2/12: student 81.11% (max 81.11%, teacher 99.72%), ...")]
  assert first_epoch.read_timings(lines) == {
      "first_iteration_s": 9.5, "first_iteration_reported_s": 3.2,
      "first_epoch_s": 14.25, "iteration_from_cache": True}
  compiled = first_epoch.read_timings([(60.0, "compiled and ran the first iteration in "
                                               "51.0 s")])
  assert not compiled["iteration_from_cache"] and compiled["first_epoch_s"] is None


def test_whole_run_benchmarks_refuse_an_existing_out_and_write_their_header(tmp_path):
  from benchmarks import whole_runs  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser()
  whole_runs.add_arguments(parser)
  out = tmp_path / "r.json"
  out.write_text("{}")
  args = parser.parse_args([f"--out={out}", "--set=num_epochs=2"])
  with pytest.raises(SystemExit):
    whole_runs.start("benchmarks.x", args, parser, [f"--out={out}"])
  assert out.read_text() == "{}"  # Never overwritten.
  assert whole_runs.train_command("configs/digits.py", tmp_path / "w", tmp_path / "c",
                                  args.set)[-1] == "--config.num_epochs=2"
  results = {"host": {}}
  whole_runs.finish(results, tmp_path / "new" / "r.json")
  written = json.loads((tmp_path / "new" / "r.json").read_text())
  assert len(written["host"]["load_average_after"]) == 3


def test_whole_run_benchmarks_train_the_teacher_of_the_config_with_its_settings(
    tmp_path, monkeypatch):
  from benchmarks import whole_runs  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(whole_runs.train, "train_teacher_on_first_use", seen.append)
  parser = argparse.ArgumentParser()
  whole_runs.add_arguments(parser)
  args = parser.parse_args([f"--out={tmp_path / 'r.json'}", "--set=num_epochs=2",
                            f"--set=teacher_dir={tmp_path / 'teacher'}"])
  results = whole_runs.start("benchmarks.x", args, parser, [])
  # The CPU model (or device kind) that summary.json's ``host`` names: times of two
  # machines are never compared.
  assert results["host"]["machine"] == trainer.host_name(parallel.make_mesh())
  # The timed runs get --config.teacher_dir too: the untimed first-use teacher must be
  # trained there, not in the config file's default folder.
  assert [(c.teacher_dir, c.num_epochs) for c in seen] == [(str(tmp_path / "teacher"), 2)]
  for bad in (["--set=num_epoch=2"], ["--config=configs/nope.py"]):
    bad_args = parser.parse_args([f"--out={tmp_path / 'r2.json'}", *bad])
    with pytest.raises(SystemExit):
      whole_runs.start("benchmarks.x", bad_args, parser, [])
  assert len(seen) == 1


@pytest.mark.parametrize("module", ["benchmarks.replicas", "benchmarks.first_epoch",
                                    "benchmarks.replica_speed",
                                    "benchmarks.step_loop_speed"])
def test_whole_run_benchmarks_parse_their_flags(module, tmp_path):
  out = tmp_path / "exists.json"
  out.write_text("{}")
  proc = subprocess.run([sys.executable, "-m", module, f"--out={out}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2 and "results are never overwritten" in proc.stderr


@pytest.mark.slow  # Three compiles: minutes on a loaded 2-core host (CI's budget).
def test_replica_speed_times_the_single_run_and_each_replica_loop(teacher_dir, tmp_path):
  """A tiny ``benchmarks.replica_speed``: the single run and N = 2 under both loops,
  with the per-replica ratio to the single run (not asserted: a report, not a test)."""
  from benchmarks import replica_speed  # pylint: disable=g-import-not-at-top
  out = tmp_path / "speed.json"
  replica_speed.main([
      "--methods=dfkd", "--replicas=2", "--repeats=2", f"--out={out}",
      f"--set=teacher_dir={teacher_dir}", "--set=teacher_config=", "--set=latent_dim=16",
      "--set=batch_size=32", "--set=student_steps=1"])
  result = json.loads(out.read_text())
  assert result["repeats"] == 2 and len(result["host"]["load_average_after"]) == 3
  [method] = result["methods"]
  cases = {(c["num_seeds"], c["replica_loop"]): c for c in method["cases"]}
  assert method["method"] == "dfkd" and set(cases) == {(1, None), (2, "map"), (2, "vmap")}
  assert cases[(1, None)]["ratio_to_single"] == 1.0
  for (n, _), case in cases.items():
    assert len(case["times"]) == 2 and case["compile_seconds"] > 0
    assert math.isclose(case["seconds_per_replica_iteration"] * n,
                        case["seconds_per_iteration"])
    single = cases[(1, None)]["seconds_per_iteration"]
    assert math.isclose(case["ratio_to_single"],
                        case["seconds_per_iteration"] / n / single)


@pytest.mark.slow  # Four compiles: minutes on a loaded 2-core host (CI's budget).
def test_step_loop_speed_times_both_step_loops_per_batch_size(teacher_dir, tmp_path):
  """A tiny ``benchmarks.step_loop_speed``: unrolled and scanned steps at two batch sizes,
  each with its ratio to the unrolled steps of its batch size (not asserted: a report)."""
  from benchmarks import step_loop_speed  # pylint: disable=g-import-not-at-top
  out = tmp_path / "loops.json"
  step_loop_speed.main([
      "--methods=dfkd", "--batch_sizes=32,64", "--repeats=2", f"--out={out}",
      f"--set=teacher_dir={teacher_dir}", "--set=teacher_config=", "--set=latent_dim=16",
      "--set=student_steps=2"])
  result = json.loads(out.read_text())
  assert result["repeats"] == 2 and len(result["host"]["load_average_after"]) == 3
  cases = {(c["batch_size"], c["step_loop"]): c for c in result["cases"]}
  assert set(cases) == {(b, loop) for b in (32, 64) for loop in ("unroll", "scan")}
  for (batch_size, _), case in cases.items():
    assert case["method"] == "dfkd" and len(case["times"]) == 2
    assert case["compile_seconds"] > 0
    unrolled = cases[(batch_size, "unroll")]["seconds_per_iteration"]
    assert math.isclose(case["ratio_to_unroll"], case["seconds_per_iteration"] / unrolled)


@pytest.mark.parametrize("flag", ["--batch_sizes=64,x", "--batch_sizes=0", "--repeats=0"])
def test_step_loop_speed_refuses_bad_flags(flag, tmp_path, capsys):
  from benchmarks import step_loop_speed  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    step_loop_speed.main([flag, f"--out={tmp_path / 'r.json'}"])
  assert flag.split("=")[0] in capsys.readouterr().err
  assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------
# benchmarks.torch_teacher_speed: a PyTorch teacher through torchax vs the Flax port.
# ---------------------------------------------------------------------------


@pytest.mark.slow  # Four compiles and two conversions: ~1 min on 2 idle cores, ~5 loaded.
def test_torch_teacher_speed_smoke_writes_the_documented_fields(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("torchax")
  out = tmp_path / "torch_teacher_speed.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.torch_teacher_speed", "--smoke", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert json.loads(proc.stdout) == result
  assert result["benchmark"] == "torch_teacher_speed" and result["smoke"]
  assert len(result["git"]["commit"]) == 40
  assert all(result["versions"][k] for k in ("jax", "jaxlib", "flax", "torch", "torchax"))
  assert result["threads"]["cpu_count"] >= 1 and "XLA_FLAGS" in result["threads"]
  for when in ("before", "after"):
    assert "load average" in result[f"uptime_{when}"]
    assert len(result[f"load_average_1_5_15min_{when}"]) == 3
  assert result["settings"]["batch_size"] == 8 and result["settings"]["repeats"] == 1
  # The same weights: both teachers give PyTorch's logits and the same BN moments.
  (pair,) = result["pairs"]
  assert pair["pair"] == "digits_cnn:digits_cnn_half"
  assert "torch_models:DigitsCNN" in pair["convert_commands"]["torchax"]
  assert "--arch=digits_cnn" in pair["convert_commands"]["flax"]
  assert set(pair["convert_checks"]) == {"flax", "torchax"}
  check = pair["logit_check"]
  assert check["max_abs_diff_flax_vs_torchax"] < 1e-4
  assert check["max_abs_diff_torchax_vs_pytorch"] < 1e-4
  assert check["bn_moments"] == {"flax": 3, "torchax": 3}
  assert check["bn_moments_max_abs_diff"] < 1e-4
  records = {(r["kind"], r["teacher_path"]): r for r in result["results"]}
  assert set(records) == {(k, p) for k in ("iteration", "teacher_forward_and_input_grad")
                          for p in ("flax", "torchax")}
  for r in records.values():
    assert len(r["seconds_all"]) == 1 and r["seconds"] > 0 and r["compile_seconds"] > 0
    assert len(r["cpu_seconds_all"]) == 1 and r["cpu_seconds"] > 0
    assert r["flops"] > 0 and r["hlo_op_counts"]["convolution"] > 0
  iteration_record = records[("iteration", "torchax")]
  assert iteration_record["bn_prior"] > 0 and iteration_record["method"] == "dfkd"
  assert (iteration_record["generator_steps"], iteration_record["student_steps"]) == (1, 1)
  rows = {(r["kind"], r["method"]): r for r in result["ratios"]}
  assert set(rows) == {("iteration", "dfkd"), ("teacher_forward_and_input_grad", None)}
  for (kind, method), row in rows.items():
    flax, torchax = records[(kind, "flax")], records[(kind, "torchax")]
    assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert math.isclose(row["ratio"], torchax["seconds"] / flax["seconds"])
    assert math.isclose(row["cpu_ratio"], torchax["cpu_seconds"] / flax["cpu_seconds"])
    assert row["target"] == 1.25 and row["within_target"] == (row["ratio"] <= 1.25)
    assert math.isfinite(row["flops_ratio"]) and math.isfinite(row["compile_ratio"])
  # The first iteration computes the same on both teachers, up to rounding.
  agreement = rows[("iteration", "dfkd")]["first_iteration_metrics_max_rel_diff"]
  assert agreement["generator_loss"] < 1e-4 and agreement["student_loss"] < 1e-4


def test_torch_teacher_speed_counts_hlo_instructions_by_opcode():
  from benchmarks import torch_teacher_speed  # pylint: disable=g-import-not-at-top
  hlo = """HloModule m, entry_computation_layout={(f32[2,3]{1,0})->f32[3,2]{1,0}}

fused_transpose {
  p0 = f32[2,3]{1,0} parameter(0)
  ROOT t = f32[3,2]{1,0} transpose(p0), dimensions={1,0}
}

ENTRY %main (a: f32[2,3]) -> (f32[3,2], f32[2,3]) {
  %a = f32[2,3]{1,0} parameter(0)
  %c = f32[2,3]{0,1} copy(%a), metadata={op_name="jit(f)/conv(x)"}
  %f = f32[3,2]{1,0} fusion(%a), kind=kLoop, calls=fused_transpose
  ROOT %tuple = (f32[3,2]{1,0}, f32[2,3]{0,1}) tuple(%f, %c)
}
"""
  counts = torch_teacher_speed.hlo_op_counts(hlo)
  assert counts["transpose"] == 1 and counts["copy"] == 1 and counts["fusion"] == 1
  assert counts["convolution"] == 0 and counts["instructions"] == 6


@pytest.mark.parametrize("args, message", [
    (["--pairs=wrn40_2"], "must be TEACHER:STUDENT"),
    (["--pairs=vgg:wrn16_1"], "has no PyTorch class"),
    (["--pairs=lenet5:lenet5_half"], "does not take the 32x32"),
    (["--methods=nope"], "unknown method 'nope'"),
    (["--batch_size=0"], "--batch_size=0 must be a positive multiple"),
])
def test_torch_teacher_speed_refuses_bad_arguments_before_converting(args, message,
                                                                     capsys):
  pytest.importorskip("torch")
  from benchmarks import torch_teacher_speed  # pylint: disable=g-import-not-at-top
  assert torch_teacher_speed.main(args) == 1
  assert message in capsys.readouterr().err

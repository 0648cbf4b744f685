r"""One JSON and one Markdown page from the outputs of ``check.sh``.

  python -m benchmarks.accelerator.report OUT_DIR

Writes ``OUT_DIR/accelerator.json`` (every step's status, the environment, every
benchmark record, the official timings, the digits summary, the extrapolated CIFAR-10
run) and ``OUT_DIR/accelerator.md`` (tables for ``docs/results.md``). Exits 1 when a
step failed or ran out of time (skipped steps are listed, not failures).
"""

from __future__ import annotations

import json
import pathlib
import sys
import xml.etree.ElementTree as ElementTree
from typing import Any, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
_MIB = 2.0 ** 20
#: configs/cifar10.py's length when the config cannot be loaded (200 epochs x 72).
CIFAR10_ITERATIONS = (200, 72)


def _load(path: pathlib.Path) -> Any:
  return json.loads(path.read_text()) if path.is_file() else None


def test_results(path: pathlib.Path) -> list[dict[str, str]] | None:
  """``[{test, outcome}]`` from a pytest JUnit XML file."""
  if not path.is_file():
    return None
  out = []
  for case in ElementTree.parse(path).getroot().iter("testcase"):
    outcome = "passed"
    for tag in ("failure", "error", "skipped"):
      if case.find(tag) is not None:
        outcome = {"failure": "failed"}.get(tag, tag)
    out.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                "seconds": float(case.get("time") or 0)})
  return out


def cifar10_iterations() -> tuple[int, int]:
  """(epochs, iterations per epoch) of configs/cifar10.py."""
  try:
    from dfkd_jax.run import experiment  # pylint: disable=g-import-not-at-top
    config = experiment.load_config_file(str(REPO / "configs/cifar10.py"))
    return int(config.num_epochs), int(config.iterations_per_epoch)
  except Exception:  # pylint: disable=broad-except  # Reported with the fallback.
    return CIFAR10_ITERATIONS


def extrapolate(benchmarks: dict[str, Any], epochs: int, per_epoch: int
                ) -> list[dict[str, Any]]:
  """Hours of the full CIFAR-10 run per (method, dtype), from ResNet-34 s/iteration.

  From batch 512 (the config's) where measured, else from batch 64 times 8 (an upper
  bound where the device is not yet saturated at 64). Iterations only: evaluation and
  checkpoints (once per epoch) are not included; one compilation is.
  """
  out = []
  for dtype in ("float32", "bfloat16"):
    for batch, scale in ((512, 1), (64, 8)):
      result = benchmarks.get(f"bench_resnet34_b{batch}_{dtype}")
      if not result:
        continue
      for r in result["results"]:
        seconds = scale * r["seconds_per_iteration"]
        out.append({
            "method": r["method"], "compute_dtype": dtype, "from_batch": batch,
            "pair": r["pair"], "iterations": epochs * per_epoch,
            "seconds_per_iteration_at_512": seconds,
            "hours": (epochs * per_epoch * seconds + r["compile_seconds"]) / 3600,
            "basis": ("measured at batch 512" if scale == 1 else
                      "batch 64 x 8 (upper bound)")})
      break
  return out


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value / scale, spec)


def _pct(value) -> str:
  return "-" if value is None else f"{100 * value:.0f}%"


def speed_rows(benchmarks: dict[str, Any]) -> list[str]:
  header = ("Step", "Teacher -> student", "Batch", "Method", "dtype", "s / iteration",
            "Compile (s)", "Peak memory (MiB)", "GFLOP / iteration", "TFLOP/s",
            "of bf16 matmul", "of f32 matmul")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, result in benchmarks.items():
    for r in result["results"]:
      by_dtype = r.get("fraction_of_matmul_flops_by_dtype") or {}
      cells = [name, f"{r['teacher']} -> {r['student']}", str(r["batch_size"]), r["method"],
               r["compute_dtype"], _fmt(r["seconds_per_iteration"], ".4f"),
               _fmt(r["compile_seconds"], ".1f"), _fmt(r["peak_memory"]["bytes"], ".0f", _MIB),
               _fmt(r.get("flops_per_iteration"), ".1f", 1e9),
               _fmt(r.get("achieved_flops_per_second"), ".2f", 1e12),
               _pct(by_dtype.get("bfloat16")), _pct(by_dtype.get("float32"))]
      lines.append("| " + " | ".join(cells) + " |")
  return lines


def markdown(report: dict[str, Any]) -> str:
  env = report.get("environment") or {}
  versions = env.get("versions") or {}
  gpus = env.get("nvidia_smi") or []
  lines = ["# Accelerator check" + (" (dry run: tiny shapes)" if report["dry_run"] else ""),
           "",
           f"Backend {env.get('backend')}, {env.get('device_count')} device(s) "
           f"({', '.join(sorted(set(env.get('devices') or [])))}); "
           + (f"GPU {gpus[0].get('name')}, driver {gpus[0].get('driver_version')}, CUDA "
              f"{gpus[0].get('cuda_version')}; " if gpus and "name" in gpus[0] else "")
           + f"Python {env.get('python')}; "
           + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
           "", "| Step | Status | Seconds | Limit (s) |", "|---|---|---|---|"]
  lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit_s']} |"
            for s in report["steps"]]
  for key, title in (("tests", "Tests"), ("tests_highest_precision",
                                          "Failed tests again, float32 matmuls at full precision")):
    if report.get(key):
      lines += ["", f"**{title}**", "", "| Test | Outcome | Seconds |", "|---|---|---|"]
      lines += [f"| `{t['test']}` | {t['outcome']} | {t['seconds']:.1f} |" for t in report[key]]
  if report["benchmarks"]:
    matmuls = {}
    for result in report["benchmarks"].values():
      for dtype, m in (result.get("matmul_references") or {}).items():
        matmuls.setdefault(dtype, m)
    lines += ["", "**One training iteration** (`benchmarks.iteration_speed`; peak memory: "
              "the device's `peak_bytes_in_use` where reported, else the process's RSS). "
              "Dense matmul references of the same processes: "
              + ", ".join(f"{d} {m['size']}^2 {m['flops_per_second'] / 1e12:.2f} TFLOP/s"
                          for d, m in matmuls.items()) + ".", ""]
    lines += speed_rows(report["benchmarks"])
    overheads = [(n, o) for n, r in report["benchmarks"].items() for o in r["meta_overhead"]]
    if overheads:
      lines += ["", "| Step | Ratio | Target |", "|---|---|---|"]
      lines += [f"| {n} | {o['method']} / {o['baseline']} = {o['ratio']:.2f} | <= {o['target']} "
                f"({'met' if o['within_target'] else 'missed'}) |" for n, o in overheads]
  official = report.get("official")
  if official:
    ours = {(r["pair"], r["batch_size"], r["method"]): r["seconds_per_iteration"]
            for result in report["benchmarks"].values() for r in result["results"]
            if r["compute_dtype"] == "float32"}
    lines += ["", f"**Official LRA PyTorch iteration** (torch {official['torch_version']}, "
              f"{official['device']}; {official['timing']})", "",
              "| Teacher -> student | Batch | Official | s / iteration | Ours (float32) | "
              "s / iteration | Official / ours |", "|---|---|---|---|---|---|---|"]
    for r in official["results"]:
      mine = {"official_meta": "lra_mb", "official_plain": "dfkd"}[r["method"]]
      t = ours.get((r["pair"], r["batch_size"], mine))
      lines.append(f"| {r['pair']} | {r['batch_size']} | {r['method']} "
                   f"({r['replay_samples']} replayed) | {r['seconds_per_iteration']:.4f} | "
                   f"{mine} | {_fmt(t, '.4f')} | "
                   f"{'-' if not t else format(r['seconds_per_iteration'] / t, '.2f')} |")
  digits = report.get("digits")
  if digits:
    lines += ["", f"**Digits quickstart end to end** (teacher training included; "
              f"{report['digits_seconds']} s wall): teacher {digits['teacher_accuracy']:.2f}%, "
              f"student Acc_max {digits['acc_max']:.2f}% after {digits['epochs_completed']} "
              f"epochs, {digits['student_steps_per_second']:.1f} student steps/s."]
  if report["cifar10_extrapolation"]:
    e = report["cifar10_extrapolation"][0]
    lines += ["", f"**Full CIFAR-10 run extrapolated** (`configs/cifar10.py`, ResNet-34 -> "
              f"ResNet-18, {e['iterations']} iterations at batch 512; iterations and one "
              "compilation only, not the per-epoch evaluation):", "",
              "| Method | dtype | s / iteration at 512 | Basis | Hours |", "|---|---|---|---|---|"]
    lines += [f"| {e['method']} | {e['compute_dtype']} | {e['seconds_per_iteration_at_512']:.4f} "
              f"| {e['basis']} | {e['hours']:.2f} |" for e in report["cifar10_extrapolation"]]
  return "\n".join(lines) + "\n"


def build(out: pathlib.Path) -> dict[str, Any]:
  run = _load(out / "run.json") or {}
  steps = [_load(p) for p in sorted((out / "steps").glob("*.json"),
                                    key=lambda p: p.stat().st_mtime)]
  benchmarks = {p.stem: _load(p) for p in sorted(out.glob("bench_*.json"))}
  epochs, per_epoch = cifar10_iterations()
  digits_step = next((s for s in steps if s["name"] == "digits"), None)
  return {
      "dry_run": bool(run.get("dry_run")), "run": run, "steps": steps,
      "environment": _load(out / "environment.json"),
      "tests": test_results(out / "tests.xml"),
      "tests_highest_precision": test_results(out / "tests_highest_precision.xml"),
      "benchmarks": benchmarks,
      "official": _load(out / "official_lra.json"),
      "digits": _load(out / "digits" / "summary.json"),
      "digits_seconds": digits_step and digits_step["seconds"],
      "cifar10_extrapolation": extrapolate(benchmarks, epochs, per_epoch),
  }


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  if len(args) != 1 or not (pathlib.Path(args[0]) / "steps").is_dir():
    print("usage: python -m benchmarks.accelerator.report OUT_DIR (a check.sh output "
          "folder, with steps/)", file=sys.stderr)
    return 2
  out = pathlib.Path(args[0])
  report = build(out)
  if report["digits"]:  # The summary's config is in the run's own folder.
    report["digits"] = {k: v for k, v in report["digits"].items() if k != "config"}
  (out / "accelerator.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / "accelerator.md").write_text(markdown(report))
  print(markdown(report))
  bad = [s["name"] for s in report["steps"] if s["status"] in ("failed", "timeout")]
  if bad:
    print(f"error: steps {', '.join(bad)} failed or ran out of time; see "
          f"{out}/steps/NAME.log", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())

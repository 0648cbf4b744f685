r"""Small steps of ``check.sh``: the environment record and the digits summary check.

  python -m benchmarks.accelerator.steps env OUT.json
  python -m benchmarks.accelerator.steps summary runs/digits/summary.json --epochs=12
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import math
import pathlib
import platform
import shutil
import subprocess
import sys
from typing import Any, Sequence

#: Distributions whose versions the report quotes (missing ones are ``None``).
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "libtpu", "flax",
            "optax", "orbax-checkpoint", "chex", "numpy", "ml_collections",
            "tensorflow-datasets", "scikit-learn", "torch", "higher")


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def nvidia_smi() -> list[dict[str, str]] | None:
  """Name, driver, memory and CUDA version of each GPU, or ``None`` without a GPU."""
  if not shutil.which("nvidia-smi"):
    return None
  fields = ("name", "driver_version", "memory.total", "compute_cap")
  try:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20, check=True).stdout
    banner = subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                            timeout=20).stdout
  except (OSError, subprocess.SubprocessError) as e:
    return [{"error": str(e)}]
  cuda = next((line.split("CUDA Version:")[1].split("|")[0].strip()
               for line in banner.splitlines() if "CUDA Version:" in line), None)
  return [dict(zip(fields, (v.strip() for v in line.split(","))), cuda_version=cuda)
          for line in out.strip().splitlines()]


def environment() -> dict[str, Any]:
  """Devices, driver, and the versions of Python and the packages that matter."""
  import jax  # pylint: disable=g-import-not-at-top  # After the record of versions.
  info = io.StringIO()
  stdout, sys.stdout = sys.stdout, info
  try:
    jax.print_environment_info()
  finally:
    sys.stdout = stdout
  devices = jax.devices()
  stats = devices[0].memory_stats() or {}
  return {
      "python": platform.python_version(), "platform": platform.platform(),
      "versions": {name: _version(name) for name in PACKAGES},
      "backend": jax.default_backend(), "device_count": len(devices),
      "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
      "device_memory_bytes": stats.get("bytes_limit"),
      "nvidia_smi": nvidia_smi(),
      "jax_environment_info": info.getvalue(),
  }


def check_summary(path: pathlib.Path, epochs: int) -> list[str]:
  """What is wrong with a finished run's ``summary.json`` (empty when it is sound)."""
  if not path.is_file():
    return [f"no summary at {path}"]
  summary = json.loads(path.read_text())
  problems = []
  if summary.get("epochs_completed") != epochs:
    problems.append(f"epochs_completed={summary.get('epochs_completed')}, expected {epochs}")
  accuracy = summary.get("test_accuracy") or []
  if len(accuracy) != epochs or not all(
      isinstance(a, (int, float)) and math.isfinite(a) and 0 <= a <= 100 for a in accuracy):
    problems.append(f"test_accuracy={accuracy} is not {epochs} percentages")
  teacher = summary.get("teacher_accuracy")
  if not isinstance(teacher, (int, float)) or not 0 <= teacher <= 100:
    problems.append(f"teacher_accuracy={teacher} is not a percentage")
  if accuracy and summary.get("acc_max") != max(accuracy):
    problems.append(f"acc_max={summary.get('acc_max')} is not max(test_accuracy)")
  if not summary.get("student_steps_per_second"):
    problems.append("student_steps_per_second is missing")
  return problems


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.accelerator.steps",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  env = sub.add_parser("env", help="write the environment record")
  env.add_argument("out")
  summary = sub.add_parser("summary", help="check a finished run's summary.json")
  summary.add_argument("path")
  summary.add_argument("--epochs", type=int, required=True)
  args = parser.parse_args(argv)
  if args.command == "env":
    record = environment()
    text = json.dumps(record, indent=1)
    pathlib.Path(args.out).write_text(text + "\n")
    print(record["jax_environment_info"])
    print(json.dumps({k: v for k, v in record.items() if k != "jax_environment_info"},
                     indent=1))
    return 0
  problems = check_summary(pathlib.Path(args.path), args.epochs)
  for p in problems:
    print(f"error: {args.path}: {p}", file=sys.stderr)
  if not problems:
    s = json.loads(pathlib.Path(args.path).read_text())
    print(f"summary ok: teacher {s['teacher_accuracy']:.2f}%, acc_max {s['acc_max']:.2f}%, "
          f"{s['student_steps_per_second']:.1f} student steps/s")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())

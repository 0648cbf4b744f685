r"""Time to the first epoch of a run, and of a second identical run with the cache (JSON).

  python -m benchmarks.first_epoch --config=configs/digits.py \
      --out=docs/results/benchmarks/cpu_first_epoch_digits.json

Run from the repository root, with the teacher already trained. Starts two
``python -m dfkd_jax.train`` processes of the same config one after the other, in two
fresh workdirs, sharing one fresh persistent compilation cache, and reads their output
as it comes. For each it records the seconds from the process start to

* ``first_iteration_s``: the trainer's "compiled and ran the first iteration" line;
* ``first_epoch_s``: the end of epoch 1 (its "epoch 1/E: student ..." line);
* ``total_s``: the end of the process;

and whether the trainer said the iteration was ``loaded from the compilation cache``.
The target: the second run loads the iteration (no compile), which the trainer reads
from JAX's own cache-hit event (tests/test_first_use.py tests the signal).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Sequence

import jax

from dfkd_jax import experiment
from dfkd_jax import train

FIRST_ITERATION = re.compile(r"^compiled and ran the first iteration in ([\d.]+) s")
FIRST_EPOCH = re.compile(r"^epoch 1/\d+: student")
CACHE_HIT = "(loaded from the compilation cache)"


def read_timings(timed_lines: Iterable[tuple[float, str]]) -> dict[str, Any]:
  """The timings of one run from its ``(seconds since start, line)`` output."""
  out: dict[str, Any] = {"first_iteration_s": None, "first_iteration_reported_s": None,
                         "first_epoch_s": None, "iteration_from_cache": False}
  for seconds, line in timed_lines:
    if out["first_iteration_s"] is None and (m := FIRST_ITERATION.match(line)):
      out["first_iteration_s"] = round(seconds, 2)
      out["first_iteration_reported_s"] = float(m.group(1))
      out["iteration_from_cache"] = CACHE_HIT in line
    elif out["first_epoch_s"] is None and FIRST_EPOCH.match(line):
      out["first_epoch_s"] = round(seconds, 2)
  return out


def timed_run(config: str, workdir: pathlib.Path, cache: pathlib.Path,
              settings: Sequence[str]) -> dict[str, Any]:
  """One training process, its output timed line by line."""
  args = [sys.executable, "-m", "dfkd_jax.train", f"--config={config}",
          f"--workdir={workdir}", f"--compilation_cache_dir={cache}",
          *(f"--config.{s}" for s in settings)]
  start = time.time()
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1)
  lines = [(time.time() - start, line.strip()) for line in proc.stdout]
  if proc.wait() != 0:
    raise RuntimeError(f"{' '.join(args)} failed:\n" +
                       "\n".join(l for _, l in lines[-20:]))
  return {**read_timings(lines), "total_s": round(time.time() - start, 2)}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a --config.FIELD=VALUE for both runs (repeatable)")
  parser.add_argument("--out", required=True, help="the JSON file to write")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  if out.exists():
    parser.error(f"{out} exists; results are never overwritten: pass another --out")
  results: dict[str, Any] = {
      "command": " ".join([sys.executable, "-m", "benchmarks.first_epoch",
                           *(argv if argv is not None else sys.argv[1:])]),
      "config": args.config, "settings": args.set,
      "host": {"platform": platform.platform(), "cpus": os.cpu_count(),
               "jax": jax.__version__, "backend": jax.default_backend(),
               "load_average_before": os.getloadavg()}}
  # The teacher is trained (or found) first, untimed: both runs reuse it.
  train.train_teacher_on_first_use(experiment.load_config_file(args.config))
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    for name in ("first_run", "second_run"):
      results[name] = timed_run(args.config, scratch / name, scratch / "cache", args.set)
      print(json.dumps({name: results[name]}), flush=True)
  results["second_run_compiled_the_iteration"] = not results["second_run"][
      "iteration_from_cache"]
  results["host"]["load_average_after"] = os.getloadavg()
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()

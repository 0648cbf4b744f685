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
import pathlib
import re
import subprocess
import tempfile
import time
from typing import Any, Iterable, Sequence

from benchmarks import whole_runs

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
  args = whole_runs.train_command(config, workdir, cache, settings)
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
  whole_runs.add_arguments(parser)
  args = parser.parse_args(argv)
  results = whole_runs.start("benchmarks.first_epoch", args, parser, argv)
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    for name in ("first_run", "second_run"):
      results[name] = timed_run(args.config, scratch / name, scratch / "cache", args.set)
      print(json.dumps({name: results[name]}), flush=True)
  results["second_run_compiled_the_iteration"] = not results["second_run"][
      "iteration_from_cache"]
  whole_runs.finish(results, args.out)


if __name__ == "__main__":
  main()

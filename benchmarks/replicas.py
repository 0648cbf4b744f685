r"""N seeds as replicas in one program vs N separate runs: wall time and memory (JSON out).

  python -m benchmarks.replicas --config=configs/digits.py --replicas=1,4,8 \
      --set=num_epochs=2 --out=docs/results/benchmarks/cpu_replicas_digits.json

Run from the repository root. For every N of ``--replicas`` it times, as whole
processes (``python -m dfkd_jax.train``, teacher already trained, wall time including
start-up, compilation and evaluation):

* ``one_program``: one run with ``--config.num_seeds=N`` (seeds 0..N-1);
* ``separate_no_cache``: N runs with seeds 0..N-1 one after another, no compilation
  cache (every run compiles);
* ``separate_cache``: the same N runs with a fresh persistent compilation cache (the
  first run compiles, the others load the iteration from the cache).

Each case records its seconds, the ratio ``one_program / separate_*`` and the peak
resident set size of its processes (``wait4``; for the one-program case also per
replica). On CPU all replicas share the same cores, so what one program saves is the
compiles and the per-process start-up, not arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import tempfile
import time
from typing import Any, Sequence

from benchmarks import whole_runs


def _train(config: str, workdir: pathlib.Path, settings: Sequence[str],
           cache: str) -> tuple[float, int]:
  """One ``python -m dfkd_jax.train`` process: its wall seconds and peak RSS (bytes)."""
  args = whole_runs.train_command(config, workdir, cache, settings)
  start = time.time()
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.time() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.read()[-2000:]}")
  return seconds, usage.ru_maxrss * 1024  # Linux reports KiB.


def measure(config: str, n: int, settings: Sequence[str], scratch: pathlib.Path
            ) -> dict[str, Any]:
  """The three cases for ``n`` seeds."""
  out: dict[str, Any] = {"num_seeds": n}
  seconds, peak = _train(config, scratch / f"one_{n}", [*settings, f"num_seeds={n}"],
                         cache="")
  out["one_program"] = {"seconds": seconds, "peak_rss_bytes": peak,
                        "peak_rss_bytes_per_replica": peak / n}
  for case, cache in (("separate_no_cache", ""),
                      ("separate_cache", str(scratch / f"cache_{n}"))):
    runs = [_train(config, scratch / f"{case}_{n}_seed{seed}",
                   [*settings, f"seed={seed}"], cache) for seed in range(n)]
    total = sum(s for s, _ in runs)
    out[case] = {"seconds": total, "seconds_per_run": [s for s, _ in runs],
                 "peak_rss_bytes": max(p for _, p in runs)}
    out[f"ratio_one_program_to_{case}"] = seconds / total
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  whole_runs.add_arguments(parser)
  parser.add_argument("--replicas", default="1,4,8",
                      help="comma-separated N (seeds 0..N-1)")
  args = parser.parse_args(argv)
  counts = [int(n) for n in args.replicas.split(",")]
  if any(n < 1 for n in counts):
    parser.error(f"--replicas={args.replicas}: every N must be >= 1")
  results = whole_runs.start("benchmarks.replicas", args, parser, argv)
  results["cases"] = []
  with tempfile.TemporaryDirectory() as scratch:
    for n in counts:
      results["cases"].append(measure(args.config, n, args.set, pathlib.Path(scratch)))
      print(json.dumps(results["cases"][-1]), flush=True)
  whole_runs.finish(results, args.out)


if __name__ == "__main__":
  main()

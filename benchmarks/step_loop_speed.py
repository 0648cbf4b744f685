r"""Scanned vs unrolled steps: compile time and seconds per iteration per batch size (JSON out).

  python -m benchmarks.step_loop_speed --config=configs/mnist.py --methods=lra_mb \
      --batch_sizes=64,256,512 --repeats=3 --set teacher_dir=T --set data_dir=DATA \
      --out=docs/results/benchmarks/cpu_step_loop_lenet5.json

Run from the repository root. For every method and batch size it builds the trainer's
own jitted iteration (:func:`dfkd_jax.run.iteration.make_iteration`) with
``config.step_loop`` = ``unroll`` and = ``scan``, compiles both, then times all of them
in interleaved rounds (one call of each per round, ``--repeats`` rounds after one
warm-up) so that load changes on a shared machine hit them alike. It reports per case
``compile_seconds``, ``seconds_per_iteration`` (the median call) and ``ratio_to_unroll``
(scanned over unrolled seconds per iteration at the same method and batch size): the
measurement behind ``step_loop="auto"`` (``dfkd_jax.run.experiment``).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Sequence

from benchmarks import replica_speed
from benchmarks import whole_runs

STEP_LOOPS = ("unroll", "scan")


def measure(config_arg: str, method: str, batch_sizes: Sequence[int],
            settings: Sequence[str], repeats: int) -> list[dict[str, Any]]:
  """Both step loops at every batch size of one method, timed interleaved."""
  programs = {}
  for batch_size in batch_sizes:
    for loop in STEP_LOOPS:
      config = whole_runs.resolved_config(
          f"{config_arg.partition(':')[0]}:{method}",
          [*settings, f"batch_size={batch_size}", f"step_loop={loop}"])
      config.tensorboard = False
      programs[(batch_size, loop)] = replica_speed.compile_program(config)
  replica_speed.time_interleaved(programs.values(), repeats)
  cases = []
  for (batch_size, loop), program in programs.items():
    seconds = statistics.median(program["times"])
    unrolled = statistics.median(programs[(batch_size, "unroll")]["times"])
    cases.append({"method": method, "batch_size": batch_size, "step_loop": loop,
                  "compile_seconds": program["compile_seconds"],
                  "seconds_per_iteration": seconds, "ratio_to_unroll": seconds / unrolled,
                  "times": program["times"]})
  return cases


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  whole_runs.add_arguments(parser)
  parser.add_argument("--methods", default="lra_mb")
  parser.add_argument("--batch_sizes", default="64,256,512")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  try:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  except ValueError:
    batch_sizes = []
  if not batch_sizes or min(batch_sizes) < 1:
    parser.error(f"--batch_sizes={args.batch_sizes}: comma-separated positive integers")
  if args.repeats < 1:
    parser.error(f"--repeats={args.repeats}: must be >= 1")
  results = whole_runs.start("benchmarks.step_loop_speed", args, parser, argv)
  results["repeats"] = args.repeats
  results["cases"] = [case for method in args.methods.split(",")
                      for case in measure(args.config, method, batch_sizes, args.set,
                                          args.repeats)]
  for c in results["cases"]:
    print(f"{c['method']} batch {c['batch_size']} {c['step_loop']}: compile "
          f"{c['compile_seconds']:.1f} s, {c['seconds_per_iteration']:.3f} s/it "
          f"({c['ratio_to_unroll']:.2f}x unrolled)")
  whole_runs.finish(results, args.out)


if __name__ == "__main__":
  main()

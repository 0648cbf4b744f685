r"""Per-replica speed: one iteration of an N-replica program against a single run (JSON out).

  python -m benchmarks.replica_speed --config=configs/digits.py \
      --methods=lra_mb,mb_dfkd,lra_ema --replicas=4,8 \
      --out=docs/results/benchmarks/cpu_replica_speed_digits.json

Run from the repository root. For every method it builds the trainer's own jitted
iteration (:func:`dfkd_jax.run.iteration.make_iteration`) for a single run (``num_seeds=1``)
and for ``num_seeds=N`` of every ``--replicas`` under every ``--replica_loops``
(``config.replica_loop``: ``map`` or ``vmap``), compiles each, then times them in
interleaved rounds (one call of each per round, ``--repeats`` rounds after one warm-up),
so that load changes on a shared machine hit them alike. It reports per case:

* ``seconds_per_iteration``: the median call;
* ``seconds_per_replica_iteration``: that divided by N;
* ``ratio_to_single``: seconds per replica-iteration over the single run's seconds per
  iteration (target: at most 1.0, i.e. a replica costs no more than a run);
* ``compile_seconds``.

The teacher is the config's (trained first if missing, untimed), as ``python -m
dfkd_jax.train`` would use it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Sequence

import jax

from benchmarks import whole_runs
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import experiment, iteration, train_state


def compile_program(config) -> dict[str, Any]:
  """The config's placed state, teacher variables and compiled iteration."""
  setup = experiment.build(config, log=lambda s: None)
  state = train_state.init_replicas(setup)
  specs = train_state.state_specs(state, setup.replay, train_state.replicated(setup))
  state = parallel.put(state, setup.mesh, specs)
  teacher_vars = jax.device_put(setup.teacher_variables, parallel.replicated(setup.mesh))
  step = iteration.make_iteration(setup, state)
  t0 = time.perf_counter()
  compiled = step.lower(state, teacher_vars).compile()
  return {"compiled": compiled, "state": state, "teacher_vars": teacher_vars,
          "compile_seconds": time.perf_counter() - t0, "times": []}


def call(program: dict[str, Any]) -> float:
  """One timed call (the state advances, as in training)."""
  t0 = time.perf_counter()
  program["state"], metrics = program["compiled"](program["state"],
                                                  program["teacher_vars"])
  jax.block_until_ready((program["state"], metrics))
  return time.perf_counter() - t0


def time_interleaved(programs, repeats: int) -> None:
  """One warm-up call of each program, then ``repeats`` rounds of one call each, so that
  load changes on a shared machine hit them alike (times appended to each's ``times``)."""
  for program in programs:
    call(program)
  for _ in range(repeats):
    for program in programs:
      program["times"].append(call(program))


def measure_method(config_arg: str, method: str, counts: Sequence[int],
                   loops: Sequence[str], settings: Sequence[str], repeats: int
                   ) -> dict[str, Any]:
  """The single run and every (N, replica loop) for one method, timed interleaved."""
  programs = {}
  for n, loop in [(1, None), *((n, loop) for n in counts for loop in loops)]:
    config = whole_runs.resolved_config(
        f"{config_arg.partition(':')[0]}:{method}",
        [*settings, f"num_seeds={n}", *([f"replica_loop={loop}"] if loop else [])])
    config.tensorboard = False
    programs[(n, loop)] = compile_program(config)
  time_interleaved(programs.values(), repeats)
  single = statistics.median(programs[(1, None)]["times"])
  cases = []
  for (n, loop), program in programs.items():
    seconds = statistics.median(program["times"])
    cases.append({"num_seeds": n, "replica_loop": loop, "seconds_per_iteration": seconds,
                  "seconds_per_replica_iteration": seconds / n,
                  "ratio_to_single": seconds / n / single,
                  "compile_seconds": program["compile_seconds"],
                  "times": program["times"]})
  return {"method": method, "cases": cases}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  whole_runs.add_arguments(parser)
  parser.add_argument("--methods", default="lra_mb,mb_dfkd,lra_ema")
  parser.add_argument("--replicas", default="4,8", help="comma-separated N > 1")
  parser.add_argument("--replica_loops", default="map,vmap",
                      help="comma-separated config.replica_loop values")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)
  counts = [int(n) for n in args.replicas.split(",")]
  if any(n < 2 for n in counts):
    parser.error(f"--replicas={args.replicas}: every N must be >= 2 (1 is always run)")
  loops = args.replica_loops.split(",")
  if not set(loops) <= {"map", "vmap"}:
    parser.error(f"--replica_loops={args.replica_loops}: each must be map or vmap")
  if args.repeats < 1:
    parser.error(f"--repeats={args.repeats}: must be >= 1")
  results = whole_runs.start("benchmarks.replica_speed", args, parser, argv)
  results["repeats"] = args.repeats
  results["methods"] = [
      measure_method(args.config, method, counts, loops, args.set, args.repeats)
      for method in args.methods.split(",")]
  for m in results["methods"]:
    print(m["method"], " ".join(f"N={c['num_seeds']} {c['replica_loop']}: "
                                f"{c['ratio_to_single']:.2f}x"
                                for c in m["cases"]))
  whole_runs.finish(results, args.out)


if __name__ == "__main__":
  main()

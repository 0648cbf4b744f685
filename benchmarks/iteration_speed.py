r"""Speed of one DFKD training iteration: time, compile time, memory, FLOP/s (JSON out).

  python -m benchmarks.iteration_speed --pairs=lenet5 --batch_sizes=64,256,512
  python -m benchmarks.iteration_speed --pairs=resnet34,wrn40_2 --batch_sizes=256 \
      --compute_dtype=bfloat16                 # on a GPU/TPU
  python -m benchmarks.iteration_speed --smoke # tiny digits config (what CI runs)

Run from the repository root. For every method, model pair and batch size it builds the
trainer's own jitted iteration (:func:`dfkd_jax.run.iteration.make_iteration`: generator steps
then student steps, one program with donated state, sharded over all devices of
``jax.devices()``) and reports:

* ``compile_seconds``: lowering + XLA compilation of the iteration;
* ``seconds_per_iteration``: the median over ``--repeats`` timed calls after one warm-up
  call; the methods of one (pair, batch size) are timed in interleaved rounds, so load
  changes on a shared machine hit them alike and their ratio is fair;
* ``examples_per_second``: generated images per second, ``batch * (g + s) / t``, and
  ``student_steps_per_second`` (``s / t``, as in ``summary.json``);
* memory: XLA's buffer assignment of the compiled iteration (``memory_analysis``:
  arguments, outputs, temporaries, peak), and the process's peak so far: the device's
  ``peak_bytes_in_use`` where the backend reports memory stats (GPU/TPU), else the
  process's peak resident set size (``getrusage``; monotone over the whole run, so an
  upper bound for the case);
* ``flops_per_iteration`` from XLA's cost analysis and the achieved FLOP/s, against a
  dense matmul timed in the same process (the machine's practical limit), in the
  compute dtype and in every dtype of ``--matmul_dtypes`` (``matmul_references``,
  ``fraction_of_matmul_flops_by_dtype``: e.g. a bfloat16 run against the bf16 and the
  f32 matmul). XLA counts a
  ``lax.scan`` body once, so when the timed program scans (accelerators) the FLOPs
  come from the same iteration lowered with the steps unrolled. With several devices,
  FLOPs and XLA memory are those of one device's program (the ``shard_map`` body) and
  the matmul runs on one device, so the fraction is per device.

``meta_overhead`` gives ``t(lra_mb) / t(mb_dfkd)`` (and ``lra_pre / pre_dfkd`` when both
are measured): the cost of the exact second-order meta update over the joint update on
the same shapes (target: at most 1.8; reported, not asserted).

Teachers are randomly initialised (saved to a temporary directory in the teacher
format): the speed of an iteration does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from dfkd_jax import models
from dfkd_jax.data import datasets as data
from dfkd_jax.methods import presets as methods
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import experiment
from dfkd_jax.run import iteration
from dfkd_jax.run import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
META_TARGET = 1.8
#: Meta-update method -> the joint-update method with the same replay.
META_BASELINES = {"lra_mb": "mb_dfkd", "lra_pre": "pre_dfkd"}
DEFAULT_METHODS = ("dfkd", "mb_dfkd", "lra_mb")


class Pair(NamedTuple):
  """A teacher -> student pair and the config file its runs use."""

  teacher: str
  student: str
  dataset: str
  config_file: str


PAIRS = {
    "lenet5": Pair("lenet5", "lenet5_half", "mnist", "configs/mnist.py"),
    "resnet34": Pair("resnet34", "resnet18", "cifar10", "configs/cifar10.py"),
    "wrn40_2": Pair("wrn40_2", "wrn16_2", "cifar10", "configs/cifar10.py"),
    "digits": Pair("digits_cnn", "digits_cnn_half", "digits", "configs/digits.py"),
}
#: --smoke: the tiny digits setting of the tests (4 min 24 s on 2 CPUs, mostly compiling).
SMOKE = dict(pairs=("digits",), batch_sizes=(32,), repeats=2, student_steps=1,
             latent_dim=16, matmul_size=256)


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Set-up.
# ---------------------------------------------------------------------------


def save_random_teacher(pair: Pair, directory: pathlib.Path, seed: int = 0
                        ) -> pathlib.Path:
  """A randomly initialised teacher of ``pair`` in the teacher checkpoint format."""
  shape = data.model_input_shape(pair.dataset, to_32x32=True)
  num_classes = data.get_dataset(pair.dataset).spec.num_classes
  module = models.get(pair.teacher, num_classes=num_classes, input_shape=shape)
  variables = jax.jit(lambda k, x: module.init(k, x, train=False))(
      jax.random.PRNGKey(seed), jnp.zeros((1, *shape), jnp.float32))
  meta = teacher_lib.TeacherMeta(
      arch=pair.teacher, num_classes=num_classes, input_shape=shape,
      mean=(0.0,) * shape[-1], std=(1.0,) * shape[-1], dataset=pair.dataset,
      source="random init (benchmarks/iteration_speed.py)")
  return teacher_lib.save_teacher(directory / f"{pair.teacher}_{pair.dataset}",
                                  variables, meta)


def make_config(pair: Pair, method: str, batch_size: int, teacher_dir: pathlib.Path,
                student_steps: int | None, latent_dim: int | None,
                compute_dtype: str, step_loop: str):
  """The pair's config file with ``method``, the batch size and the benchmark settings."""
  config = experiment.load_config_file(f"{REPO / pair.config_file}:{method}")
  config.teacher_dir = str(teacher_dir)
  config.teacher_config = ""
  config.student = pair.student
  config.batch_size = batch_size
  # Slots are filled from one batch: the largest slot size <= the config's dividing it.
  config.memory.samples_per_slot = math.gcd(config.memory.samples_per_slot, batch_size)
  if student_steps:
    config.student_steps = student_steps
  if latent_dim:
    config.latent_dim = latent_dim
  if compute_dtype:
    config.compute_dtype = compute_dtype
  config.step_loop = step_loop
  config.tensorboard = False
  return config


def _flops(cost) -> float | None:
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


# ---------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------


def peak_memory() -> dict[str, Any]:
  """The process's peak memory so far: device stats where reported, else peak RSS."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return {"source": "device memory_stats peak_bytes_in_use (max over local devices)",
            "bytes": max(int(s["peak_bytes_in_use"]) for s in stats)}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024  # Linux reports KiB.
  return {"source": "process peak RSS (getrusage ru_maxrss, monotone over the run)",
          "bytes": int(rss)}


def _memory_analysis(compiled) -> dict[str, int] | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend has it.
    return None
  if m is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")
  return {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}


def matmul_flops_per_second(size: int, dtype: str, repeats: int = 5) -> dict[str, Any]:
  """Achieved FLOP/s of a jitted dense ``[n, n] @ [n, n]`` on the default device."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (size, size), jnp.dtype(dtype))
  b = jax.random.normal(k2, (size, size), jnp.dtype(dtype))
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  return {"size": size, "dtype": dtype, "seconds": seconds,
          "flops_per_second": 2.0 * size ** 3 / seconds}


@dataclasses.dataclass
class Case:
  """One (method, pair, batch size): its compiled iteration and running state."""

  method: str
  pair_name: str
  config: Any
  setup: Any
  compiled: Callable[..., Any]
  state: Any
  teacher_vars: Any
  compile_seconds: float
  flops: float | None
  flops_source: str
  memory_analysis: dict[str, int] | None
  times: list[float] = dataclasses.field(default_factory=list)

  def step(self) -> float:
    t0 = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.teacher_vars)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


def compile_case(method: str, pair_name: str, config) -> Case:
  """Builds, places and compiles the trainer's iteration for ``config``."""
  setup = experiment.build(config, log=lambda s: None)
  state = train_state.init_state(setup)
  state = parallel.put(state, setup.mesh, train_state.state_specs(state, setup.replay))
  teacher_vars = jax.device_put(setup.teacher_variables, parallel.replicated(setup.mesh))
  step = iteration.make_iteration(setup, state)
  t0 = time.perf_counter()
  compiled = step.lower(state, teacher_vars).compile()
  compile_seconds = time.perf_counter() - t0
  if not setup.unroll:
    unrolled = dataclasses.replace(setup, unroll=True)
    flops = _flops(iteration.make_iteration(unrolled, state).lower(
        state, teacher_vars).cost_analysis())
    source = "XLA cost analysis of the iteration lowered with unrolled steps"
  else:
    flops = _flops(compiled.cost_analysis())
    source = "XLA cost analysis of the compiled (unrolled) iteration"
  return Case(method, pair_name, config, setup, compiled, state, teacher_vars,
              compile_seconds, flops, source, _memory_analysis(compiled))


def time_cases(cases: Sequence[Case], repeats: int) -> None:
  """One warm-up call each, then ``repeats`` interleaved rounds of one call per case."""
  for case in cases:
    case.step()
  for _ in range(repeats):
    for case in cases:
      case.times.append(case.step())


def case_record(case: Case, matmul: dict[str, Any],
                references: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
  c = case.config
  seconds = statistics.median(case.times)
  pair = PAIRS[case.pair_name]
  record = {
      "method": case.method, "pair": case.pair_name,
      "teacher": pair.teacher, "student": pair.student,
      "input_shape": list(case.setup.input_shape), "batch_size": c.batch_size,
      "generator_steps": c.generator_steps, "student_steps": c.student_steps,
      "latent_dim": c.latent_dim, "compute_dtype": c.compute_dtype,
      "step_loop": "unroll" if case.setup.unroll else "scan",
      "compile_seconds": case.compile_seconds,
      "seconds_per_iteration": seconds,
      "seconds_per_iteration_min": min(case.times),
      "seconds_per_iteration_all": case.times,
      "examples_per_second": c.batch_size * (c.generator_steps + c.student_steps) / seconds,
      "student_steps_per_second": c.student_steps / seconds,
      "memory_analysis": case.memory_analysis,
      "peak_memory": peak_memory(),
      "flops_per_iteration": case.flops, "flops_source": case.flops_source,
  }
  if case.flops is not None:
    record["achieved_flops_per_second"] = case.flops / seconds
    record["fraction_of_matmul_flops"] = case.flops / seconds / matmul["flops_per_second"]
    record["fraction_of_matmul_flops_by_dtype"] = {
        dtype: case.flops / seconds / ref["flops_per_second"]
        for dtype, ref in (references or {}).items()}
  return record


def meta_overhead(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """``t(meta) / t(joint)`` for every (pair, batch) where both methods were measured."""
  by_key = {(r["pair"], r["batch_size"], r["method"]): r for r in results}
  out = []
  for (pair, batch, method), r in by_key.items():
    baseline = by_key.get((pair, batch, META_BASELINES.get(method)))
    if baseline is None:
      continue
    ratio = r["seconds_per_iteration"] / baseline["seconds_per_iteration"]
    out.append({"pair": pair, "batch_size": batch, "method": method,
                "baseline": baseline["method"], "ratio": ratio, "target": META_TARGET,
                "within_target": ratio <= META_TARGET})
  return out


# ---------------------------------------------------------------------------
# The suite.
# ---------------------------------------------------------------------------


def _host() -> dict[str, Any]:
  cpu = platform.processor()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpu": cpu, "cpu_count": os.cpu_count(),
          "memory_bytes": (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                           if hasattr(os, "sysconf") else None)}


def check_args(method_names: Sequence[str], pair_names: Sequence[str],
               batch_sizes: Sequence[int]) -> None:
  """Raises ``ValueError`` naming a bad method, pair or batch size (before compiling)."""
  for name in method_names:
    methods.get(name)
  for name in pair_names:
    if name not in PAIRS:
      raise ValueError(f"unknown pair {name!r}; valid pairs: {', '.join(PAIRS)}")
  devices = len(jax.devices())
  for b in batch_sizes:
    if b <= 0 or b % devices:
      raise ValueError(f"batch size {b} must be a positive multiple of the device "
                       f"count ({devices})")


def run_suite(method_names: Sequence[str], pair_names: Sequence[str],
              batch_sizes: Sequence[int], repeats: int, student_steps: int | None = None,
              latent_dim: int | None = None, compute_dtype: str = "",
              step_loop: str = "auto", matmul_size: int | None = None,
              matmul_dtypes: Sequence[str] = ()) -> dict[str, Any]:
  """Measures every case; returns the JSON-serialisable result."""
  check_args(method_names, pair_names, batch_sizes)
  load_before = os.getloadavg()
  backend = jax.default_backend()
  matmul_dtype = compute_dtype or "float32"
  matmul_size = matmul_size or (2048 if backend == "cpu" else 8192)
  log(f"dense matmul reference: {matmul_size}^2 {matmul_dtype}")
  matmul = matmul_flops_per_second(matmul_size, matmul_dtype)
  references = {matmul_dtype: matmul}
  for dtype in matmul_dtypes:
    if dtype not in references:
      log(f"dense matmul reference: {matmul_size}^2 {dtype}")
      references[dtype] = matmul_flops_per_second(matmul_size, dtype)
  results = []
  with tempfile.TemporaryDirectory(prefix="dfkd_bench_teachers_") as tmp:
    for pair_name in pair_names:
      pair = PAIRS[pair_name]
      teacher_dir = save_random_teacher(pair, pathlib.Path(tmp))
      for batch in batch_sizes:
        cases = []
        for method in method_names:
          config = make_config(pair, method, batch, teacher_dir, student_steps,
                               latent_dim, compute_dtype, step_loop)
          log(f"{pair.teacher}->{pair.student} batch {batch} {method}: compiling")
          cases.append(compile_case(method, pair_name, config))
        log(f"{pair.teacher}->{pair.student} batch {batch}: timing {repeats} rounds")
        time_cases(cases, repeats)
        for case in cases:
          record = case_record(case, matmul, references)
          log(f"  {case.method}: {record['seconds_per_iteration'] * 1e3:.1f} ms/iteration"
              f", compile {record['compile_seconds']:.1f} s")
          results.append(record)
        del cases
  return {
      "benchmark": "iteration_speed",
      "jax_version": jax.__version__,
      "backend": backend,
      "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
      "device_count": len(jax.devices()),
      "host": _host(),
      "load_average_1_5_15min_before": list(load_before),
      "load_average_1_5_15min_after": list(os.getloadavg()),
      "teacher_weights": "random init: the speed of an iteration does not depend on "
                         "the weights' values",
      "iteration": "generator_steps generator updates + student_steps student updates, "
                   "one jitted call with donated state (dfkd_jax.run.iteration.make_iteration)",
      "timing": f"median of {repeats} calls after one warm-up call; the methods of one "
                "(pair, batch size) timed in interleaved rounds",
      "matmul": matmul,
      "matmul_references": references,
      "flops_and_xla_memory": "per device (one device's program); examples/s global",
      "results": results,
      "meta_overhead": meta_overhead(results),
  }


def _ints(text: str) -> list[int]:
  try:
    return [int(t) for t in text.split(",") if t]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                     ) from e


def _names(text: str) -> list[str]:
  return [t for t in text.split(",") if t]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.iteration_speed",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--methods", type=_names, default=list(DEFAULT_METHODS),
                      help="comma-separated method names, or 'all' (every preset)")
  parser.add_argument("--pairs", type=_names, default=["lenet5", "resnet34", "wrn40_2"],
                      help=f"comma-separated pairs: {', '.join(PAIRS)}")
  parser.add_argument("--batch_sizes", type=_ints, default=[64, 256])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--student_steps", type=int, default=None,
                      help="default: the config's (10)")
  parser.add_argument("--latent_dim", type=int, default=None,
                      help="default: the config's")
  parser.add_argument("--compute_dtype", default="", choices=["", *experiment.COMPUTE_DTYPES],
                      help="default: the config's (float32)")
  parser.add_argument("--step_loop", default="auto", choices=["auto", "scan", "unroll"])
  parser.add_argument("--matmul_size", type=int, default=None,
                      help="side of the reference matmul (default 2048 CPU, 8192 else)")
  parser.add_argument("--matmul_dtypes", type=_names, default=[],
                      help="also time the reference matmul in these dtypes, e.g. "
                           "float32,bfloat16 (default: the compute dtype only)")
  parser.add_argument("--smoke", action="store_true",
                      help="the tiny digits setting (overrides pairs, batch sizes, ...)")
  parser.add_argument("--out", default="", help="also write the JSON to this file")
  args = parser.parse_args(argv)
  if args.methods == ["all"]:
    args.methods = list(methods.METHODS)
  settings = dict(pairs=args.pairs, batch_sizes=args.batch_sizes, repeats=args.repeats,
                  student_steps=args.student_steps, latent_dim=args.latent_dim,
                  matmul_size=args.matmul_size)
  if args.smoke:
    settings.update(SMOKE)
  if settings["repeats"] < 1:
    parser.error(f"--repeats={settings['repeats']} must be >= 1")
  for dtype in args.matmul_dtypes:
    if dtype not in experiment.COMPUTE_DTYPES:
      parser.error(f"--matmul_dtypes: unknown dtype {dtype!r}; valid: "
                   f"{', '.join(experiment.COMPUTE_DTYPES)}")
  try:
    result = run_suite(args.methods, settings["pairs"], settings["batch_sizes"],
                       settings["repeats"], settings["student_steps"],
                       settings["latent_dim"], args.compute_dtype, args.step_loop,
                       settings["matmul_size"], args.matmul_dtypes)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  result["command"] = " ".join(["python -m benchmarks.iteration_speed",
                                *(argv if argv is not None else sys.argv[1:])])
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

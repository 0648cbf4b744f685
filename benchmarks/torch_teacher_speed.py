r"""A PyTorch teacher through torchax against the zoo's Flax port of the same weights.

  python -m benchmarks.torch_teacher_speed --pairs=wrn40_2:wrn16_1,resnet34:resnet18 \
      --batch_size=64 --methods=dfkd,ema_dfkd --repeats=5 --out=speed.json
  python -m benchmarks.torch_teacher_speed --smoke --out=smoke.json   # what CI runs

Run from the repository root. For every ``TEACHER:STUDENT`` pair it

1. builds the teacher's PyTorch module from :mod:`dfkd_jax.interop.torch_models`
   (random weights, seeded, with non-trivial BatchNorm running statistics and affine
   parameters) and saves its ``state_dict`` and a check file (random inputs and the
   logits PyTorch gives on them);
2. writes two teacher directories from those weights, each through ``convert`` with
   ``--check_inputs``: the zoo's Flax port (``convert --arch=TEACHER``) and the module
   itself run through torchax (``convert
   --torch_module=dfkd_jax.interop.torch_models:CLASS --torch_kwargs=...``);
3. loads both as ``train`` does and compares their logits and BatchNorm moments on the
   same inputs (``logit_check``: max abs differences, Flax vs torchax and each vs
   PyTorch);
4. builds the trainer's own jitted iteration for each teacher, as
   ``benchmarks.iteration_speed`` does (``experiment.build`` + ``iteration.make_iteration``
   on the pair's config file with the pair's student, ``--batch_size``, one generator
   step and ``--student_steps`` student steps, ``generator_loss.bn_prior = 1`` so the
   BatchNorm moments are used), and the teacher's part of a generator step alone
   (forward with the moments and the gradient with respect to the input);
5. times them in interleaved rounds (every case once per round, the order reversed every
   other round, so load on a shared machine hits the Flax and the torchax case alike)
   after one warm-up call, and reports the median wall-clock and process CPU seconds
   (all threads; steadier than wall-clock time when other jobs load the machine), the
   compile seconds, XLA's FLOPs and bytes of each compiled program, its instruction
   counts (convolutions, transposes, copies: the layout changes torchax's NCHW graph
   may add), and the ratio torchax / Flax per pair and method (target: at most 1.25;
   reported, not asserted).

The JSON also records the host, the versions of jax, jaxlib, flax, torch and torchax,
the threads, ``uptime`` before and after, and the git commit.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import importlib.metadata
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import iteration_speed
from dfkd_jax import models
from dfkd_jax.data import datasets as data
from dfkd_jax.interop import convert as convert_lib
from dfkd_jax.interop import torch_convert
from dfkd_jax.methods import presets as methods
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import experiment
from dfkd_jax.run import iteration
from dfkd_jax.run import train_state

REPO = iteration_speed.REPO
TARGET = 1.25
TEACHER_PATHS = ("flax", "torchax")
DEFAULT_PAIRS = ("wrn40_2:wrn16_1", "resnet34:resnet18")
DEFAULT_METHODS = ("dfkd", "ema_dfkd")
#: The config file of each dataset a pair can run on.
CONFIG_FILES = {"cifar10": "configs/cifar10.py", "digits": "configs/digits.py"}
#: --smoke: a tiny case (the digits CNN, batch 8, one round) for CI.
SMOKE = dict(pairs=("digits_cnn:digits_cnn_half",), methods=("dfkd",), batch_size=8,
             repeats=1, student_steps=1, latent_dim=16)
#: Instructions counted in each optimized HLO module.
COUNTED_OPS = ("convolution", "transpose", "copy", "dot", "fusion", "reduce",
               "custom-call")
CHECK_EXAMPLES = 16

log = iteration_speed.log


class Pair(NamedTuple):
  teacher: str
  student: str
  dataset: str

  @property
  def name(self) -> str:
    return f"{self.teacher}:{self.student}"


def dataset_of(teacher: str) -> str:
  """The dataset a zoo teacher runs on here: its input shape decides."""
  if teacher.startswith("digits_cnn"):
    return "digits"
  if teacher.startswith("lenet5") or teacher.endswith("_64"):
    raise ValueError(f"teacher {teacher!r} does not take the 32x32 RGB (cifar10) or "
                     "8x8 (digits) images this benchmark covers (convert "
                     "--torch_module runs on the dataset's own image size)")
  return "cifar10"


def parse_pair(text: str) -> Pair:
  """``TEACHER:STUDENT`` -> :class:`Pair` (``ValueError`` naming what is wrong)."""
  from dfkd_jax.interop import torch_models  # pylint: disable=g-import-not-at-top
  teacher, sep, student = text.partition(":")
  if not sep or not teacher or not student:
    raise ValueError(f"pair {text!r} must be TEACHER:STUDENT, e.g. wrn40_2:wrn16_1")
  if teacher not in torch_models.ARCHS:
    raise ValueError(f"teacher {teacher!r} has no PyTorch class in "
                     f"dfkd_jax.interop.torch_models; valid: "
                     f"{', '.join(sorted(torch_models.ARCHS))}")
  return Pair(teacher, student, dataset_of(teacher))


# ---------------------------------------------------------------------------
# The two teachers of the same weights.
# ---------------------------------------------------------------------------


def trained_like(module, seed: int):
  """``module`` with random non-trivial BatchNorm running statistics and affine
  parameters (as a trained network has; PyTorch's init gives 0/1), in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
        m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
        m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
  return module.eval()


def torch_spec(pair: Pair, num_classes: int, channels: int) -> tuple[str, dict[str, Any]]:
  """``(--torch_module, --torch_kwargs)`` of the pair's teacher class in torch_models."""
  from dfkd_jax.interop import torch_models  # pylint: disable=g-import-not-at-top
  cls, kwargs = torch_models.ARCHS[pair.teacher]
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
  return (f"{torch_models.__name__}:{cls.__name__}",
          {**kwargs, "num_classes": num_classes, "in_channels": channels})


def make_teachers(pair: Pair, root: pathlib.Path, seed: int) -> dict[str, Any]:
  """Writes the PyTorch weights, both teacher directories, and compares the teachers.

  Returns:
    ``{"dirs": {"flax": ..., "torchax": ...}, "record": {...}}``.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from dfkd_jax.interop import torch_models  # pylint: disable=g-import-not-at-top
  spec = data.get_dataset(pair.dataset).spec
  num_classes, channels = spec.num_classes, spec.image_shape[-1]
  torch.manual_seed(seed)
  net = trained_like(torch_models.build(pair.teacher, num_classes, channels), seed)
  root.mkdir(parents=True, exist_ok=True)
  checkpoint = root / "teacher.pth"
  torch.save(net.state_dict(), checkpoint)
  flax_dir, torchax_dir = root / "flax", root / "torchax"
  module_path, kwargs = torch_spec(pair, num_classes, channels)
  kwargs_json = json.dumps(kwargs)
  # Inputs of the teacher's input shape (a 28x28 source resized to 32x32 for LeNet-5).
  shape = models.input_shape(pair.teacher, channels, data_shape=spec.image_shape)
  x = np.random.RandomState(seed + 1).randn(CHECK_EXAMPLES, *shape).astype(np.float32)
  with torch.no_grad():
    reference = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
  np.savez(root / "check.npz", inputs=x.transpose(0, 3, 1, 2), logits=reference)
  checks = {}
  convert_lib.convert(checkpoint, pair.teacher, num_classes, flax_dir, pair.dataset,
                      check_inputs=root / "check.npz",
                      log=functools.partial(checks.__setitem__, "flax"))
  torch_convert.convert(module_path, checkpoint, torchax_dir, pair.dataset,
                        torch_kwargs=kwargs_json, check_inputs=root / "check.npz",
                        log=functools.partial(checks.__setitem__, "torchax"))
  record = {
      "pytorch_module": f"{module_path}(**{kwargs_json})",
      "weights": f"random, torch.manual_seed({seed}), BatchNorm running statistics and "
                 "affine parameters random (mean 0.3 N(0,1), var 0.5 + U(0,1), "
                 "weight 1 + 0.2 N(0,1), bias 0.1 N(0,1))",
      "convert_commands": {
          "flax": f"python -m dfkd_jax.convert --torch_checkpoint=teacher.pth "
                  f"--arch={pair.teacher} --num_classes={num_classes} "
                  f"--dataset={pair.dataset} --check_inputs=check.npz --out=flax",
          "torchax": f"python -m dfkd_jax.convert --torch_module={module_path} "
                     f"--torch_checkpoint=teacher.pth --torch_kwargs='{kwargs_json}' "
                     f"--dataset={pair.dataset} --check_inputs=check.npz --out=torchax"},
      "convert_checks": checks,
      "logit_check": compare_teachers(flax_dir, torchax_dir, x, reference),
  }
  return {"dirs": {"flax": flax_dir, "torchax": torchax_dir}, "record": record}


def compare_teachers(flax_dir, torchax_dir, x: np.ndarray, reference: np.ndarray
                     ) -> dict[str, Any]:
  """Both teachers as ``train`` loads them, on the same NHWC inputs ``x``."""
  out = {}
  for name, directory in (("flax", flax_dir), ("torchax", torchax_dir)):
    module, variables, _ = teacher_lib.load_teacher(directory)
    logits, features = jax.jit(lambda v, x, m=module: m.apply(
        v, x, train=False, features=True))(variables, jnp.asarray(x))
    out[name] = (np.asarray(logits), [tuple(np.asarray(a) for a in m)
                                       for m in features.bn_moments])
  (flax_logits, flax_moments), (tx_logits, tx_moments) = out["flax"], out["torchax"]
  moments_diff = None
  if len(flax_moments) == len(tx_moments) and all(
      a.shape == b.shape for fm, tm in zip(flax_moments, tx_moments)
      for a, b in zip(fm, tm)):
    moments_diff = max((float(np.max(np.abs(a - b))) for fm, tm in
                        zip(flax_moments, tx_moments) for a, b in zip(fm, tm)),
                       default=0.0)
  return {
      "examples": len(x), "input": "N(0, 1) NHWC, the same for both",
      "max_abs_diff_flax_vs_torchax": float(np.max(np.abs(flax_logits - tx_logits))),
      "max_abs_diff_flax_vs_pytorch": float(np.max(np.abs(flax_logits - reference))),
      "max_abs_diff_torchax_vs_pytorch": float(np.max(np.abs(tx_logits - reference))),
      "max_abs_pytorch_logit": float(np.max(np.abs(reference))),
      "top1_agreement_flax_vs_torchax": 100.0 * float(np.mean(
          flax_logits.argmax(-1) == tx_logits.argmax(-1))),
      "bn_moments": {"flax": len(flax_moments), "torchax": len(tx_moments)},
      "bn_moments_max_abs_diff": moments_diff,
  }


# ---------------------------------------------------------------------------
# The compiled programs.
# ---------------------------------------------------------------------------


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = .*? ([a-z][a-z0-9\-]*)\(")


def hlo_op_counts(hlo_text: str) -> dict[str, int]:
  """Instructions of an optimized HLO module (fused computations included) by opcode:
  the :data:`COUNTED_OPS` and the total."""
  counts = collections.Counter()
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      counts[match.group(1)] += 1
  return {**{op: counts.get(op, 0) for op in COUNTED_OPS},
          "instructions": sum(counts.values())}


def _cost(cost) -> dict[str, float | None]:
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = cost or {}
  return {"flops": float(cost["flops"]) if "flops" in cost else None,
          "bytes_accessed": (float(cost["bytes accessed"]) if "bytes accessed" in cost
                             else None)}


class Case:
  """One timed program: an iteration (``method``) or the teacher part (``method=None``)."""

  def __init__(self, kind: str, method: str | None, teacher_path: str, run, args,
               compile_seconds: float, compiled):
    self.kind, self.method, self.teacher_path = kind, method, teacher_path
    self.run, self.args = run, args
    self.compile_seconds = compile_seconds
    self.compile_cpu_seconds: float | None = None
    cost = _cost(compiled.cost_analysis())
    self.flops, self.bytes_accessed = cost["flops"], cost["bytes_accessed"]
    self.cost_source = "XLA cost analysis of the compiled program"
    self.ops = hlo_op_counts(compiled.as_text())
    self.times: list[float] = []
    self.cpu_times: list[float] = []
    self.first_metrics: dict[str, np.ndarray] | None = None

  def step(self) -> tuple[float, float]:
    """One call: (wall seconds, CPU seconds of the process, all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = self.run()
    jax.block_until_ready(out)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if self.first_metrics is None and isinstance(out, dict):
      self.first_metrics = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
    return seconds, cpu_seconds


def iteration_case(pair: Pair, method: str, teacher_path: str, teacher_dir,
                   batch_size: int, student_steps: int | None, latent_dim: int | None
                   ) -> Case:
  """The trainer's iteration on ``teacher_dir`` (bn_prior on), compiled."""
  config = iteration_speed.make_config(
      iteration_speed.Pair(pair.teacher, pair.student, pair.dataset,
                           CONFIG_FILES[pair.dataset]),
      method, batch_size, teacher_dir, student_steps, latent_dim, "", "auto")
  config.generator_loss.bn_prior = config.generator_loss.bn_prior or 1.0
  # The data-free selection's probe set: probe_epochs slots of at most one batch.
  config.selection.probe_size = min(config.selection.probe_size,
                                    config.selection.probe_epochs * batch_size)
  setup = experiment.build(config, log=lambda s: None)
  state = train_state.init_state(setup)
  state = parallel.put(state, setup.mesh, train_state.state_specs(state, setup.replay))
  teacher_vars = jax.device_put(setup.teacher_variables, parallel.replicated(setup.mesh))
  step = iteration.make_iteration(setup, state)
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = step.lower(state, teacher_vars).compile()
  compile_seconds, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], teacher_vars)
    return metrics

  case = Case("iteration", method, teacher_path, run, None, compile_seconds, compiled)
  case.compile_cpu_seconds = compile_cpu
  if not setup.unroll:  # XLA counts a scanned body once: count the unrolled steps.
    unrolled = dataclasses.replace(setup, unroll=True)
    cost = _cost(iteration.make_iteration(unrolled, state).lower(
        state, teacher_vars).cost_analysis())
    case.flops, case.bytes_accessed = cost["flops"], cost["bytes_accessed"]
    case.cost_source = ("XLA cost analysis of the iteration lowered with unrolled "
                        "steps (before optimisation)")
  case.config = {"generator_steps": config.generator_steps,
                 "student_steps": config.student_steps, "latent_dim": config.latent_dim,
                 "bn_prior": config.generator_loss.bn_prior,
                 "step_loop": "unroll" if setup.unroll else "scan",
                 "input_shape": list(setup.input_shape),
                 "generator": config.generator}
  return case


def teacher_case(teacher_path: str, teacher_dir, batch_size: int, seed: int) -> Case:
  """The teacher's part of a generator step alone: the forward with the BatchNorm
  moments and the gradient of logits and a moment-matching term w.r.t. the input."""
  module, variables, meta = teacher_lib.load_teacher(teacher_dir)
  x = jax.random.normal(jax.random.PRNGKey(seed), (batch_size, *meta.input_shape))
  w = jax.random.normal(jax.random.PRNGKey(seed + 1), (batch_size, meta.num_classes))

  def loss(x, variables):
    logits, features = module.apply(variables, x, train=False, features=True)
    prior = sum(jnp.sum(jnp.square(m.batch_mean - m.running_mean))
                + jnp.sum(jnp.square(m.batch_var - m.running_var))
                for m in features.bn_moments)
    return jnp.sum(logits * w) + prior

  fn = jax.jit(jax.value_and_grad(loss))
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = fn.lower(x, variables).compile()
  compile_seconds, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
  case = Case("teacher_forward_and_input_grad", None, teacher_path,
              lambda: compiled(x, variables), None, compile_seconds, compiled)
  case.compile_cpu_seconds = compile_cpu
  return case


def time_cases(cases: Sequence[Case], repeats: int) -> None:
  """One warm-up call each, then ``repeats`` rounds of one call per case, the order
  reversed every other round."""
  for case in cases:
    case.step()
  for r in range(repeats):
    for case in (cases if r % 2 == 0 else cases[::-1]):
      seconds, cpu_seconds = case.step()
      case.times.append(seconds)
      case.cpu_times.append(cpu_seconds)


def case_record(pair: Pair, case: Case, batch_size: int) -> dict[str, Any]:
  seconds = statistics.median(case.times)
  record = {"pair": pair.name, "teacher": pair.teacher, "student": pair.student,
            "kind": case.kind, "method": case.method, "teacher_path": case.teacher_path,
            "batch_size": batch_size, **getattr(case, "config", {}),
            "compile_seconds": case.compile_seconds,
            "compile_cpu_seconds": case.compile_cpu_seconds, "seconds": seconds,
            "seconds_min": min(case.times), "seconds_all": case.times,
            "cpu_seconds": statistics.median(case.cpu_times),
            "cpu_seconds_all": case.cpu_times,
            "flops": case.flops, "bytes_accessed": case.bytes_accessed,
            "cost_source": case.cost_source,
            "hlo_op_counts": case.ops,
            "hlo_op_counts_source": "instructions of the compiled, optimized HLO "
                                    "module (fused computations included; a scanned "
                                    "loop body counted once)"}
  if case.flops:
    record["achieved_flops_per_second"] = case.flops / seconds
  return record


def _ratio(a, b):
  return a / b if a is not None and b else None


def first_iteration_agreement(flax: Case, torchax: Case) -> dict[str, float]:
  """Max relative difference of the warm-up iteration's finite metrics."""
  out = {}
  for key in sorted(set(flax.first_metrics or {}) & set(torchax.first_metrics or {})):
    a, b = flax.first_metrics[key], torchax.first_metrics[key]
    if a.shape != b.shape or not np.issubdtype(a.dtype, np.floating):
      continue
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.any():
      out[key] = float(np.max(np.abs(a[finite] - b[finite])
                              / np.maximum(np.abs(a[finite]), 1e-12)))
  return out


def ratios(pair: Pair, cases: Sequence[Case]) -> list[dict[str, Any]]:
  """torchax / Flax per (kind, method) of ``pair``."""
  by_key = {(c.kind, c.method, c.teacher_path): c for c in cases}
  out = []
  for (kind, method, path), tx in by_key.items():
    if path != "torchax" or (kind, method, "flax") not in by_key:
      continue
    fx = by_key[(kind, method, "flax")]
    ratio = statistics.median(tx.times) / statistics.median(fx.times)
    cpu_ratio = statistics.median(tx.cpu_times) / statistics.median(fx.cpu_times)
    row = {"pair": pair.name, "kind": kind, "method": method,
           "seconds_flax": statistics.median(fx.times),
           "seconds_torchax": statistics.median(tx.times),
           "ratio": ratio, "target": TARGET, "within_target": ratio <= TARGET,
           "cpu_seconds_flax": statistics.median(fx.cpu_times),
           "cpu_seconds_torchax": statistics.median(tx.cpu_times),
           "cpu_ratio": cpu_ratio,
           "compile_ratio": tx.compile_seconds / fx.compile_seconds,
           "compile_cpu_ratio": tx.compile_cpu_seconds / fx.compile_cpu_seconds,
           "flops_ratio": _ratio(tx.flops, fx.flops),
           "bytes_accessed_ratio": _ratio(tx.bytes_accessed, fx.bytes_accessed),
           "hlo_op_counts": {"flax": fx.ops, "torchax": tx.ops}}
    if kind == "iteration":
      row["first_iteration_metrics_max_rel_diff"] = first_iteration_agreement(fx, tx)
    out.append(row)
  return out


# ---------------------------------------------------------------------------
# The suite.
# ---------------------------------------------------------------------------


def _git_commit() -> dict[str, Any]:
  def git(*args):
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None
  status = git("status", "--porcelain", "--untracked-files=no")
  return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref",
                                                           "HEAD"),
          "dirty": None if status is None else bool(status)}


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False,
                          timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def _versions() -> dict[str, str | None]:
  out = {}
  for name in ("jax", "jaxlib", "flax", "torch", "torchax", "numpy"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _threads() -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
  return {"cpu_count": os.cpu_count(),
          "cpus_available": len(affinity) if affinity is not None else None,
          "torch_num_threads": torch.get_num_threads(),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "niceness": os.nice(0) if hasattr(os, "nice") else None,
          "note": "XLA's CPU backend runs on one thread per available core (the "
                  "Eigen pool); torch only builds the module and traces it"}


def run_suite(pairs: Sequence[Pair], method_names: Sequence[str], batch_size: int,
              repeats: int, student_steps: int | None, latent_dim: int | None,
              teacher_only: bool = True, seed: int = 0) -> dict[str, Any]:
  """Measures every pair; returns the JSON-serialisable result."""
  for name in method_names:
    methods.get(name)
  devices = len(jax.devices())
  if batch_size <= 0 or batch_size % devices:
    raise ValueError(f"--batch_size={batch_size} must be a positive multiple of the "
                     f"device count ({devices})")
  uptime_before, load_before = _uptime(), list(os.getloadavg())
  pair_records, results, ratio_rows = [], [], []
  with tempfile.TemporaryDirectory(prefix="dfkd_torch_teacher_speed_") as tmp:
    for pair in pairs:
      log(f"{pair.name}: PyTorch weights, converting (Flax port and torchax)")
      teachers = make_teachers(pair, pathlib.Path(tmp) / pair.teacher, seed)
      check = teachers["record"]["logit_check"]
      log(f"  max |logit difference| Flax vs torchax "
          f"{check['max_abs_diff_flax_vs_torchax']:.3g} (vs PyTorch: Flax "
          f"{check['max_abs_diff_flax_vs_pytorch']:.3g}, torchax "
          f"{check['max_abs_diff_torchax_vs_pytorch']:.3g}; max |logit| "
          f"{check['max_abs_pytorch_logit']:.3g})")
      cases = []
      for method in method_names:
        for path in TEACHER_PATHS:
          log(f"  {method}, {path} teacher: compiling the iteration")
          cases.append(iteration_case(pair, method, path, teachers["dirs"][path],
                                      batch_size, student_steps, latent_dim))
          log(f"    compiled in {cases[-1].compile_seconds:.1f} s")
      if teacher_only:
        for path in TEACHER_PATHS:
          log(f"  teacher forward + input gradient, {path}: compiling")
          cases.append(teacher_case(path, teachers["dirs"][path], batch_size, seed))
      log(f"  timing {repeats} interleaved rounds")
      time_cases(cases, repeats)
      for case in cases:
        results.append(case_record(pair, case, batch_size))
      rows = ratios(pair, cases)
      for row in rows:
        log(f"  {row['kind']} {row['method'] or ''}: Flax "
            f"{row['seconds_flax'] * 1e3:.0f} ms, torchax "
            f"{row['seconds_torchax'] * 1e3:.0f} ms, ratio {row['ratio']:.3f} (CPU "
            f"time {row['cpu_ratio']:.3f}), "
            f"FLOPs ratio {row['flops_ratio'] or float('nan'):.3f}")
      ratio_rows.extend(rows)
      pair_records.append({"pair": pair.name, "teacher": pair.teacher,
                           "student": pair.student, "dataset": pair.dataset,
                           "config_file": CONFIG_FILES[pair.dataset],
                           **teachers["record"]})
      del cases
  return {
      "benchmark": "torch_teacher_speed",
      "git": _git_commit(),
      "versions": _versions(),
      "backend": jax.default_backend(),
      "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
      "host": iteration_speed._host(),  # pylint: disable=protected-access
      "threads": _threads(),
      "uptime_before": uptime_before, "uptime_after": _uptime(),
      "load_average_1_5_15min_before": load_before,
      "load_average_1_5_15min_after": list(os.getloadavg()),
      "settings": {"batch_size": batch_size, "methods": list(method_names),
                   "repeats": repeats, "student_steps": student_steps,
                   "latent_dim": latent_dim, "seed": seed, "target_ratio": TARGET},
      "iteration": "the trainer's jitted iteration (experiment.build + "
                   "iteration.make_iteration): generator_steps generator updates + "
                   "student_steps student updates, donated state, bn_prior on",
      "timing": f"median of {repeats} calls after one warm-up call; every case of a "
                "pair once per round, the order reversed every other round; 'seconds' "
                "is wall-clock time, 'cpu_seconds' the process's CPU time over all "
                "threads (time.process_time) during the call, less sensitive to "
                "other jobs on a shared machine (it includes the XLA thread pool's "
                "spinning); 'ratio' is of the wall-clock medians",
      "pairs": pair_records,
      "results": results,
      "ratios": ratio_rows,
  }


def _names(text: str) -> list[str]:
  return [t for t in text.split(",") if t]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_teacher_speed",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--pairs", type=_names, default=list(DEFAULT_PAIRS),
                      help="comma-separated TEACHER:STUDENT pairs (the teacher one of "
                           "dfkd_jax.interop.torch_models.ARCHS)")
  parser.add_argument("--methods", type=_names, default=list(DEFAULT_METHODS))
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--student_steps", type=int, default=2,
                      help="student steps per iteration (0: the config's, 10)")
  parser.add_argument("--latent_dim", type=int, default=0, help="0: the config's")
  parser.add_argument("--no_teacher_only", action="store_true",
                      help="skip timing the teacher's part of a generator step alone")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true",
                      help="a tiny case: digits_cnn:digits_cnn_half, batch 8, one round, "
                           "dfkd (overrides pairs, methods, batch size, ...)")
  parser.add_argument("--out", default="", help="also write the JSON to this file")
  args = parser.parse_args(argv)
  settings = dict(pairs=args.pairs, methods=args.methods, batch_size=args.batch_size,
                  repeats=args.repeats, student_steps=args.student_steps or None,
                  latent_dim=args.latent_dim or None)
  if args.smoke:
    settings.update(SMOKE)
  if settings["repeats"] < 1:
    parser.error(f"--repeats={settings['repeats']} must be >= 1")
  try:
    pairs = [parse_pair(p) for p in settings["pairs"]]
    result = run_suite(pairs, settings["methods"], settings["batch_size"],
                       settings["repeats"], settings["student_steps"],
                       settings["latent_dim"], not args.no_teacher_only, args.seed)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  result["command"] = " ".join(["python -m benchmarks.torch_teacher_speed",
                                *(argv if argv is not None else sys.argv[1:])])
  result["smoke"] = bool(args.smoke)
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

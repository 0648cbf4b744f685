r"""Markdown tables of ``iteration_speed`` JSON files (for ``docs/results.md``).

  python -m benchmarks.tables docs/results/benchmarks_cpu_lenet5.json [more.json ...]
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Sequence

_MIB = 2.0 ** 20


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value / scale, spec)


def speed_table(result: dict[str, Any]) -> str:
  """One row per (pair, batch size, method) of one ``iteration_speed`` result."""
  header = ("Teacher -> student", "Batch", "Method", "s / iteration", "Compile (s)",
            "Examples/s", "XLA buffers (MiB)", "Process peak (MiB)", "GFLOP / iteration",
            "GFLOP/s", "of matmul")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in result["results"]:
    memory = r.get("memory_analysis") or {}
    xla_bytes = None
    if memory:  # Live buffers of the program: arguments + outputs - aliased + temps.
      xla_bytes = (memory.get("argument_size_in_bytes", 0)
                   + memory.get("output_size_in_bytes", 0)
                   - memory.get("alias_size_in_bytes", 0)
                   + memory.get("temp_size_in_bytes", 0))
    fraction = r.get("fraction_of_matmul_flops")
    cells = [f"{r['teacher']} -> {r['student']}", str(r["batch_size"]), r["method"],
             _fmt(r["seconds_per_iteration"], ".3f"), _fmt(r["compile_seconds"], ".1f"),
             _fmt(r["examples_per_second"], ".0f"), _fmt(xla_bytes, ".1f", _MIB),
             _fmt(r["peak_memory"]["bytes"], ".0f", _MIB),
             _fmt(r.get("flops_per_iteration"), ".1f", 1e9),
             _fmt(r.get("achieved_flops_per_second"), ".1f", 1e9),
             "-" if fraction is None else f"{100 * fraction:.0f}%"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def overhead_table(result: dict[str, Any]) -> str:
  """The meta-update overhead rows (``t(meta) / t(joint)``)."""
  lines = ["| Teacher -> student | Batch | Ratio | Target |", "|---|---|---|---|"]
  pairs = {r["pair"]: f"{r['teacher']} -> {r['student']}" for r in result["results"]}
  for o in result["meta_overhead"]:
    lines.append(f"| {pairs[o['pair']]} | {o['batch_size']} | "
                 f"{o['method']} / {o['baseline']} = {o['ratio']:.2f} | "
                 f"<= {o['target']} ({'met' if o['within_target'] else 'missed'}) |")
  return "\n".join(lines) + "\n"


def describe(result: dict[str, Any]) -> str:
  """The machine, load and reference matmul of one result, in one paragraph."""
  host, m = result["host"], result["matmul"]
  return (f"{result['backend']} backend, {result['device_count']} device(s) "
          f"({', '.join(sorted(set(result['devices'])))}); host: {host['cpu']}, "
          f"{host['cpu_count']} cores; JAX {result['jax_version']}. Load average (1, 5, "
          f"15 min) before: {', '.join(f'{v:.2f}' for v in result['load_average_1_5_15min_before'])}"
          f"; after: {', '.join(f'{v:.2f}' for v in result['load_average_1_5_15min_after'])}."
          f" Dense {m['size']}x{m['size']} {m['dtype']} matmul: "
          f"{m['flops_per_second'] / 1e9:.1f} GFLOP/s. Command: `{result.get('command', '?')}`.")


def main(argv: Sequence[str] | None = None) -> int:
  paths = list(sys.argv[1:] if argv is None else argv)
  if not paths:
    print("usage: python -m benchmarks.tables RESULT.json [...]", file=sys.stderr)
    return 2
  for path in paths:
    result = json.loads(pathlib.Path(path).read_text())
    print(f"{describe(result)}\n\n{speed_table(result)}\n{overhead_table(result)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

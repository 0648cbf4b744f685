"""What the whole-process benchmarks share (``replicas``, ``first_epoch``): the training
command line, the result file's header (command, config, host, load) and its writing."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
from typing import Any, Sequence

from absl import flags
import jax
from ml_collections import config_flags

from dfkd_jax import train
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import trainer


def train_command(config: str, workdir: pathlib.Path, cache: str | os.PathLike,
                  settings: Sequence[str]) -> list[str]:
  """``python -m dfkd_jax.train`` of ``config`` with ``--config.FIELD=VALUE`` settings."""
  return [sys.executable, "-m", "dfkd_jax.train", f"--config={config}",
          f"--workdir={workdir}", f"--compilation_cache_dir={cache}",
          *(f"--config.{s}" for s in settings)]


def resolved_config(config: str, settings: Sequence[str]):
  """The config of ``config`` with its ``FIELD=VALUE`` settings applied, parsed as
  ``python -m dfkd_jax.train`` parses ``--config`` and ``--config.FIELD=VALUE``."""
  if not pathlib.Path(config.partition(":")[0]).is_file():  # ml_collections defers this.
    raise FileNotFoundError(f"no such file (from {os.getcwd()})")
  argv = ["benchmark", f"--config={config}", *(f"--config.{s}" for s in settings)]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a --config.FIELD=VALUE for every run (repeatable)")
  parser.add_argument("--out", required=True, help="the JSON file to write")


def start(module: str, args: argparse.Namespace, parser: argparse.ArgumentParser,
          argv: Sequence[str] | None) -> dict[str, Any]:
  """The results' header (the command, config, settings and host: its ``machine``,
  the CPU model or device kind that summary.json's ``host`` names); refuses an
  existing ``--out`` and trains (or finds) the teacher of the config with its ``--set``
  settings (``teacher_dir`` among them) first, untimed, so that every timed run reuses
  it."""
  if pathlib.Path(args.out).exists():
    parser.error(f"{args.out} exists; results are never overwritten: pass another --out")
  results = {"command": " ".join([sys.executable, "-m", module,
                                  *(argv if argv is not None else sys.argv[1:])]),
             "config": args.config, "settings": args.set,
             "host": {"machine": trainer.host_name(parallel.make_mesh()),
                      "platform": platform.platform(), "cpus": os.cpu_count(),
                      "jax": jax.__version__, "backend": jax.default_backend(),
                      "load_average_before": os.getloadavg()}}
  try:
    config = resolved_config(args.config, args.set)
  # ml_collections' errors for a missing file, an unknown field or a bad value.
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").split())
    parser.error(f"--config={args.config} with --set {args.set}: {message}")
  train.train_teacher_on_first_use(config)
  return results


def finish(results: dict[str, Any], out: str | os.PathLike) -> None:
  """Adds the load after the runs and writes ``out``."""
  results["host"]["load_average_after"] = os.getloadavg()
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print(f"wrote {out}")

r"""The official Fast-Datafree method on one of our teachers: the student's accuracy vs time.

  python -m benchmarks.official_fast_accuracy --checkout=FD \
      --teacher_dir=assets/teachers/cifar10_wrn16_2 --test_folder=DATA/test \
      --protocol=cifar10_cpu --budget_seconds=1800 --eval_every_seconds=300 \
      --out=official_fast_accuracy.json

The counterpart of our ``fast`` on ``configs/cifar10_cpu.py`` (issue 41, item 3): the
official code (``benchmarks.official_fast.accuracy_vs_time``, ``datafree_kd.main_worker``'s
loop) with the same teacher weights (our WRN teacher directory written out as the
official WRN's ``state_dict``, exact: the zoo's WRNs have the official layout), the
teacher's own normalisation (in place of the official CIFAR-10 statistics), and
``--protocol``'s budget and settings:

* ``cifar10_cpu``: our CPU protocol's, in the official loop's terms: 800 synthesis
  rounds of batch 64 with 5 KD steps after each (one round per official "epoch",
  ``ep_steps = kd_steps = 5``), 80 warm-up rounds (our 2 epochs of 40), the cosine over
  the 720 distillation rounds; generator width ``ngf = 32``, latent 256, Fast-2 (2 inner
  steps, ``lr_g`` 5e-3, ``lr_z`` 0.015); loss weights ``bn`` 10, ``oh`` 0.5, ``adv``
  1.33; student SGD 0.1, momentum 0.9, weight decay 5e-4, cosine to 0; KL at T = 20.
  What the official code fixes differs: the generator stem is reset at its 120th round
  after the warm-up (``fast_meta.py:110``; ours at epoch 13 = round 481), each round
  writes its batch as PNG files and restarts a 4-worker loader over the whole bank.
* ``official``: the official CIFAR script's values (220 epochs of one round and 400 KD
  steps, batch 256), cut at the budget.

``--set KEY=VALUE`` overrides one hyper-parameter (``benchmarks.official_fast.COMMON``'s
names; JSON values). The clock is the wall time of the method (not the evaluations):
run it pinned to a core nothing else uses (``taskset -c N``), so that the wall time is
the CPU time of the process and its loader workers on that core; the JSON also records
the process's and the reaped workers' CPU seconds and the load. The student is scored on
every image of ``--test_folder`` (``CLASS/*`` image files, the teacher's classes) by the
official evaluator, at 0, every ``--eval_every_seconds`` and at the end; the teacher is
scored the same way first.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from benchmarks import official_fast

#: --protocol -> (g_steps, hyper-parameter overrides of official_fast.COMMON).
PROTOCOLS = {
    "cifar10_cpu": (2, {
        "batch_size": 64, "synthesis_batch_size": 64, "epochs": 800, "warmup": 80,
        "ep_steps": 5, "kd_steps": 5, "cosine_T_max": 720, "cosine_eta_min": 0.0,
        "ngf": 32, "nz": 256, "bn": 10.0, "oh": 0.5, "adv": 1.33, "T": 20.0,
        "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
    "official": (2, {}),
}


def write_teacher_state(teacher_dir: str | os.PathLike, out: str | os.PathLike) -> None:
  """Writes our teacher directory as ``{state_dict (official WRN layout), arch, mean, std,
  class_names}`` (``torch.save``)."""
  import torch  # pylint: disable=g-import-not-at-top
  from dfkd_jax.interop import torch_layout  # pylint: disable=g-import-not-at-top
  from dfkd_jax.models import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  _, variables, meta = teacher_lib.load_teacher(teacher_dir)
  if meta.torch is not None:
    raise ValueError(f"--teacher_dir={teacher_dir}: a PyTorch-module teacher; pass a zoo "
                     "WRN teacher (its state_dict is the official WRN's)")
  state = {k: torch.from_numpy(v) for k, v in
           torch_layout.variables_to_state_dict(variables, meta.arch).items()}
  torch.save({"state_dict": state, "arch": meta.arch, "mean": list(meta.mean),
              "std": list(meta.std), "class_names": list(meta.class_names)}, out)


def teacher_state(teacher_dir: str | os.PathLike):
  """Our teacher directory as ``(official state_dict, arch, (mean, std), class names)``.

  Read in a child process: JAX is never imported here, so the official loader's
  forked workers do not inherit its threads.
  """
  import torch  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "teacher.pt"
    code = ("import sys; from benchmarks import official_fast_accuracy as m; "
            "m.write_teacher_state(sys.argv[1], sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", code, os.fspath(teacher_dir), str(path)],
                          cwd=official_fast.REPO, capture_output=True, text=True)
    if proc.returncode:
      raise ValueError(proc.stderr.strip().splitlines()[-1])
    saved = torch.load(path, weights_only=True)
  return (saved["state_dict"], saved["arch"], (tuple(saved["mean"]), tuple(saved["std"])),
          saved["class_names"])


def test_set(folder: str | os.PathLike, class_names: Sequence[str]):
  """uint8 (N, H, W, 3) images of ``folder/CLASS/*`` and their labels (class order)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  images, labels = [], []
  for label, name in enumerate(class_names):
    files = sorted(p for p in (folder / name).iterdir() if p.is_file())
    if not files:
      raise ValueError(f"--test_folder={folder}: no images in {folder / name}")
    for path in files:
      with Image.open(path) as image:
        images.append(np.asarray(image.convert("RGB")))
      labels.append(label)
  return np.stack(images), np.asarray(labels)


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set={item}: expected KEY=VALUE")
    overrides[key] = json.loads(value)
  return overrides


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.official_fast_accuracy",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkout", required=True, help="the official Fast-Datafree checkout")
  parser.add_argument("--teacher_dir", required=True, help="our zoo WRN teacher directory")
  parser.add_argument("--test_folder", required=True, help="CLASS/* test images")
  parser.add_argument("--student", default="wrn16_1", help="official registry name")
  parser.add_argument("--protocol", default="cifar10_cpu", choices=sorted(PROTOCOLS))
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE (JSON value)")
  parser.add_argument("--budget_seconds", type=float, required=True)
  parser.add_argument("--eval_every_seconds", type=float, default=300.0)
  parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
  parser.add_argument("--workdir", default=None, help="the bank's folder (default: a "
                      "temporary one, removed at the end)")
  parser.add_argument("--out", required=True, help="the JSON to write")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  if out.exists():
    parser.error(f"--out={out} exists; pass a new file (nothing is overwritten)")
  g_steps, overrides = PROTOCOLS[args.protocol]
  try:
    overrides = {**overrides, **_parse_sets(args.set)}
    official_fast.hyper_parameters(g_steps, **overrides)  # Unknown names, before any work.
  except ValueError as e:
    parser.error(str(e))
  import torch  # pylint: disable=g-import-not-at-top
  checkout = pathlib.Path(args.checkout).expanduser().resolve()
  try:
    state, arch, normalization, class_names = teacher_state(args.teacher_dir)
  except ValueError as e:
    parser.error(f"--teacher_dir={args.teacher_dir}: {e}")
  t0 = time.perf_counter()
  images, labels = test_set(args.test_folder, class_names)
  print(f"{len(images)} test images read in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr, flush=True)
  official = official_fast.load_official(checkout)
  record = official_fast._header(checkout, official, [], args.threads)  # pylint: disable=protected-access
  record.update(benchmark="official_fast_accuracy", command=" ".join(sys.argv),
                teacher_dir=str(args.teacher_dir), teacher=arch, student=args.student,
                normalization=normalization, test_images=len(images),
                protocol=args.protocol, g_steps=g_steps,
                hyper_parameters=official_fast.hyper_parameters(g_steps, **overrides),
                budget_seconds=args.budget_seconds,
                eval_every_seconds=args.eval_every_seconds, clock="wall",
                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  with official_fast.cpu_cuda_aliases(), tempfile.TemporaryDirectory() as bank:
    run = official_fast.build(official, arch, args.student, record["hyper_parameters"],
                              pathlib.Path(bank), teacher_state=state,
                              normalization=normalization)
    record["teacher_accuracy"] = float(official_fast._evaluator(  # pylint: disable=protected-access
        official, run, images, labels, 256)(run.teacher)["Acc"][0])
  print(f"teacher: {record['teacher_accuracy']:.2f}% through the official evaluator",
        file=sys.stderr, flush=True)
  cpu0, wall0 = time.process_time(), time.perf_counter()
  points = official_fast.accuracy_vs_time(
      checkout, state, images, labels, args.budget_seconds, args.eval_every_seconds,
      teacher=arch, student=args.student, g_steps=g_steps, threads=args.threads,
      workdir=args.workdir, normalization=normalization, **overrides)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  record.update(
      points=[list(p) for p in points],
      point_fields=["method wall seconds", "KD steps", "top-1 %"],
      process_cpu_seconds=time.process_time() - cpu0,
      wall_seconds_with_evaluations=time.perf_counter() - wall0,
      reaped_children_cpu_seconds=children.ru_utime + children.ru_stime,
      torch_num_threads=torch.get_num_threads(),
      load_average_1_5_15min_after=list(os.getloadavg()))
  out.write_text(json.dumps(record, indent=1) + "\n")
  print(json.dumps({k: record[k] for k in ("teacher_accuracy", "points")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())

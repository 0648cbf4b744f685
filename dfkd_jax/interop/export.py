"""Export a run's distilled student: ONNX, a PyTorch state_dict or a Flax folder.

The logic of ``python -m dfkd_jax.export``; its usage, flags and outputs are in
:mod:`dfkd_jax.export` (what ``--help`` shows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import pathlib
import shutil
import types
from typing import Any, Callable, NamedTuple

import flax.linen as nn
from flax.linen import pooling
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dfkd_jax.core import workdir as workdir_lib
from dfkd_jax.data import datasets as data
from dfkd_jax.interop import torch_layout
from dfkd_jax.metrics import selection
from dfkd_jax.metrics import summary as summary_lib
from dfkd_jax.models import student_card
from dfkd_jax.run import checkpoints as checkpoints_lib
from dfkd_jax.run import progress

FORMATS = ("onnx", "torch", "flax")
CHECKPOINT_DIR = "checkpoints"  # dfkd_jax.run.trainer.CHECKPOINT_DIR.
INSTALL_EXPORT = 'pip install -e ".[export]"'
_FLAX_MAX_POOL = pooling.max_pool  # Before jax2onnx replaces it (see _flax_max_pool).
# Largest max |ONNX - JAX logit| / max |JAX logit| accepted (float32 reorderings of the
# same ops give ~1e-7).
ONNX_TOLERANCE = 1e-4
# The ONNX export's stages say every this many seconds that they still run.
PROGRESS_SECONDS = 10.0


class ExportError(ValueError):
  """Bad input to the export; one line naming the value and the fix."""


class DamagedCheckpointError(ExportError):
  """A checkpoint that does not restore (one line, with orbax's cause)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run directory records about its student (``run_config.json``)."""

  workdir: pathlib.Path
  config: dict[str, Any]
  teacher: dict[str, Any]

  @property
  def seeds(self) -> tuple[int, ...]:
    first = int(self.config["seed"])
    return tuple(range(first, first + int(self.config.get("num_seeds", 1))))


class Student(NamedTuple):
  """One student restored from a checkpoint: its variables (NumPy) and card."""

  variables: dict[str, Any]
  card: student_card.StudentCard


def read_run(workdir: str | os.PathLike) -> Run:
  """Reads ``WORKDIR/run_config.json``.

  Raises:
    ExportError: no run there.
  """
  workdir = pathlib.Path(workdir).absolute()
  path = workdir / workdir_lib.RECORD_FILE
  if not path.is_file():
    raise ExportError(f"--workdir={workdir} holds no run ({path.name} not found); pass "
                      "the --workdir of a python -m dfkd_jax.train run")
  try:
    record = json.loads(path.read_text())
    run = Run(workdir, dict(record["config"]), dict(record["teacher"]))
    _ = run.seeds, run.config["student"], run.config["iterations_per_epoch"]
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    cause = f"no field {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
    raise ExportError(f"{path} is damaged ({cause}); restore it from a copy: the train "
                      "command rewrites it only for a workdir without checkpoints"
                      ) from None
  return run


def checkpoint_steps(run: Run) -> list[int]:
  """The steps of the run's finished checkpoints, oldest first."""
  directory = run.workdir / CHECKPOINT_DIR
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / "state").is_dir())


def choose_step(run: Run, requested: int | None) -> int:
  """``requested``, or the newest checkpoint; it must exist.

  Raises:
    ExportError: no checkpoint yet, or ``requested`` is not one of them.
  """
  steps = checkpoint_steps(run)
  if not steps:
    raise ExportError(f"{run.workdir / CHECKPOINT_DIR} holds no checkpoint yet; export "
                      "after the run's first epoch")
  if requested is None:
    return steps[-1]
  if requested not in steps:
    raise ExportError(f"--checkpoint={requested} is not in {run.workdir / CHECKPOINT_DIR}"
                      f"; it holds steps {', '.join(map(str, steps))}")
  return requested


def _history(step_dir: pathlib.Path) -> dict[str, Any]:
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    return checkpointer.restore(step_dir / "history")


def summary_path(run: Run, index: int | None) -> pathlib.Path:
  """The ``summary.json`` of the run (of replica ``index``)."""
  if index is None:
    return run.workdir / summary_lib.SUMMARY_FILE
  return run.workdir / f"seed_{run.seeds[index]}" / summary_lib.SUMMARY_FILE


def kept_epoch(run: Run, index: int | None,
               log: Callable[[str], None] = lambda line: None) -> tuple[int | None, str]:
  """The 1-based epoch the run's data-free selection kept for replica ``index`` and
  its criterion, as the run's ``summary.json`` records them (the criterion of the
  last train command, which may differ from ``run_config.json``'s); from the newest
  checkpoint's history and the recorded config for a run without a summary, or with a
  damaged one (said in ``log``).

  Raises:
    ExportError: no checkpoint yet.
  """
  path = summary_path(run, index)
  if path.is_file():
    try:
      recorded = summary_lib.Summary.load(path)
      return recorded.selected_epoch, recorded.criterion or "last"
    except ValueError as e:
      log(f"{' '.join(str(e).split())[:300]}; the kept epoch is taken from the "
          "newest checkpoint and run_config.json's criterion instead")
  criterion = (run.config.get("selection") or {}).get("criterion", "last")
  if criterion == "last":
    return None, criterion
  newest = choose_step(run, None)
  try:
    history = _history(run.workdir / CHECKPOINT_DIR / str(newest))
  except Exception as e:  # pylint: disable=broad-except  # orbax errors.
    raise ExportError(f"the history of checkpoint {newest} does not restore "
                      f"({type(e).__name__}); pass --checkpoint=STEP") from None
  if index is not None:
    history = history["replicas"][index]
  epoch = selection.selected_epoch(criterion, history.get("criteria") or {},
                                   len(history.get("test_accuracy", [])))
  return None if epoch is None else epoch + 1, criterion


def default_steps(run: Run, index: int | None,
                  log: Callable[[str], None] = lambda line: None) -> list[int]:
  """The checkpoints ``export`` tries without ``--checkpoint``: the one of the epoch
  the run kept (:func:`kept_epoch`), or for ``last`` (and runs made before selection)
  every checkpoint, newest first (a damaged one falls back to the one before, as
  training does).

  Raises:
    ExportError: no checkpoint yet, or the kept epoch's checkpoint is not on disk.
  """
  steps = checkpoint_steps(run)
  newest_first = sorted(steps, reverse=True)
  epoch, criterion = kept_epoch(run, index, log)
  if not steps:
    choose_step(run, None)  # Raises: no checkpoint yet.
  if epoch is None or criterion == "last":
    return newest_first
  step = epoch * int(run.config["iterations_per_epoch"])
  if step not in steps:
    raise ExportError(
        f"{summary_path(run, index)} keeps epoch {epoch} (criterion {criterion}), whose "
        f"checkpoint {step} is not in {run.workdir / CHECKPOINT_DIR} (rotated out before "
        f"that criterion was in force); pass --checkpoint= one of "
        f"{', '.join(map(str, steps))}")
  return [step]


def selected_step(run: Run, index: int | None) -> int:
  """The checkpoint of the epoch the run kept for replica ``index``
  (:func:`default_steps`' first).

  Raises:
    ExportError: no checkpoint yet, or the kept one is not on disk.
  """
  return default_steps(run, index)[0]


def replica_index(run: Run, seed: int | None) -> int | None:
  """The replica of ``seed`` (``None`` for a run without replicas).

  Raises:
    ExportError: ``seed`` is not one of the run's, or a run of replicas without one.
  """
  seeds = run.seeds
  if seed is not None and seed not in seeds:
    raise ExportError(f"--seed={seed} is not a seed of the run in {run.workdir}; its "
                      f"seeds: {', '.join(map(str, seeds))}")
  if len(seeds) == 1:
    return None
  if seed is None:
    raise ExportError(f"the run in {run.workdir} holds {len(seeds)} replicas (seeds "
                      f"{seeds[0]}-{seeds[-1]}); pass --seed=K to export one")
  return seeds.index(seed)


def _restore(step_dir: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """The student's ``{"params", "batch_stats"}`` (NumPy) and the history of one
  checkpoint, without the rest of the training state."""
  state_dir = step_dir / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(state_dir).item_metadata.tree
  wanted = {"student": {k: tree["student"][k] for k in ("params", "batch_stats")}}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
  history = _history(step_dir)
  student = restored["student"]
  return {"params": student["params"], "batch_stats": student.get("batch_stats") or {}
          }, history


def _restore_or_explain(run: Run, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """:func:`_restore` of checkpoint ``step``; ExportError (its cause) if it fails."""
  try:
    return _restore(run.workdir / CHECKPOINT_DIR / str(step))
  except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors.
    checkpoints_lib.drop_closed_loop_callbacks()
    cause = (str(e).strip().splitlines() or [""])[0][:200]
    raise DamagedCheckpointError(
        f"checkpoint {step} in {run.workdir / CHECKPOINT_DIR} does not restore "
        f"({type(e).__name__}: {cause})") from None


def restore_default(run: Run, index: int | None, seed: int | None,
                    log: Callable[[str], None]) -> "Student":
  """The student :func:`default_steps` names: the first of its checkpoints that
  restores, saying so for each damaged one.

  Raises:
    ExportError: none of them restores (one line, with the causes).
  """
  steps = default_steps(run, index, log)
  failed = []
  for step in steps:
    try:
      return restore_student(run, step, seed)
    except DamagedCheckpointError as e:
      failed.append(str(e))
      if step != steps[-1]:
        log(f"{e}; trying the one before it")
  others = sorted(set(checkpoint_steps(run)) - set(steps))
  way = (f"pass --checkpoint= one of {', '.join(map(str, others))}" if others
         else "none of the run's checkpoints restores")
  raise ExportError(f"{'; '.join(failed)}: no checkpoint to export; {way}")


def evaluation_dataset(run: Run) -> str:
  """The dataset the run evaluated its students on, as the trainer chose it
  (:func:`dfkd_jax.data.datasets.evaluation_dataset`): ``config.dataset`` for a
  ``folder:``/``npz:`` run, the teacher's id (whose variant decides the preprocessing)
  for the others; ``config.dataset`` as given when it no longer loads (moved)."""
  dataset = run.config.get("dataset") or run.teacher["dataset"]
  meta = types.SimpleNamespace(dataset=run.teacher["dataset"])  # All it reads.
  try:
    return data.evaluation_dataset(meta, dataset)
  except (ValueError, FileNotFoundError):
    return dataset


def restore_student(run: Run, step: int, seed: int | None) -> Student:
  """The student of checkpoint ``step`` (of replica ``seed``), with its card.

  Raises:
    ExportError: an unknown seed, or a replica that failed (NaN/Inf).
    DamagedCheckpointError: the checkpoint does not restore.
  """
  index = replica_index(run, seed)
  variables, history = _restore_or_explain(run, step)
  seed = run.seeds[0] if index is None else run.seeds[index]
  if index is not None:
    variables = jax.tree.map(lambda a: a[index], variables)
    history = history["replicas"][index]
  if history.get("failed"):
    raise ExportError(f"replica seed {seed} of {run.workdir} failed ({history['failed']})"
                      "; export another --seed")
  per_epoch = int(run.config["iterations_per_epoch"])
  epochs = history.get("test_accuracy", [])
  accuracy = (epochs[step // per_epoch - 1] if step % per_epoch == 0
              and 0 < step // per_epoch <= len(epochs) else None)
  teacher = run.teacher
  card = student_card.StudentCard(
      arch=run.config["student"], num_classes=int(teacher["num_classes"]),
      input_shape=tuple(int(d) for d in teacher["input_shape"]),
      mean=tuple(teacher["mean"]), std=tuple(teacher["std"]),
      dataset=evaluation_dataset(run), method=run.config["method"], seed=seed,
      step=step, test_accuracy=accuracy, teacher_arch=teacher["arch"],
      source=f"{run.workdir / CHECKPOINT_DIR / str(step)}")
  return Student(variables, card)


# ---------------------------------------------------------------------------
# The formats.
# ---------------------------------------------------------------------------


def check_class_names(run: Run, dataset_id: str) -> None:
  """Refuses a test set whose class names differ from those the teacher records.

  Raises:
    ExportError: the names differ (one line, the first difference and the fix).
  """
  teacher = types.SimpleNamespace(arch=run.teacher["arch"],
                                  class_names=run.teacher.get("class_names") or ())
  try:
    data.check_class_names(teacher, dataset_id)
  except ValueError as e:
    raise ExportError(' '.join(str(e).split())) from None


def test_set(run: Run, card: student_card.StudentCard, log=None
             ) -> tuple[np.ndarray, np.ndarray]:
  """The run's test set as the student sees it: normalised NHWC images and labels.

  Raises:
    ExportError: it does not load (moved, not prepared): one line.
  """
  try:
    dataset = data.get_dataset(card.dataset)
    split = data.load_split(card.dataset, "test",
                            data_dir=run.config.get("data_dir") or None,
                            image_size=int(run.config.get("image_size") or 0), log=log)
  except (FileNotFoundError, ValueError) as e:
    raise ExportError(f"the ONNX check needs the run's test set: "
                      f"{' '.join(str(e).split())}") from None
  images = data.preprocess(split.images, dataset, pixel_max=split.pixel_max,
                           image_shape=card.input_shape,
                           normalization=(card.mean, card.std))
  return np.asarray(images, np.float32), np.asarray(split.labels)


def jax_logits(student: Student, images: np.ndarray, batch_size: int = 500
               ) -> np.ndarray:
  """The JAX student's eval-mode logits (float32 matmuls at full precision)."""
  module = student.card.module()
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
  with jax.default_matmul_precision("highest"):
    return np.concatenate([np.asarray(apply(student.variables, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


@contextlib.contextmanager
def _flax_max_pool():
  """Flax's own ``max_pool`` while jax2onnx traces: jax2onnx's replacement takes the
  window shape by keyword only and fails on ``nn.max_pool(x, (2, 2), ...)``; Flax's
  lowers to ``lax.reduce_window_max``, which jax2onnx converts."""
  patched = nn.max_pool, pooling.max_pool
  nn.max_pool = pooling.max_pool = _FLAX_MAX_POOL
  try:
    yield
  finally:
    nn.max_pool, pooling.max_pool = patched


def _onnx_libraries():
  """``(jax2onnx.to_onnx, onnxruntime)``, or a one-line error saying how to install."""
  try:
    from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModuleNotFoundError(f"--format=onnx needs jax2onnx and onnxruntime ({e}): "
                              f"{INSTALL_EXPORT}") from e
  # Plugins for libraries we do not use (dm_pix) fail to import with this jax and say
  # so with a traceback each; the conversion does not need them.
  std_logging.getLogger("jax2onnx").setLevel(std_logging.ERROR)
  std_logging.getLogger("onnx_ir").setLevel(std_logging.ERROR)
  return to_onnx, onnxruntime


class OnnxCheck(NamedTuple):
  """The ONNX model against the JAX student on the run's test set."""

  examples: int
  max_abs_diff: float
  relative_diff: float        # max_abs_diff / max |JAX logit|.
  jax_accuracy: float         # Percent.
  onnx_accuracy: float        # Percent.
  agreement: float            # Percent of examples with the same top-1 class.


def onnx_model(student: Student):
  """The student as an ONNX ``ModelProto``: input ``images`` ``[batch, C, H, W]``,
  output ``logits``; the card in the metadata (``dfkd_jax.student``)."""
  to_onnx, _ = _onnx_libraries()
  card = student.card
  module = card.module()
  variables = jax.tree.map(jnp.asarray, student.variables)

  def logits(x):
    with _flax_max_pool():
      return module.apply(variables, x, train=False)

  proto = to_onnx(logits, [("batch", *card.input_shape)], model_name=card.arch,
                  inputs_as_nchw=[0], input_names=["images"], output_names=["logits"])
  entry = proto.metadata_props.add()
  entry.key, entry.value = "dfkd_jax.student", json.dumps(card.to_json())
  proto.doc_string = (f"dfkd_jax student {card.arch} ({card.method}, seed {card.seed}, "
                      f"step {card.step}); input: images normalised with mean "
                      f"{list(card.mean)} std {list(card.std)}, NCHW")
  return proto


def check_onnx(model_bytes: bytes, student: Student, images: np.ndarray,
               labels: np.ndarray, batch_size: int = 500) -> OnnxCheck:
  """Runs the ONNX model in onnxruntime and the JAX student on ``images`` (NHWC)."""
  _, onnxruntime = _onnx_libraries()
  session = onnxruntime.InferenceSession(model_bytes,
                                         providers=["CPUExecutionProvider"])
  nchw = images.transpose(0, 3, 1, 2)
  got = np.concatenate([session.run(["logits"], {"images": nchw[i:i + batch_size]})[0]
                        for i in range(0, len(images), batch_size)])
  want = jax_logits(student, images, batch_size)
  diff = float(np.max(np.abs(got - want)))
  return OnnxCheck(len(images), diff, diff / max(float(np.max(np.abs(want))), 1e-12),
                   100.0 * float(np.mean(want.argmax(-1) == labels)),
                   100.0 * float(np.mean(got.argmax(-1) == labels)),
                   100.0 * float(np.mean(got.argmax(-1) == want.argmax(-1))))


def write_onnx(run: Run, student: Student, out: pathlib.Path, log) -> OnnxCheck:
  """Converts, checks on the test set, then writes ``out`` (ExportError if the check
  fails: nothing is written). The test set is loaded first, so that a missing one is
  said before the conversion; each stage says what it does when it starts, every
  :data:`PROGRESS_SECONDS` that it still runs, and how long it took."""
  with progress.Heartbeat(log, "loading the test set", f"loading the "
                          f"{student.card.dataset} test set for the ONNX check ...",
                          PROGRESS_SECONDS) as loading:
    images, labels = test_set(run, student.card, log)
  log(f"loaded {len(labels)} test images in {loading.seconds:.1f} s")
  check_class_names(run, student.card.dataset)  # The set just read.
  with progress.Heartbeat(log, "converting", "converting the student to ONNX with "
                          "jax2onnx (tens of seconds on a CPU) ...",
                          PROGRESS_SECONDS) as converting:
    model_bytes = onnx_model(student).SerializeToString()
  log(f"converted the student to ONNX in {converting.seconds:.1f} s "
      f"({len(model_bytes) / 1e6:.2f} MB)")
  with progress.Heartbeat(log, "checking", f"checking the ONNX model in onnxruntime "
                          f"against the JAX student on {len(labels)} test images ...",
                          PROGRESS_SECONDS) as checking:
    check = check_onnx(model_bytes, student, images, labels)
  log(f"onnxruntime vs JAX on the {student.card.dataset} test set ({check.examples} "
      f"images, checked in {checking.seconds:.1f} s): max |logit difference| "
      f"{check.max_abs_diff:.3g} ({check.relative_diff:.3g} of the largest logit), "
      f"accuracy ONNX {check.onnx_accuracy:.2f}% / JAX {check.jax_accuracy:.2f}%, same "
      f"top-1 class on {check.agreement:.2f}%")
  if not check.relative_diff <= ONNX_TOLERANCE:
    raise ExportError(f"the ONNX model's logits differ from the JAX student's by "
                      f"{check.relative_diff:.3g} of the largest logit (> "
                      f"{ONNX_TOLERANCE:g}); nothing written; please report it")
  _write_file(out, model_bytes)
  return check


def write_torch(student: Student, out: pathlib.Path) -> None:
  """Writes ``{"state_dict": ..., "student": card}`` with ``torch.save``; the classes of
  :mod:`dfkd_jax.interop.torch_models` load it (``torch_models.load``)."""
  torch = _import_torch()
  state_dict = torch_layout.variables_to_state_dict(student.variables, student.card.arch)
  payload = {"state_dict": {k: torch.from_numpy(v) for k, v in state_dict.items()},
             "student": student.card.to_json()}
  staging = student_card.staging_dir(out)
  try:
    torch.save(payload, staging / out.name)
    student_card.replace_with(staging / out.name, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _import_torch():
  """``torch``, or a one-line ``ModuleNotFoundError`` saying how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top; optional dependency.
  except ImportError as e:
    raise ModuleNotFoundError(f"--format=torch needs torch ({e}): {INSTALL_EXPORT} "
                              "(the CPU build is enough)") from e
  return torch


def _write_file(out: pathlib.Path, content: bytes) -> None:
  staging = student_card.staging_dir(out)
  try:
    (staging / out.name).write_bytes(content)
    student_card.replace_with(staging / out.name, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _is_onnx_export(path: pathlib.Path) -> bool:
  """An ONNX file :func:`write_onnx` wrote: it parses and carries the card."""
  import onnx  # pylint: disable=g-import-not-at-top  # jax2onnx's dependency.
  try:
    model = onnx.load(str(path), load_external_data=False)
  except Exception:  # pylint: disable=broad-except  # Anything else is not ours.
    return False
  return any(p.key == "dfkd_jax.student" for p in model.metadata_props)


def _is_torch_export(path: pathlib.Path) -> bool:
  """A ``.pth`` :func:`write_torch` wrote: ``{"state_dict", "student": card}``."""
  torch = _import_torch()
  try:
    payload = torch.load(path, map_location="cpu", weights_only=True)
  except Exception:  # pylint: disable=broad-except  # Anything else is not ours.
    return False
  return (isinstance(payload, dict) and set(payload) == {"state_dict", "student"}
          and isinstance(payload["student"], dict)
          and payload["student"].get("format_version") == student_card.FORMAT_VERSION)


# What --overwrite may replace, per format: an earlier export of that format.
EARLIER_EXPORT = {"onnx": lambda p: p.is_file() and _is_onnx_export(p),
                  "torch": lambda p: p.is_file() and _is_torch_export(p),
                  "flax": student_card.is_student_folder}


def export(workdir: str | os.PathLike, fmt: str, out: str | os.PathLike,
           seed: int | None = None, checkpoint: int | None = None,
           overwrite: bool = False, log: Callable[[str], None] = print
           ) -> student_card.StudentCard:
  """Exports the student of a run (see the module docstring).

  Every argument is checked before the checkpoint is read; ``out`` is written only
  when the export (and, for ONNX, its check) succeeds.

  Args:
    workdir: the run directory.
    fmt: one of :data:`FORMATS`.
    out: the file (onnx, torch) or folder (flax) to write.
    seed: the replica to export (a run of replicas needs one).
    checkpoint: the step to export; default the selected epoch's
      (:func:`selected_step`).
    overwrite: replace an existing ``out``.
    log: receives the progress and check lines (onnx), and a line per damaged
      checkpoint passed over.

  Returns:
    The exported student's card.

  Raises:
    ExportError: bad input (one line).
    dfkd_jax.core.workdir.OutputError: an ``out`` that must not be written or replaced
      (:func:`dfkd_jax.core.workdir.check_output`; ``overwrite`` replaces only an earlier
      export of the format).
    FileExistsError: ``out`` exists and ``overwrite`` is false.
    ModuleNotFoundError: a library of the format is not installed.
  """
  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt!r}; valid formats: {', '.join(FORMATS)}")
  if fmt == "torch":
    _import_torch()
  elif fmt == "onnx":
    _onnx_libraries()
  out = workdir_lib.check_output(os.fspath(out), "--out", overwrite,
                                 EARLIER_EXPORT[fmt],
                                 f"--format={fmt} export (with its student card)")
  run = read_run(workdir)
  arch = run.config["student"]
  if fmt == "torch" and arch not in torch_layout.TORCH_LAYOUTS:
    raise ExportError(f"--format=torch does not cover the student {arch!r}; it covers "
                      f"{', '.join(sorted(torch_layout.TORCH_LAYOUTS))}; use --format=onnx")
  index = replica_index(run, seed)
  if checkpoint is not None:
    student = restore_student(run, choose_step(run, checkpoint), seed)
  else:
    student = restore_default(run, index, seed, log)
  if fmt == "onnx":
    write_onnx(run, student, out, log)
  elif fmt == "torch":
    write_torch(student, out)
  else:
    student_card.save_student(out, student.variables, student.card)
  return student.card

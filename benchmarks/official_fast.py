r"""Times the official Fast-Datafree code (Fang et al., AAAI 2022) on this CPU; runs it for a budget.

  python -m benchmarks.official_fast --checkout=PATH/TO/Fast-Datafree --out=fast.json
  python -m benchmarks.official_fast --checkout=PATH --pairs=wrn40_2:wrn16_1 --g_steps=5
  python -m benchmarks.official_fast --checkout=PATH --tiny --out=tiny.json  # a check

``--checkout`` is the user's own checkout of https://github.com/zju-vipa/Fast-Datafree
(the folder holding ``datafree_kd.py``); it is imported from there, never copied into
this repository. Needs ``torch`` and ``kornia`` (the official synthesiser's in-loop
augmentation, ``pip install kornia``); ``torchvision`` may be absent (see below).

What is timed, per (teacher, student) pair and ``--g_steps`` (the paper's Fast-2 and
Fast-5, each with its script's ``lr_g``/``lr_z``), on ``torch.set_num_threads(--threads)``,
in wall seconds and in this process's CPU seconds (``time.process_time``: on a shared
machine the wall time is mostly waiting for a core):

* ``synthesis``: one ``FastMetaSynthesizer.synthesize()`` call past the warm-up epochs
  (the adversarial term on, so the student runs too), and the ``cost`` it returns (the
  synthesis time the paper reports; it stops before the images are written);
  ``synthesis_warmup``: the same during the warm-up epochs (no student). A call also
  writes the round's images as PNG files into the bank folder (a temporary folder) and
  starts a new shuffled ``DataLoader`` over the whole bank (``num_workers=4``, fixed at
  fast_meta.py:190-193): both are in its wall time, as in the code.
* ``kd_step``: one step of the official ``datafree_kd.train`` (``args.kd_steps = 1``: a
  batch from the bank through the loader, the teacher, the student, the KL at ``T``,
  SGD) on a bank of ``--bank_rounds`` rounds of images (20: the bank when distillation
  starts after the warm-up; earlier rounds' images are one generator batch written that
  many times, as PNG files like the rest). A loader epoch then lasts 20 steps and its
  workers restart at the next, so the ``mean`` of ``--kd_repeats=20`` steps includes one
  restart, the ``median`` none. ``loader_workers_cpu_seconds_per_step``: the CPU seconds
  of the 4 worker processes (decoding and augmenting PNGs beside the timed process,
  which ``--threads`` does not bound), per step.

Medians (and means, every value) over ``--repeats`` rounds and ``--kd_repeats`` steps,
after ``--cold_calls`` untimed rounds (default 1; 0 times the first round too) and one
untimed step. ``--parts=synthesis`` or ``--parts=kd`` times one of them (with only
``kd`` the one untimed round runs a single inner step: it only makes the loader), and
``--append`` adds the records to an existing ``--out`` of the same settings: one short
run per case on a shared machine, each record with its start time and load. The
teacher is randomly initialised (speed does not depend on the weights).

Stand-ins, only for what is not installed: ``torchvision``. Of it the official path
uses the four CIFAR transforms of ``registry.get_dataset('cifar10')`` for the bank's
batches (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) and
``transforms.Compose`` around the kornia augmentation: those are given faithful minimal
implementations below (torchvision's code path since 0.8, including its random draws:
``torch.randint`` for the crop offsets, ``torch.rand(1) < p`` for the flip); every other
torchvision name is an empty class (imported, never used on this path). The dataset
classes of ``registry.get_dataset`` are replaced by ones that keep only their
``transform`` (the training data is never read: the bank replaces it).

Compatibility aliases on a machine without CUDA: the official code calls ``.cuda()``
unconditionally in ``Generator.clone`` (generator.py:45), ``fomaml_grad``
(fast_meta.py:19,26) and the evaluator (evaluators.py:15); while it runs,
``Tensor.cuda``/``Module.cuda`` return their object unchanged (the CPU is the device).
The synthesiser gets ``device='cpu'`` and ``train`` ``args.gpu = None`` (its CPU branch).

:func:`accuracy_vs_time` runs the official method end to end (``datafree_kd.main_worker``'s
loop: a synthesis round per epoch, the KD steps after the warm-up, the cosine schedule)
on a given teacher for a wall-clock budget, scoring the student on a NumPy test set every
``eval_every_seconds`` of training time; ``--tiny`` runs a smoke test of it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pathlib
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Iterator, Mapping, Sequence


REPO = pathlib.Path(__file__).resolve().parents[1]

#: The (teacher, student) pairs: this project's CPU CIFAR protocol, then the paper's.
PAIRS = (("wrn16_2", "wrn16_1"), ("wrn40_2", "wrn16_1"))

#: scripts/fast_cifar.sh lines 20-24 (the WRN-40-2 lines; teacher and student are
#: datafree_kd.py's defaults wrn40_2/wrn16_1, L56-57), with datafree_kd.py's defaults
#: for what the script leaves out (weight decay L117, the synthesis batch = batch L253).
COMMON = {
    "batch_size": 256, "synthesis_batch_size": 256, "lr": 0.2, "weight_decay": 1e-4,
    "momentum": 0.9, "kd_steps": 400, "ep_steps": 400, "epochs": 220, "warmup": 20,
    "adv": 1.1, "bn": 10.0, "oh": 0.4, "T": 20.0, "bn_mmt": 0.9, "is_maml": 1,
    "reset_l0": 1, "reset_bn": 0, "nz": 256, "ngf": 64, "cosine_T_max": 200,
    "cosine_eta_min": 2e-4, "seed": 0,
}
#: g_steps -> the script's generator and latent learning rates (Fast-2, -5, -10).
PER_G_STEPS = {2: {"lr_g": 5e-3, "lr_z": 0.015}, 5: {"lr_g": 3e-3, "lr_z": 0.01},
               10: {"lr_g": 2e-3, "lr_z": 0.01}}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # registry.py:20
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
LOADER_WORKERS = 4  # fast_meta.py:192, fixed in the code.


# ---------------------------------------------------------------------------
# Stand-ins for torchvision.transforms: torchvision's code paths, PIL images and tensors.
# ---------------------------------------------------------------------------


def _is_pil(img) -> bool:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return isinstance(img, Image.Image)


def _size_hw(img) -> tuple[int, int]:
  if _is_pil(img):
    width, height = img.size
    return height, width
  return int(img.shape[-2]), int(img.shape[-1])


class Compose:
  """``torchvision.transforms.Compose``: applies each transform in turn."""

  def __init__(self, transforms):
    self.transforms = transforms

  def __call__(self, img):
    for t in self.transforms:
      img = t(img)
    return img


class RandomCrop:
  """``torchvision.transforms.RandomCrop`` (constant padding, no ``pad_if_needed``).

  As torchvision: pad by ``padding`` with ``fill``, then ``i = torch.randint(0, h - th +
  1)``, ``j = torch.randint(0, w - tw + 1)`` (none drawn when the sizes match), crop.
  """

  def __init__(self, size, padding=None, pad_if_needed=False, fill=0,
               padding_mode="constant"):
    self.size = (size, size) if isinstance(size, int) else tuple(size)
    if pad_if_needed or padding_mode != "constant" or not isinstance(padding, (int, type(None))):
      raise NotImplementedError("the stand-in RandomCrop covers int padding, constant "
                                "mode, no pad_if_needed (what the official code uses)")
    self.padding, self.fill = padding, fill

  @staticmethod
  def get_params(img, output_size):
    import torch  # pylint: disable=g-import-not-at-top
    h, w = _size_hw(img)
    th, tw = output_size
    if h < th or w < tw:
      raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(h, w)}")
    if w == tw and h == th:
      return 0, 0, h, w
    i = torch.randint(0, h - th + 1, size=(1,)).item()
    j = torch.randint(0, w - tw + 1, size=(1,)).item()
    return i, j, th, tw

  def __call__(self, img):
    if self.padding:
      if _is_pil(img):
        from PIL import ImageOps  # pylint: disable=g-import-not-at-top
        img = ImageOps.expand(img, border=self.padding, fill=self.fill)
      else:
        import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
        p = self.padding
        img = F.pad(img, [p, p, p, p], mode="constant", value=self.fill)
    i, j, h, w = self.get_params(img, self.size)
    if _is_pil(img):
      return img.crop((j, i, j + w, i + h))
    return img[..., i:i + h, j:j + w]


class RandomHorizontalFlip:
  """``torchvision.transforms.RandomHorizontalFlip``: flips when ``torch.rand(1) < p``."""

  def __init__(self, p=0.5):
    self.p = p

  def __call__(self, img):
    import torch  # pylint: disable=g-import-not-at-top
    if torch.rand(1) < self.p:
      if _is_pil(img):
        from PIL import Image  # pylint: disable=g-import-not-at-top
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      return img.flip(-1)
    return img


class ToTensor:
  """``torchvision.transforms.ToTensor``: HWC uint8 (PIL or ndarray) -> CHW float / 255."""

  def __call__(self, pic):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    if _is_pil(pic):
      if pic.mode not in ("RGB", "L"):
        raise NotImplementedError(f"the stand-in ToTensor reads RGB and L images, not {pic.mode}")
      array = np.array(pic, np.uint8, copy=True)
    else:
      array = np.asarray(pic)
    if array.ndim == 2:
      array = array[:, :, None]
    img = torch.from_numpy(np.ascontiguousarray(array.transpose((2, 0, 1))))
    if img.dtype == torch.uint8:
      return img.to(dtype=torch.get_default_dtype()).div(255)
    return img


class Normalize:
  """``torchvision.transforms.Normalize``: ``(tensor - mean) / std`` per channel, on a copy."""

  def __init__(self, mean, std, inplace=False):
    self.mean, self.std, self.inplace = mean, std, inplace

  def __call__(self, tensor):
    import torch  # pylint: disable=g-import-not-at-top
    if not self.inplace:
      tensor = tensor.clone()
    mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


STAND_IN_TRANSFORMS = {"Compose": Compose, "RandomCrop": RandomCrop,
                       "RandomHorizontalFlip": RandomHorizontalFlip, "ToTensor": ToTensor,
                       "Normalize": Normalize}


def _not_stood_in(name: str) -> type:
  def refuse(self, *args, **kwargs):
    raise NotImplementedError(f"torchvision.transforms.{name} has no stand-in (only "
                              f"{', '.join(STAND_IN_TRANSFORMS)}): install torchvision")
  return type(name, (), {"__init__": refuse})


class _TransformsStandIn(types.ModuleType):
  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    return _not_stood_in(name)


class _TransformOnlyDataset:
  """A dataset class of ``registry.get_dataset`` that keeps its ``transform``, no data."""

  def __init__(self, *args, transform=None, **kwargs):
    del args, kwargs
    self.transform = transform


class _TorchvisionStub(types.ModuleType):
  """An empty ``torchvision`` module: lower-case names are empty submodules (``models``,
  ``models.inception``, functions such as ``mobilenet_v2``), others empty classes."""

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    if name[:1].islower():
      child = _TorchvisionStub(f"{self.__name__}.{name}")
      child.__path__ = []
      setattr(self, name, child)
      return child
    return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _TorchvisionFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Serves the stand-in ``torchvision`` (its ``transforms``: :data:`STAND_IN_TRANSFORMS`)."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split(".")[0] != "torchvision":
      return None
    return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

  def create_module(self, spec):
    if spec.name == "torchvision.transforms":
      module = _TransformsStandIn(spec.name)
      module.__dict__.update(STAND_IN_TRANSFORMS)
      return module
    return _TorchvisionStub(spec.name)

  def exec_module(self, module):
    module.__path__ = []


def install_stand_ins() -> list[str]:
  """Makes the official modules importable; returns the stood-in modules (none if installed)."""
  if importlib.util.find_spec("torchvision") is not None:
    return []
  if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
    sys.meta_path.append(_TorchvisionFinder())
  import torchvision  # pylint: disable=g-import-not-at-top
  import torchvision.transforms  # pylint: disable=g-import-not-at-top,unused-import
  return ["torchvision"]


@contextlib.contextmanager
def cpu_cuda_aliases() -> Iterator[list[str]]:
  """Without CUDA, ``Tensor.cuda``/``Module.cuda`` return their object while inside."""
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available():
    yield []
    return
  saved = [(cls, cls.__dict__.get("cuda")) for cls in (torch.Tensor, torch.nn.Module)]
  for cls, _ in saved:
    cls.cuda = lambda self, *args, **kwargs: self
  try:
    yield ["torch.Tensor.cuda and torch.nn.Module.cuda return their object (no CUDA: "
           "the official code calls .cuda() in Generator.clone, fomaml_grad, Evaluator.eval)"]
  finally:
    for cls, method in saved:
      if method is None:
        del cls.cuda  # Inherited (torch.Tensor's comes from its C base class).
      else:
        cls.cuda = method


def load_official(checkout: pathlib.Path) -> types.SimpleNamespace:
  """Imports the official modules from ``checkout`` (stand-ins first)."""
  stubbed = install_stand_ins()
  if str(checkout) not in sys.path:
    sys.path.insert(0, str(checkout))
  import datafree  # pylint: disable=g-import-not-at-top
  import datafree_kd  # pylint: disable=g-import-not-at-top
  import registry  # pylint: disable=g-import-not-at-top
  for module in (datafree, datafree_kd, registry):
    if not pathlib.Path(module.__file__).resolve().is_relative_to(checkout):
      raise ImportError(f"{module.__name__} was imported from {module.__file__}, "
                        f"not from the checkout {checkout}")
  return types.SimpleNamespace(datafree=datafree, datafree_kd=datafree_kd, registry=registry,
                               stubbed=stubbed)


def checkout_commit(checkout: pathlib.Path) -> str | None:
  try:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


# ---------------------------------------------------------------------------
# The official objects, as datafree_kd.main_worker builds them for --method fast_meta.
# ---------------------------------------------------------------------------


def hyper_parameters(g_steps: int, **overrides) -> dict[str, Any]:
  if g_steps not in PER_G_STEPS and not {"lr_g", "lr_z"} <= set(overrides):
    raise ValueError(f"g_steps={g_steps}: the scripts set lr_g/lr_z for "
                     f"{sorted(PER_G_STEPS)} only; pass lr_g and lr_z")
  hp = {**COMMON, "g_steps": g_steps, **PER_G_STEPS.get(g_steps, {})}
  unknown = sorted(set(overrides) - set(hp))
  if unknown:
    raise ValueError(f"unknown hyper-parameter {unknown[0]!r}")
  hp.update(overrides)
  return hp


def build(official, teacher_name: str, student_name: str, hp: Mapping[str, Any],
          bank_dir: pathlib.Path, teacher_state: Mapping[str, Any] | None = None,
          normalization: tuple[Sequence[float], Sequence[float]] | None = None):
  """Teacher, student, generator, synthesiser, optimiser, schedule and ``train``'s args.

  datafree_kd.py:202 (dataset), 243-249 (models, normaliser, KL), 304-316 (generator and
  FastMetaSynthesizer), 322-324 (SGD and the cosine schedule). ``normalization``:
  ``(mean, std)`` of a teacher trained with other statistics than the official CIFAR-10
  ones (``registry.NORMALIZE_DICT['cifar10']``, which every transform and the
  synthesiser's normaliser then use instead).
  """
  import torch  # pylint: disable=g-import-not-at-top
  datafree, registry = official.datafree, official.registry
  saved_datasets = registry.datasets
  saved_normalization = registry.NORMALIZE_DICT["cifar10"]
  registry.datasets = types.SimpleNamespace(CIFAR10=_TransformOnlyDataset)
  if normalization is not None:
    registry.NORMALIZE_DICT["cifar10"] = {"mean": tuple(normalization[0]),
                                          "std": tuple(normalization[1])}
  try:
    num_classes, ori_dataset, val_dataset = registry.get_dataset(name="cifar10",
                                                                 data_root=str(bank_dir))
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["cifar10"])
  finally:
    registry.datasets = saved_datasets
    registry.NORMALIZE_DICT["cifar10"] = saved_normalization
  student = registry.get_model(student_name, num_classes=num_classes)
  teacher = registry.get_model(teacher_name, num_classes=num_classes, pretrained=True).eval()
  if teacher_state is not None:
    state = teacher_state.get("state_dict", teacher_state)
    teacher.load_state_dict(state)
  criterion = datafree.criterions.KLDiv(T=hp["T"])
  generator = datafree.models.generator.Generator(nz=hp["nz"], ngf=hp["ngf"], img_size=32, nc=3)
  synthesizer = datafree.synthesis.FastMetaSynthesizer(
      teacher, student, generator, nz=hp["nz"], num_classes=num_classes, img_size=(3, 32, 32),
      init_dataset=None, save_dir=str(bank_dir), device="cpu",
      transform=ori_dataset.transform, normalizer=normalizer,
      synthesis_batch_size=hp["synthesis_batch_size"], sample_batch_size=hp["batch_size"],
      iterations=hp["g_steps"], warmup=hp["warmup"], lr_g=hp["lr_g"], lr_z=hp["lr_z"],
      adv=hp["adv"], bn=hp["bn"], oh=hp["oh"], reset_l0=hp["reset_l0"],
      reset_bn=hp["reset_bn"], bn_mmt=hp["bn_mmt"], is_maml=hp["is_maml"])
  optimizer = torch.optim.SGD(student.parameters(), hp["lr"], weight_decay=hp["weight_decay"],
                              momentum=hp["momentum"])
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, hp["cosine_T_max"],
                                                         eta_min=hp["cosine_eta_min"])
  # The fields of args that datafree_kd.train reads (gpu None: its CPU branch).
  args = types.SimpleNamespace(method="fast_meta", gpu=None, fp16=False,
                               autocast=datafree.utils.dummy_ctx, kd_steps=hp["kd_steps"],
                               print_freq=0, current_epoch=0, logger=None)
  return types.SimpleNamespace(teacher=teacher, student=student, generator=generator,
                               synthesizer=synthesizer, optimizer=optimizer,
                               scheduler=scheduler, criterion=criterion, args=args,
                               normalizer=normalizer, val_transform=val_dataset.transform,
                               num_classes=num_classes)


def kd_steps(official, run, steps: int) -> None:
  """``steps`` steps of the official ``datafree_kd.train``."""
  run.args.kd_steps = steps
  official.datafree_kd.train(run.synthesizer, [run.student, run.teacher], run.criterion,
                             run.optimizer, run.args)


def fill_bank(run, rounds: int, batch: int) -> None:
  """Writes ``rounds`` batches of images into the bank (the official ``ImagePool.add``),
  as earlier synthesis rounds would have: one batch of the generator's images, written
  ``rounds`` times (the generator costs as much as a teacher at batch 256; the loader's
  cost is the number and size of the PNG files)."""
  import torch  # pylint: disable=g-import-not-at-top
  if rounds <= 0:
    return
  with torch.no_grad():
    images = run.generator(torch.randn(batch, run.synthesizer.nz))
  for _ in range(rounds):
    run.synthesizer.data_pool.add(images)


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def _summary(times: Sequence[float]) -> dict[str, Any]:
  return {"median": statistics.median(times), "mean": statistics.fmean(times),
          "all": list(times)}


def _synthesis_calls(run, calls: int) -> dict[str, Any]:
  """Wall seconds, this process's CPU seconds and the official ``cost`` of each round."""
  wall, cpu, cost = [], [], []
  for _ in range(calls):
    t0, c0 = time.perf_counter(), time.process_time()
    _, official_cost = run.synthesizer.synthesize()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    cost.append(float(official_cost))
  return {"seconds_per_round": _summary(wall), "cpu_seconds_per_round": _summary(cpu),
          "official_cost_seconds": _summary(cost)}


def time_pair(official, teacher_name: str, student_name: str, hp: Mapping[str, Any],
              timing: Mapping[str, Any], log) -> dict[str, Any]:
  """One pair at one g_steps: synthesis rounds (warm-up epochs, then after), KD steps.

  ``timing``: ``parts`` (``synthesis``, ``kd``), ``repeats``, ``warmup_repeats``,
  ``kd_repeats``, ``bank_rounds`` (see ``main``). The first ``synthesize()`` call is
  untimed (it warms up and, with only ``kd``, makes the bank's loader).
  """
  import torch  # pylint: disable=g-import-not-at-top
  parts, repeats, warmup_repeats = timing["parts"], timing["repeats"], timing["warmup_repeats"]
  cold_calls = timing["cold_calls"]
  if "synthesis" not in parts:
    repeats = warmup_repeats = 0
    cold_calls = 1  # The round that makes the bank's loader.
  if warmup_repeats and cold_calls + warmup_repeats >= hp["warmup"]:
    raise ValueError(f"warmup={hp['warmup']} epochs leave no room for {cold_calls} + "
                     f"{warmup_repeats} rounds during the warm-up")
  random.seed(hp["seed"])
  torch.manual_seed(hp["seed"])
  record = {"teacher": teacher_name, "student": student_name, "g_steps": hp["g_steps"],
            "lr_g": hp["lr_g"], "lr_z": hp["lr_z"], "batch_size": hp["batch_size"],
            "synthesis_batch_size": hp["synthesis_batch_size"], "parts": list(parts),
            "timing_settings": {"cold_calls": cold_calls, "repeats": repeats,
                                "warmup_repeats": warmup_repeats,
                                "kd_repeats": timing["kd_repeats"] if "kd" in parts else 0,
                                "bank_rounds": timing["bank_rounds"]},
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "repo_commit": checkout_commit(REPO),
            "load_average_1_5_15min_before": list(os.getloadavg())}
  with tempfile.TemporaryDirectory(prefix="official_fast_bank_") as bank:
    run = build(official, teacher_name, student_name, hp, pathlib.Path(bank))
    synth = run.synthesizer
    fill_bank(run, max(timing["bank_rounds"] - cold_calls - warmup_repeats - repeats, 0),
              hp["synthesis_batch_size"])
    log(f"{teacher_name} -> {student_name}, g_steps {hp['g_steps']}, batch "
        f"{hp['batch_size']}: {', '.join(parts)}")
    if "synthesis" not in parts:  # Only the loader is needed: a round of one inner step.
      synth.iterations = 1
    if cold_calls:
      _synthesis_calls(run, cold_calls)  # Untimed (warm-up epochs).
    synth.iterations = hp["g_steps"]
    if warmup_repeats:
      epochs = [synth.ep + 1, synth.ep + warmup_repeats]  # synthesize() counts them.
      record["synthesis_warmup"] = {**_synthesis_calls(run, warmup_repeats), "epochs": epochs,
                                    "student_in_loss": False}
    if repeats:
      synth.ep = max(synth.ep, synth.ep_start - 1)  # The next round is past the warm-up.
      epochs = [synth.ep + 1, synth.ep + repeats]
      record["synthesis"] = {**_synthesis_calls(run, repeats), "epochs": epochs,
                             "student_in_loss": hp["adv"] > 0}
      log(f"  {record['synthesis']['seconds_per_round']['median']:.2f} s/round "
          f"({record['synthesis']['cpu_seconds_per_round']['median']:.2f} CPU s)")
    record["bank_images"] = len(synth.data_pool.get_dataset())
    if "kd" in parts:
      kd_steps(official, run, 1)  # Warm-up: the loader's first batch.
      wall, cpu = [], []
      children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
      for _ in range(timing["kd_repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        kd_steps(official, run, 1)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
      synth.data_iter = None  # Shuts the loader's workers down (and reaps them).
      children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
      workers_cpu = sum(getattr(children1, f) - getattr(children0, f)
                        for f in ("ru_utime", "ru_stime"))
      record["kd_step"] = {
          "seconds_per_step": _summary(wall), "cpu_seconds_per_step": _summary(cpu),
          "loader_workers_cpu_seconds_per_step": workers_cpu / len(wall),
          "steps_timed": len(wall)}
      log(f"  {record['kd_step']['seconds_per_step']['median']:.3f} s/KD step (median), "
          f"{record['kd_step']['seconds_per_step']['mean']:.3f} (mean), "
          f"{record['kd_step']['cpu_seconds_per_step']['median']:.3f} CPU s (median), "
          f"bank of {record['bank_images']} images")
    synth.data_iter = None  # Shuts the loader's workers down before the folder goes.
  record["load_average_1_5_15min_after"] = list(os.getloadavg())
  return record


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
          "cpu": cpu, "cpu_count": os.cpu_count()}


def _header(checkout: pathlib.Path, official, aliases: list[str], threads: int) -> dict:
  import kornia  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  return {"benchmark": "official_fast", "checkout": str(checkout),
          "checkout_commit": checkout_commit(checkout), "repo_commit": checkout_commit(REPO),
          "host": _host(), "niceness": os.nice(0),
          "torch_version": torch.__version__, "kornia_version": kornia.__version__,
          "threads": threads, "torch_num_threads": torch.get_num_threads(),
          "loader_workers": LOADER_WORKERS, "stubbed_modules": official.stubbed,
          "stand_in_transforms": sorted(STAND_IN_TRANSFORMS) if official.stubbed else [],
          "compatibility_aliases": aliases,
          "load_average_1_5_15min_before": list(os.getloadavg())}


def run_benchmark(checkout: pathlib.Path, pairs, g_steps_list, threads: int,
                  timing: Mapping[str, Any], out: pathlib.Path | None = None,
                  overrides: Mapping[str, Any] | None = None, append: bool = False,
                  log=None) -> dict[str, Any]:
  """Times every (pair, g_steps); rewrites ``out`` after each, so a limit keeps what is done.

  With ``append``, the records are added to those of an existing ``out`` made with the
  same checkout commit, threads and hyper-parameters (one case per short run on a
  shared machine); each record carries its own start time and load.
  """
  import torch  # pylint: disable=g-import-not-at-top
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  torch.set_num_threads(threads)
  official = load_official(checkout)
  with cpu_cuda_aliases() as aliases:
    result = _header(checkout, official, aliases, threads)
    result["hyper_parameters"] = {
        "common": {**COMMON, **(overrides or {})}, "per_g_steps": PER_G_STEPS,
        "source": "scripts/fast_cifar.sh:20-24 (the WRN lines) and datafree_kd.py's defaults"}
    result["timing"] = (
        "per record: the first synthesize() untimed, then the median (and mean, all) of "
        "`repeats` rounds past the warm-up epochs and of `warmup_repeats` rounds during "
        "them; one KD step untimed, then `kd_repeats` steps on a bank of `bank_rounds` "
        "rounds of images; wall seconds and this process's CPU seconds")
    result["results"] = []
    if append and out and out.exists():
      previous = json.loads(out.read_text())
      for key in ("checkout_commit", "threads", "hyper_parameters"):
        if previous.get(key) != json.loads(json.dumps(result[key])):
          raise ValueError(f"--append: {out} has another {key} ({previous.get(key)!r})")
      result["load_average_1_5_15min_before"] = previous["load_average_1_5_15min_before"]
      result["results"] = previous["results"]
    for teacher_name, student_name in pairs:
      for g in g_steps_list:
        hp = hyper_parameters(g, **(overrides or {}))
        result["results"].append(time_pair(official, teacher_name, student_name, hp, timing,
                                           log))
        result["load_average_1_5_15min_after"] = list(os.getloadavg())
        if out:
          out.write_text(json.dumps(result, indent=1) + "\n")
  return result


# ---------------------------------------------------------------------------
# The official method end to end, accuracy against wall-clock time.
# ---------------------------------------------------------------------------


def _evaluator(official, run, images, labels, batch_size: int):
  """The official classification evaluator over the test set (the val transform)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"test images: expected uint8 (N, H, W, 3), got {images.dtype} "
                     f"{images.shape}")
  x = torch.stack([run.val_transform(img) for img in images])
  y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
  loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size, shuffle=False)
  return official.datafree.evaluators.classification_evaluator(loader)


def accuracy_vs_time(checkout: str | os.PathLike, teacher_state: Mapping[str, Any],
                     test_images, test_labels, budget_seconds: float,
                     eval_every_seconds: float, teacher: str = "wrn16_2",
                     student: str = "wrn16_1", g_steps: int = 2, threads: int = 1,
                     workdir: str | os.PathLike | None = None, clock: str = "wall",
                     log=None, normalization=None,
                     **overrides) -> list[tuple[float, int, float]]:
  """The official fast_meta method on ``teacher_state`` for ``budget_seconds``.

  ``teacher_state``: a PyTorch state_dict of the official WRN (``registry.get_model``'s
  layout; a checkpoint dict holding it under ``'state_dict'`` too). ``test_images``:
  uint8 (N, 32, 32, 3), scored through the official CIFAR-10 val transform and
  evaluator. The loop is ``datafree_kd.main_worker``'s (L366-400): each epoch one
  synthesis round (``ep_steps // kd_steps`` of them), then after ``warmup`` epochs
  ``kd_steps`` official KD steps, the cosine step per distillation epoch. The clock
  counts the method only (synthesis, bank, KD steps; not the evaluations); the student
  is scored at 0 and whenever another ``eval_every_seconds`` have passed (checked after
  every round and every KD step) and at the end. Returns ``(seconds, kd_steps,
  top-1 accuracy %)`` points. ``clock="process"`` counts this process's CPU seconds
  instead of wall seconds (a shared machine; the loader's worker processes are then not
  counted). ``normalization``: the teacher's ``(mean, std)`` where it is not the official
  CIFAR-10 one (:func:`build`). ``overrides``: hyper-parameters (:func:`hyper_parameters`).
  The bank's PNG files go to ``workdir/bank`` (a temporary folder if None).
  """
  import torch  # pylint: disable=g-import-not-at-top
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  checkout = pathlib.Path(checkout).expanduser().resolve()
  hp = hyper_parameters(g_steps, **overrides)
  if clock not in ("wall", "process"):
    raise ValueError(f"clock={clock!r}: 'wall' or 'process'")
  now = time.perf_counter if clock == "wall" else time.process_time
  torch.set_num_threads(threads)
  official = load_official(checkout)
  random.seed(hp["seed"])
  torch.manual_seed(hp["seed"])
  with contextlib.ExitStack() as stack:
    stack.enter_context(cpu_cuda_aliases())
    root = pathlib.Path(workdir) if workdir else pathlib.Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="official_fast_run_")))
    bank = root / "bank"
    run = build(official, teacher, student, hp, bank, teacher_state=teacher_state,
                normalization=normalization)
    evaluator = _evaluator(official, run, test_images, test_labels, hp["batch_size"])
    points: list[tuple[float, int, float]] = []
    elapsed, steps = 0.0, 0

    def score() -> None:
      run.student.eval()
      acc1 = evaluator(run.student)["Acc"][0]
      points.append((elapsed, steps, float(acc1)))
      log(f"  {elapsed:8.1f} s  {steps:6d} KD steps  acc {acc1:.2f}%")

    score()
    next_eval = eval_every_seconds
    done = False
    for epoch in range(hp["epochs"]):
      run.args.current_epoch = epoch
      for _ in range(hp["ep_steps"] // hp["kd_steps"]):
        t0 = now()
        run.synthesizer.synthesize()
        elapsed += now() - t0
        if elapsed >= next_eval and elapsed < budget_seconds:
          score()
          next_eval = (elapsed // eval_every_seconds + 1) * eval_every_seconds
        if elapsed >= budget_seconds:
          done = True
          break
        if epoch >= hp["warmup"]:
          for _ in range(hp["kd_steps"]):
            t0 = now()
            kd_steps(official, run, 1)
            elapsed += now() - t0
            steps += 1
            if elapsed >= budget_seconds:
              done = True
              break
            if elapsed >= next_eval:
              score()
              next_eval = (elapsed // eval_every_seconds + 1) * eval_every_seconds
        if done:
          break
      if done:
        break
      if epoch >= hp["warmup"]:
        run.scheduler.step()
    score()
    run.synthesizer.data_iter = None
  return points


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _random_teacher_state(official, teacher_name: str) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  model = official.registry.get_model(teacher_name, num_classes=10)
  with torch.no_grad():  # Some BatchNorm statistics other than (0, 1), as after training.
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model.state_dict()


def _parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
  pairs = []
  for item in text.split(","):
    teacher_name, sep, student_name = item.partition(":")
    if not sep or not teacher_name or not student_name:
      raise ValueError(f"--pairs={text}: expected TEACHER:STUDENT[,TEACHER:STUDENT...]")
    pairs.append((teacher_name, student_name))
  return tuple(pairs)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.official_fast",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkout", required=True,
                      help="the official Fast-Datafree checkout (the folder that holds "
                           "datafree_kd.py)")
  parser.add_argument("--out", default="", help="write the JSON here (after every case)")
  parser.add_argument("--pairs", default=",".join(f"{t}:{s}" for t, s in PAIRS),
                      help="TEACHER:STUDENT,... (official registry names)")
  parser.add_argument("--g_steps", default="2,5",
                      help="comma-separated synthesis steps per round (Fast-N)")
  parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
  parser.add_argument("--cold_calls", type=int, default=1,
                      help="untimed synthesize() calls first (0: the first round is timed)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed synthesis rounds after the warm-up epochs")
  parser.add_argument("--warmup_repeats", type=int, default=1,
                      help="timed synthesis rounds during the warm-up epochs (no student)")
  parser.add_argument("--kd_repeats", type=int, default=20,
                      help="timed KD steps (20 = one loader epoch on a 20-round bank)")
  parser.add_argument("--bank_rounds", type=int, default=20,
                      help="rounds of images in the bank for the KD steps")
  parser.add_argument("--batch_size", type=int, default=COMMON["batch_size"],
                      help="the KD and synthesis batch (the scripts' 256)")
  parser.add_argument("--parts", default="synthesis,kd",
                      help="what to time: synthesis, kd or both (one short run each)")
  parser.add_argument("--append", action="store_true",
                      help="add the records to those already in --out (same settings)")
  parser.add_argument("--tiny", action="store_true",
                      help="a check: WRN-16-2 -> WRN-16-1 at batch 8, one round of each, "
                           "and a few seconds of the end-to-end run")
  args = parser.parse_args(argv)
  # A time limit's SIGTERM unwinds (the bank's temporary folder is removed; the loader's
  # workers are shut down).
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  checkout = pathlib.Path(args.checkout).expanduser().resolve()
  if not (checkout / "datafree_kd.py").is_file() or not (
      checkout / "datafree/synthesis/fast_meta.py").is_file():
    print(f"error: --checkout={args.checkout}: no datafree_kd.py and "
          "datafree/synthesis/fast_meta.py; pass the official Fast-Datafree checkout",
          file=sys.stderr)
    return 1
  if importlib.util.find_spec("kornia") is None:
    print("error: the official synthesiser needs kornia: pip install kornia", file=sys.stderr)
    return 1
  try:
    pairs = _parse_pairs(args.pairs)
    g_steps_list = [int(g) for g in args.g_steps.split(",")]
  except ValueError as e:
    parser.error(str(e))
  bad = [g for g in g_steps_list if g not in PER_G_STEPS]
  if bad:
    parser.error(f"--g_steps: {bad[0]} has no learning rates in the scripts "
                 f"({', '.join(map(str, PER_G_STEPS))})")
  out = pathlib.Path(args.out) if args.out else None
  overrides = {"batch_size": args.batch_size, "synthesis_batch_size": args.batch_size}
  parts = tuple(args.parts.split(","))
  if not parts or not set(parts) <= {"synthesis", "kd"}:
    parser.error(f"--parts={args.parts}: synthesis, kd or both")
  timing = {"parts": parts, "cold_calls": args.cold_calls, "repeats": args.repeats,
            "warmup_repeats": args.warmup_repeats,
            "kd_repeats": args.kd_repeats, "bank_rounds": args.bank_rounds}
  if args.tiny:
    pairs, g_steps_list = PAIRS[:1], [2]
    overrides = {"batch_size": 8, "synthesis_batch_size": 8, "warmup": 3}
    timing = {"parts": ("synthesis", "kd"), "cold_calls": 1, "repeats": 1, "warmup_repeats": 1,
              "kd_repeats": 2, "bank_rounds": 4}
  result = run_benchmark(checkout, pairs, g_steps_list, args.threads, timing, out, overrides,
                         append=args.append)
  if args.tiny:
    import numpy as np  # pylint: disable=g-import-not-at-top
    official = load_official(checkout)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=16)
    tiny = {"budget_seconds": 6.0, "eval_every_seconds": 2.0, "teacher": PAIRS[0][0],
            "student": PAIRS[0][1], "g_steps": 2,
            "overrides": {"batch_size": 8, "synthesis_batch_size": 8, "warmup": 1,
                          "kd_steps": 5, "ep_steps": 5}}
    points = accuracy_vs_time(checkout, _random_teacher_state(official, PAIRS[0][0]), images,
                              labels, tiny["budget_seconds"], tiny["eval_every_seconds"],
                              teacher=tiny["teacher"], student=tiny["student"],
                              g_steps=tiny["g_steps"], threads=args.threads,
                              **tiny["overrides"])
    result["accuracy_vs_time"] = {**tiny, "test_images": len(images),
                                  "points": [list(p) for p in points]}
    result["load_average_1_5_15min_after"] = list(os.getloadavg())
    if out:
      out.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())

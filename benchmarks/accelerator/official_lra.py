r"""Times the official LRA PyTorch iteration at our shapes, on the device of this process.

  python -m benchmarks.accelerator.official_lra --checkout=PATH/TO/LRA --out=official.json
  python -m benchmarks.accelerator.official_lra --checkout=PATH/TO/LRA --tiny  # CPU check

``--checkout`` is the user's own checkout of the official code (the folder holding
``src/``); it is imported from there, never copied into this repository. One iteration
is the body of the official loop (``src/agents/predfkd_meta_memory.py``,
``PREDFKDMemMetaAgent.train``): ``gen_iter`` = 1 call of ``train_novel_generator`` then
``kd_iter`` = 10 of (``z`` -> generator under ``no_grad`` -> ``distill_knowledge_meta7``),
the official methods called on a stand-in for the agent that holds the official
generator, teacher, student, optimizers and replay memory (the agent's constructor
loads a trained teacher and the test set, which the speed does not depend on). With one
pushed batch of ``batch // 8`` samples in the memory every student step takes the meta
path (``official_meta``, our ``lra_mb``); with the memory empty, the plain KD path
(``official_plain``, the first epochs of the official run, about our ``dfkd``).

Shapes and hyper-parameters as ours: ``configs/mnist.py`` (LeNet-5 -> LeNet-5-half,
latent 100) and ``configs/cifar10.py`` (ResNet-34 -> ResNet-18, latent 1000), 32x32.
cuDNN as the official agent sets it on a GPU (deterministic, no autotuning). Modules
the official code imports only for logging and data loading (``tensorboardX``,
``torchvision``, ``imageio``, ``easydict``, ``skimage``) are replaced by empty stand-ins
when they are not installed, and Pillow 10's missing ``Image.CUBIC`` gets its old
value; ``higher`` must be installed (it is in the wheelhouse).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import pathlib
import statistics
import sys
import time
import types
from typing import Any, Sequence

#: Imported by the official modules at module level, unused by one iteration.
STUBBED = ("tensorboardX", "torchvision", "imageio", "easydict", "skimage")
#: (pair, batch size) in the order they are timed (check.sh's priorities).
CASES = (("resnet34", 64), ("lenet5", 512), ("resnet34", 512))
TINY_CASES = (("lenet5", 8),)
REPO = pathlib.Path(__file__).resolve().parents[2]


class _StubModule(types.ModuleType):
  """A module whose every public attribute is an empty class (importable, subclassable)."""

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Serves :class:`_StubModule` for ``names`` (and their submodules)."""

  def __init__(self, names: Sequence[str]):
    self.names = tuple(names)

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split(".")[0] not in self.names:
      return None
    return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

  def create_module(self, spec):
    return _StubModule(spec.name)

  def exec_module(self, module):
    module.__path__ = []


def stub_missing_modules(names: Sequence[str] = STUBBED) -> list[str]:
  """Installs stand-ins for those of ``names`` that are not installed; returns them."""
  missing = [n for n in names if importlib.util.find_spec(n) is None]
  if missing:
    sys.meta_path.append(_StubFinder(missing))
  return missing


def old_pillow_names() -> list[str]:
  """Pillow 10 removed ``Image.CUBIC`` (the official code's Pillow 9 spelling of BICUBIC)."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  if hasattr(Image, "CUBIC"):
    return []
  Image.CUBIC = Image.BICUBIC
  return ["PIL.Image.CUBIC = PIL.Image.BICUBIC"]


def _our_latent_dims() -> dict[str, int]:
  from dfkd_jax.run import experiment  # pylint: disable=g-import-not-at-top
  return {"lenet5": experiment.load_config_file(str(REPO / "configs/mnist.py")).latent_dim,
          "resnet34": experiment.load_config_file(str(REPO / "configs/cifar10.py")).latent_dim}


def build_agent(pair: str, batch: int, latent_dim: int, kd_iter: int, device):
  """The official models, optimizers and memory on a stand-in for the agent."""
  import torch  # pylint: disable=g-import-not-at-top
  from graphs.models.networks import generator as official_generator  # pylint: disable=g-import-not-at-top
  from graphs.models.networks import lenet as official_lenet  # pylint: disable=g-import-not-at-top
  from graphs.models.networks import resnet as official_resnet  # pylint: disable=g-import-not-at-top
  from graphs.models import resnet as official_teacher_resnet  # pylint: disable=g-import-not-at-top
  from utils import constants  # pylint: disable=g-import-not-at-top
  from utils import replay_memory_DFKD  # pylint: disable=g-import-not-at-top

  dataset = {"lenet5": "MNIST", "resnet34": "cifar10"}[pair]
  # The official JSON configs' keys (src/configs/Ours-1.json), our shapes.
  config = types.SimpleNamespace(
      dataset=dataset, img_size=32, latent_dim=latent_dim, batch_size=batch,
      num_novel_samples=batch, num_mem_samples=batch // 8, memory_capacity=10,
      gen_iter=1, kd_iter=kd_iter, oh=1, ie=5, a=0.1, lr_S=0.1, lr_G=0.02, lr_S_in=0.9)
  if pair == "lenet5":
    teacher, student = official_lenet.LeNet5(), official_lenet.LeNet5Half()
  else:
    teacher = official_teacher_resnet.ResNet34(config)
    student = official_resnet.ResNet18(num_classes=constants.num_classes[dataset],
                                       in_channels=constants.num_channels[dataset])
  agent = types.SimpleNamespace(
      config=config, device=device,
      novel_generator=official_generator.Generator(config, constants.num_channels).to(device),
      teacher=teacher.to(device).eval(), student=student.to(device),
      memory=replay_memory_DFKD.ReplayMemory(config))
  # As in PREDFKDMemMetaAgent.__init__.
  agent.optimizer_S = torch.optim.SGD(agent.student.parameters(), lr=config.lr_S,
                                      momentum=0.9, weight_decay=5e-4)
  agent.optimizer_G = torch.optim.Adam(agent.novel_generator.parameters(), lr=config.lr_G)
  agent.optimizer_S_inner = torch.optim.SGD(agent.student.parameters(), lr=config.lr_S_in,
                                            momentum=0.9, weight_decay=5e-4)
  return agent


def iteration(agent_cls, agent) -> None:
  """The body of the official ``train`` loop for one ``i`` (no logging)."""
  import torch  # pylint: disable=g-import-not-at-top
  c = agent.config
  for _ in range(c.gen_iter):
    agent_cls.train_novel_generator(agent)
  for _ in range(c.kd_iter):
    z = torch.randn(c.num_novel_samples, c.latent_dim, device=agent.device)
    with torch.no_grad():
      gen_imgs = agent.novel_generator(z)
    agent_cls.distill_knowledge_meta7(agent, 0, gen_imgs)


def time_case(agent_cls, agent, repeats: int, sync) -> dict[str, Any]:
  times = []
  for i in range(repeats + 1):  # The first call warms up (cuDNN, allocator).
    sync()
    t0 = time.perf_counter()
    iteration(agent_cls, agent)
    sync()
    if i:
      times.append(time.perf_counter() - t0)
  return {"seconds_per_iteration": statistics.median(times),
          "seconds_per_iteration_all": times}


def run(checkout: pathlib.Path, cases, kd_iter: int, repeats: int,
        out: pathlib.Path | None) -> dict[str, Any]:
  """Times every case; rewrites ``out`` after each, so a time limit keeps what is done."""
  import torch  # pylint: disable=g-import-not-at-top
  stubbed = stub_missing_modules()
  aliases = old_pillow_names()
  sys.path.insert(0, str(checkout / "src"))
  from agents.predfkd_meta_memory import PREDFKDMemMetaAgent  # pylint: disable=g-import-not-at-top
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if cuda:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  latent = _our_latent_dims()
  result = {
      "benchmark": "official_lra", "checkout": str(checkout),
      "torch_version": torch.__version__,
      "device": torch.cuda.get_device_name(0) if cuda else "cpu",
      "cudnn": {"deterministic": torch.backends.cudnn.deterministic,
                "benchmark": torch.backends.cudnn.benchmark,
                "allow_tf32": torch.backends.cudnn.allow_tf32},
      "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
      "stubbed_modules": stubbed, "compatibility_aliases": aliases, "kd_iter": kd_iter,
      "timing": f"median of {repeats} iterations after one warm-up iteration",
      "results": []}
  for pair, batch in cases:
    for method, memory_filled in (("official_meta", True), ("official_plain", False)):
      torch.manual_seed(0)
      agent = build_agent(pair, batch, latent[pair], kd_iter, device)
      if memory_filled:
        with torch.no_grad():
          z = torch.randn(batch, agent.config.latent_dim, device=device)
          agent.memory.push_transition(agent.novel_generator(z)[:batch // 8].detach())
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      print(f"{pair} batch {batch} {method}: timing", file=sys.stderr, flush=True)
      record = {"pair": pair, "batch_size": batch, "method": method,
                "latent_dim": latent[pair], "replay_samples": batch // 8 if memory_filled else 0,
                **time_case(PREDFKDMemMetaAgent, agent, repeats, sync)}
      if cuda:
        record["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
      print(f"  {record['seconds_per_iteration'] * 1e3:.1f} ms/iteration", file=sys.stderr,
            flush=True)
      result["results"].append(record)
      del agent
      if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.accelerator.official_lra",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkout", required=True,
                      help="the official LRA checkout (the folder that holds src/)")
  parser.add_argument("--out", default="", help="write the JSON here (after every case)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cases", default="",
                      help="comma-separated PAIR:BATCH to time instead of the default "
                           f"{','.join(f'{p}:{b}' for p, b in CASES)} (e.g. lenet5:512 on a CPU)")
  parser.add_argument("--tiny", action="store_true",
                      help="LeNet-5 at batch 8, one student step, one timed iteration (a CPU check)")
  args = parser.parse_args(argv)
  checkout = pathlib.Path(args.checkout).expanduser().resolve()
  agent_file = checkout / "src/agents/predfkd_meta_memory.py"
  if not agent_file.is_file():
    print(f"error: --checkout={args.checkout}: no {agent_file.relative_to(checkout)}; "
          "pass the official LRA checkout (the folder that holds src/)", file=sys.stderr)
    return 1
  if importlib.util.find_spec("higher") is None:
    print("error: the official code needs the `higher` package: install it from the "
          "wheelhouse (bash benchmarks/accelerator/install.sh)", file=sys.stderr)
    return 1
  cases, kd_iter, repeats = CASES, 10, args.repeats
  if args.cases:
    try:
      cases = tuple((pair, int(batch)) for pair, batch in
                    (case.split(":") for case in args.cases.split(",")))
    except ValueError:
      parser.error(f"--cases={args.cases}: expected PAIR:BATCH[,PAIR:BATCH...]")
    unknown = sorted({pair for pair, _ in cases} - {pair for pair, _ in CASES})
    if unknown:
      parser.error(f"--cases={args.cases}: unknown pair {unknown[0]!r}; "
                   f"pairs: {', '.join(sorted({p for p, _ in CASES}))}")
  if args.tiny:
    cases, kd_iter, repeats = TINY_CASES, 1, 1
  result = run(checkout, cases, kd_iter, repeats,
               pathlib.Path(args.out) if args.out else None)
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())

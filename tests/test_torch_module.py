"""A PyTorch nn.Module as the teacher, as it is, through torchax (issue 42).

The PyTorch module is written here into a module file on sys.path (convolutions,
BatchNorm, a residual block, a forward with pooling, a skip and a flatten): the adapter
(`dfkd_jax.models.torch_module`) must give PyTorch's logits, input gradients and the
BatchNorm input moments PyTorch hooks see; `convert --torch_module --check_inputs`
writes the teacher; a tiny `dfkd` distillation with `bn_prior > 0` runs on it and
resumes; each error is one line.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchax")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from dfkd_jax.interop import torch_convert
from dfkd_jax.models import teacher as teacher_lib
from dfkd_jax.models import torch_module
from dfkd_jax.parallel import mesh as parallel
from dfkd_jax.run import trainer
from dfkd_jax.run import experiment
from dfkd_jax.run import iteration
from dfkd_jax.run import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
NETS = textwrap.dedent('''
    """The user's PyTorch classifier (written by tests/test_torch_module.py)."""
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Residual(nn.Module):
      def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

      def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


    class Net(nn.Module):
      def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.block = Residual(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.Linear(2 * width * 4 * 4 + width, 32),
                                  nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

      def forward(self, x):
        h = self.block(F.relu(self.bn(self.stem(x))))
        pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
        d = torch.tanh(self.down(h)).flatten(1)
        return self.fc(self.head(torch.cat([d, pooled], 1)))


    def make_net(num_classes=10, width=8):
      return Net(num_classes, width)


    class Airy(Net):
      """An op torchax has no lowering for (torchax 0.0.14.dev20261026)."""

      def forward(self, x):
        return super().forward(torch.special.airy_ai(x))


    class Pair(Net):
      """Returns (logits, features), as some model zoos do."""

      def forward(self, x):
        logits = super().forward(x)
        return logits, x


    NOT_A_MODULE = 3


    def not_a_module(num_classes=10):
      return {"num_classes": num_classes}
    ''')


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory):
  """A directory on sys.path (and PYTHONPATH for subprocesses) holding `tx_user_nets`."""
  root = tmp_path_factory.mktemp("nets")
  (root / "tx_user_nets.py").write_text(NETS)
  sys.path.insert(0, str(root))
  yield root
  sys.path.remove(str(root))


def trained_like(module, seed=0):
  """``module`` with random non-trivial BatchNorm running statistics and affine."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
        m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
  return module.eval()


def pytorch_net(nets_dir, seed=0):
  del nets_dir
  import tx_user_nets  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  return trained_like(tx_user_nets.Net(), seed)


def adapter(net):
  """The TorchTeacher of `tx_user_nets:Net` and the variables of ``net``'s weights."""
  teacher = torch_module.teacher_of({"module": "tx_user_nets:Net", "kwargs": {}})
  return teacher, torch_module.variables_from_state_dict(net.state_dict(), teacher)


def inputs(n=6, seed=1):
  return np.random.RandomState(seed).randn(n, 8, 8, 1).astype(np.float32)


def test_logits_and_input_gradients_equal_pytorchs(nets_dir):
  net = pytorch_net(nets_dir)
  teacher, variables = adapter(net)
  x = inputs()
  w = np.random.RandomState(2).randn(len(x), 10).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    logits = jax.jit(teacher.apply)(variables, jnp.asarray(x))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(teacher.apply(variables, x) * w)))(
        jnp.asarray(x))
  x_t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  ref = net(x_t)
  (ref * torch.tensor(w)).sum().backward()
  ref_grad = x_t.grad.numpy().transpose(0, 2, 3, 1)
  logit_diff = float(np.max(np.abs(np.asarray(logits) - ref.detach().numpy())))
  grad_diff = float(np.max(np.abs(np.asarray(grad) - ref_grad)))
  print(f"max |logit diff| {logit_diff:.3g} (max |logit| "
        f"{float(ref.detach().abs().max()):.3g}); max |input grad diff| {grad_diff:.3g} (max "
        f"|grad| {float(np.abs(ref_grad).max()):.3g})")
  assert logit_diff < 1e-5 and grad_diff < 1e-5


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", [
    (1, 1, 1, 1, True), (2, 1, 1, 1, False), ((2, 1), (0, 2), 1, 1, True),
    (1, 2, 2, 1, False), (1, 1, 1, 2, True), (2, 0, 1, 4, False), (3, 1, 2, 1, True),
])
def test_channels_last_convolution_equals_pytorchs(stride, padding, dilation, groups, bias):
  """The lowering torch_conv installs: F.conv2d's values and its gradients with respect
  to the input and the kernel (the custom input gradient included), for strides,
  paddings, dilations, groups, with and without bias, on odd and even sizes."""
  from dfkd_jax.models import torch_conv  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  x = rng.randn(3, 4, 9, 8).astype(np.float32)
  w = rng.randn(8, 4 // groups, 3, 3).astype(np.float32)
  b = rng.randn(8).astype(np.float32) if bias else None
  x_t, w_t = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
  ref = torch.nn.functional.conv2d(x_t, w_t, None if b is None else torch.tensor(b),
                                   stride, padding, dilation, groups)
  cotangent = rng.randn(*ref.shape).astype(np.float32)
  (ref * torch.tensor(cotangent)).sum().backward()

  def conv(x, w):
    return torch_conv.conv2d_channels_last(x, w, b, stride, padding, dilation, groups)

  with jax.default_matmul_precision("highest"):
    got = conv(jnp.asarray(x), jnp.asarray(w))
    dx, dw = jax.grad(lambda x, w: jnp.sum(conv(x, w) * cotangent), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(got), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx), x_t.grad.numpy(), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dw), w_t.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_a_torchax_teacher_in_a_loop_keeps_xlas_channels_last_convolutions(nets_dir):
  """XLA's CPU compiler leaves an NCHW convolution (dim_labels bf01_...) inside a loop
  body on its slow generic kernel (a WRN-16-2 forward in a 5-step scan was 44x slower);
  the teacher's convolutions, forward and its input gradient's, are NHWC with HWIO
  kernels there too."""
  net = pytorch_net(nets_dir)
  teacher, variables = adapter(net)
  x = jnp.asarray(inputs())

  def scanned(v, x):
    def body(c, _):
      grad = jax.grad(lambda x: teacher.apply(v, x).sum())(x + c)
      return c + grad, None
    return jax.lax.scan(body, jnp.zeros_like(x), None, length=3)[0]

  text = jax.jit(scanned).lower(variables, x).compile().as_text()
  labels = [line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines()
            if " convolution(" in line]
  assert labels and all(label.startswith("b01f_01io") for label in labels), labels


def test_batchnorm_moments_and_penultimate_equal_pytorch_hooks(nets_dir):
  net = pytorch_net(nets_dir)
  teacher, variables = adapter(net)
  x = inputs()
  seen, fc_input = [], []
  hooks = [m.register_forward_pre_hook(
      lambda m, a: seen.append((a[0], m.running_mean, m.running_var)))
           for m in net.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  hooks.append(net.fc.register_forward_pre_hook(lambda m, a: fc_input.append(a[0])))
  with torch.no_grad():
    net(torch.tensor(x.transpose(0, 3, 1, 2)))
  for h in hooks:
    h.remove()
  _, features = jax.jit(lambda v, x: teacher.apply(v, x, features=True))(
      variables, jnp.asarray(x))
  # Forward order: bn, block.bn1, block.bn2, head.1 (BatchNorm1d).
  assert len(features.bn_moments) == len(seen) == 4
  for moments, (h, running_mean, running_var) in zip(features.bn_moments, seen):
    dims = [0] + list(range(2, h.ndim))
    np.testing.assert_allclose(moments.batch_mean, h.mean(dims), atol=1e-5)
    np.testing.assert_allclose(moments.batch_var, h.var(dims, correction=0), atol=1e-5)
    np.testing.assert_allclose(moments.running_mean, running_mean, atol=0)
    np.testing.assert_allclose(moments.running_var, running_var, atol=0)
  np.testing.assert_allclose(features.penultimate, fc_input[0], atol=1e-5)
  assert features.penultimate.shape == (len(x), 32)


SHARDED = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np, torch
    from jax.sharding import NamedSharding, PartitionSpec as P
    from dfkd_jax.models import layers, torch_module
    import tx_user_nets
    assert jax.device_count() == 2, jax.devices()
    torch.manual_seed(0)
    teacher = torch_module.teacher_of({"module": "tx_user_nets:Net", "kwargs": {}})
    variables = torch_module.variables_from_state_dict(tx_user_nets.Net().state_dict(),
                                                       teacher)
    x = np.random.RandomState(0).randn(8, 8, 8, 1).astype(np.float32) * 2 + 1
    mesh = jax.make_mesh((2,), ("data",))

    def local(v, x):
      with layers.batch_stats_axis("data"):
        logits, features = teacher.apply(v, x, features=True)
      return logits, features.bn_moments

    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")),
                                    out_specs=(P("data"), P())))
    logits, moments = sharded(jax.device_put(variables, NamedSharding(mesh, P())),
                              jax.device_put(x, NamedSharding(mesh, P("data"))))
    ref_logits, ref = teacher.apply(variables, x, features=True)
    print("max logit diff", float(jnp.max(jnp.abs(logits - ref_logits))))
    for m, r in zip(moments, ref.bn_moments, strict=True):
      for a, b in zip(m, r):
        np.testing.assert_allclose(a, b, atol=2e-5)
    print("OK", len(moments))
    ''')


def test_batchnorm_moments_over_a_sharded_batch_are_the_global_ones(nets_dir):
  """On a 2-device mesh inside `batch_stats_axis` (as the trainer runs the teacher),
  every device gets the moments of the whole batch, as `models.BatchNorm` gives."""
  env = env_with(nets_dir)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 4" in result.stdout, result.stdout


def test_runs_in_bfloat16_as_the_trainer_casts_it(nets_dir):
  """`config.compute_dtype=bfloat16` casts the teacher's float variables and input."""
  net = pytorch_net(nets_dir)
  teacher, variables = adapter(net)
  cast = jax.tree.map(lambda a: a.astype(jnp.bfloat16)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, variables)
  x = jnp.asarray(inputs())
  logits, features = jax.jit(lambda v, x: teacher.apply(v, x, features=True))(
      cast, x.astype(jnp.bfloat16))
  reference = teacher.apply(variables, x)
  assert logits.dtype == jnp.bfloat16 and len(features.bn_moments) == 4
  np.testing.assert_allclose(logits.astype(jnp.float32), reference, atol=0.05)


# ---------------------------------------------------------------------------
# convert --torch_module, then train on the teacher it wrote.
# ---------------------------------------------------------------------------


def env_with(nets_dir):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(nets_dir), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def run_module(args, env):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def converted(nets_dir, tmp_path_factory):
  """`convert --torch_module --check_inputs` on the command line: (teacher dir, files)."""
  root = tmp_path_factory.mktemp("converted")
  net = pytorch_net(nets_dir, seed=3)
  torch.save({"state_dict": net.state_dict()}, root / "net.pth")
  x = inputs(16, seed=4)
  with torch.no_grad():
    logits = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
  np.savez(root / "check.npz", inputs=x.transpose(0, 3, 1, 2), logits=logits)
  out = root / "teacher"
  result = run_module(
      ["dfkd_jax.convert", "--torch_module=tx_user_nets:make_net",
       f"--torch_checkpoint={root / 'net.pth'}", '--torch_kwargs={"width": 8}',
       "--dataset=digits", f"--check_inputs={root / 'check.npz'}", f"--out={out}"],
      env_with(nets_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "check: max |logit difference|" in result.stdout
  return out, root


def test_convert_writes_a_teacher_that_loads_as_pytorch_gave_it(converted, nets_dir):
  out, root = converted
  meta = json.loads((out / "teacher.json").read_text())
  assert meta["torch"] == {"module": "tx_user_nets:make_net", "kwargs": {"width": 8},
                           "state_dict": "state_dict.pt"}
  assert meta["arch"] == "torch:tx_user_nets:make_net" and meta["dataset"] == "digits"
  assert not (out / "variables").exists()
  teacher, variables, loaded = teacher_lib.load_teacher(out)
  assert loaded.num_classes == 10 and loaded.input_shape == (8, 8, 1)
  check = np.load(root / "check.npz")
  with jax.default_matmul_precision("highest"):
    logits = teacher.apply(variables, jnp.asarray(check["inputs"].transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(logits, check["logits"], atol=1e-5)


def _distill_config(teacher_dir, num_epochs):
  config = experiment.load_config_file(f"{REPO / 'configs/digits.py'}:dfkd")
  config.teacher_dir = str(teacher_dir)
  config.teacher_config = ""
  config.latent_dim = 16
  config.batch_size = 32  # The probe set's 256 = 8 slots of 32.
  config.num_epochs = num_epochs
  config.iterations_per_epoch = 2
  config.student_steps = 1
  config.tensorboard = False
  assert config.generator_loss.bn_prior > 0
  return config


def test_distillation_with_bn_prior_runs_and_resumes(converted, tmp_path):
  """One epoch, then resumed to two, equals two epochs uninterrupted."""
  out, _ = converted
  quiet = lambda s: None
  trainer.run(_distill_config(out, 1), tmp_path / "resumed", log=quiet)
  resumed = trainer.run(_distill_config(out, 2), tmp_path / "resumed", log=quiet,
                        allow_config_change=["num_epochs"])
  reference = trainer.run(_distill_config(out, 2), tmp_path / "reference", log=quiet)
  assert resumed["epochs_completed"] == 2
  assert resumed["test_accuracy"] == reference["test_accuracy"]
  lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  metrics = [json.loads(line) for line in lines]
  assert len(metrics) == 4
  prior = [m[k] for m in metrics for k in m if "bn" in k and k.startswith("generator_")]
  assert prior and all(np.isfinite(p) and p > 0 for p in prior), metrics[0].keys()


# The first iteration of replica k and of the single run of its seed: the same
# computation up to float32 rounding (tests/test_replicas.py measured ~1e-7).
FIRST_ITERATION_RTOL = 1e-5


@pytest.mark.slow  # Three compiles of the digits iteration: minutes on a loaded host.
def test_replicas_on_a_torchax_teacher_equal_single_runs_at_iteration_1(converted):
  """``num_seeds=2`` on the torchax teacher, under both replica loops (``lax.map``, the
  CPU default, and ``jax.vmap``, the accelerators'): replica k's first iteration is
  the single run of seed k's, BatchNorm prior included."""
  from test_trainer import run_iterations  # pylint: disable=g-import-not-at-top
  out, _ = converted
  seeds = (3, 4)
  quiet = lambda s: None  # pylint: disable=unnecessary-lambda-assignment
  single_config = _distill_config(out, 1)
  single_config.seed = seeds[0]
  single = experiment.build(single_config, log=quiet)
  assert isinstance(single.teacher, torch_module.TorchTeacher)
  placed = lambda state: parallel.put(state, single.mesh, train_state.state_specs(  # pylint: disable=unnecessary-lambda-assignment
      state, single.replay))
  step = iteration.make_iteration(single, placed(train_state.init_state(single)))
  expected = []
  for seed in seeds:  # One program, each seed's fresh state (as init_replicas stacks).
    _, metrics = step(placed(train_state.init_state(single, seed)),
                      single.teacher_variables)
    expected.append(jax.device_get(metrics))
  keys = ("generator_loss", "generator_bn_prior", "student_loss", "loss_acq")
  for loop in ("map", "vmap"):
    config = _distill_config(out, 1)
    config.seed, config.num_seeds, config.replica_loop = seeds[0], len(seeds), loop
    setup = experiment.build(config, log=quiet)
    assert setup.map_replicas == (loop == "map") and setup.seeds == seeds
    _, (metrics,) = run_iterations(setup, train_state.init_replicas(setup), 1)
    for k, want in enumerate(expected):
      for key in keys:
        got = np.asarray(metrics[key])[k]
        assert np.all(np.isfinite(got)) and np.all(np.isfinite(want[key])), key
        np.testing.assert_allclose(got, want[key], rtol=FIRST_ITERATION_RTOL,
                                   err_msg=f"{loop} replica {k} {key}")
    assert np.all(np.asarray(metrics["generator_bn_prior"]) > 0)


@pytest.mark.slow  # Three training processes: minutes on a loaded host.
def test_two_processes_on_a_torchax_teacher_match_one_process(converted, nets_dir,
                                                              tmp_path, monkeypatch):
  """tests/test_multihost.py's check on the torchax teacher: two processes (gloo, one
  CPU device each) give the run of one process with two devices; each process imports
  the user's module and reads the teacher's state_dict itself."""
  from test_multihost import Processes, assert_same_run, train_command  # pylint: disable=g-import-not-at-top
  out, _ = converted
  monkeypatch.setenv("PYTHONPATH", env_with(nets_dir)["PYTHONPATH"])
  processes = Processes(tmp_path, tmp_path / "jax_cache")
  try:
    reference = processes.start(train_command(out, tmp_path / "reference"), "reference",
                                devices=2)
    assert processes.wait([reference]) == [0], processes.tail(reference)
    group = processes.start_group(out, tmp_path / "run", "process")
    assert processes.wait(group) == [0, 0], "\n".join(processes.tail(p) for p in group)
  finally:
    processes.kill_all()
  assert "process 1 of 2, 1 local of 2 devices" in group[1].log.read_text()
  assert_same_run(tmp_path / "run", tmp_path / "reference")


def test_convert_checks_images_of_a_folder_preprocessed_as_evaluation_will(
    nets_dir, tmp_path, monkeypatch):
  """docs/own_teacher.md's short way: --dataset=folder:DATA, --mean/--std, and a check
  file of the folder's uint8 test images with the logits PyTorch gave on them."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from test_file_datasets import _write_folder  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("DFKD_JAX_DATA_CACHE", str(tmp_path / "cache"))
  folder = _write_folder(tmp_path / "digits", splits=("test",))
  files = sorted((folder / "test").rglob("*.png"))[:64]
  images = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
  net = pytorch_net(nets_dir, seed=5)
  with torch.no_grad():
    x = (torch.tensor(images, dtype=torch.float32)[:, None] / 255 - 0.5) / 0.5
    logits = net(x).numpy()
  np.savez(tmp_path / "check.npz", images=images, logits=logits)
  torch.save(net.state_dict(), tmp_path / "teacher.pth")
  lines = []
  meta = torch_convert.convert(
      "tx_user_nets:Net", tmp_path / "teacher.pth", tmp_path / "teacher",
      dataset=f"folder:{folder}", mean=(0.5,), std=(0.5,),
      check_inputs=tmp_path / "check.npz", log=lines.append)
  assert meta.input_shape == (8, 8, 1) and meta.mean == (0.5,)
  assert "top-1 agreement 100.00%" in lines[0], lines
  with pytest.raises(ValueError, match="disagrees with --check_inputs"):
    torch_convert.convert(
        "tx_user_nets:Net", tmp_path / "teacher.pth", tmp_path / "wrong",
        dataset=f"folder:{folder}", mean=(0.0,), std=(1.0,),
        check_inputs=tmp_path / "check.npz")
  assert not (tmp_path / "wrong").exists()


# ---------------------------------------------------------------------------
# Errors: one line each.
# ---------------------------------------------------------------------------


def _one_line(message: str) -> str:
  lines = [line for line in message.strip().splitlines() if line.strip()]
  assert len(lines) == 1, message
  return lines[0]


def test_convert_refuses_a_module_that_does_not_import(converted, nets_dir):
  _, root = converted
  result = run_module(
      ["dfkd_jax.convert", "--torch_module=no_such_pkg.nets:Net",
       f"--torch_checkpoint={root / 'net.pth'}", "--dataset=digits",
       f"--out={root / 'never'}"], env_with(nets_dir))
  assert result.returncode != 0
  line = _one_line(result.stderr)
  assert "no_such_pkg" in line and "PYTHONPATH" in line, line
  assert not (root / "never").exists()


@pytest.mark.parametrize("name, expected", [
    ("tx_user_nets:Missing", "has no attribute 'Missing'"),
    ("tx_user_nets:NOT_A_MODULE", "not an nn.Module class or a function"),
    ("tx_user_nets:not_a_module", "returned a dict, not a torch.nn.Module"),
    ("tx_user_nets", "must be package.module:NAME"),
])
def test_bad_module_names_fail_in_one_line(nets_dir, name, expected):
  with pytest.raises(ValueError) as error:
    torch_module.teacher_of({"module": name, "kwargs": {}})
  assert expected in _one_line(str(error.value)), str(error.value)


def test_state_dict_that_does_not_fit_lists_the_keys(nets_dir, tmp_path):
  state = pytorch_net(nets_dir).state_dict()
  state.pop("fc.bias")
  state["extra.weight"] = torch.zeros(3)
  state["stem.weight"] = torch.zeros(8, 3, 3, 3)
  torch.save(state, tmp_path / "bad.pth")
  with pytest.raises(ValueError) as error:
    torch_convert.convert("tx_user_nets:Net", tmp_path / "bad.pth", tmp_path / "t",
                          dataset="digits")
  line = _one_line(str(error.value))
  assert "missing ['fc.bias']" in line and "unexpected ['extra.weight']" in line
  assert "stem.weight: (8, 3, 3, 3) != (8, 1, 3, 3)" in line
  assert not (tmp_path / "t").exists()


def test_an_op_torchax_cannot_lower_is_named_in_one_line(nets_dir, tmp_path):
  torch.save(pytorch_net(nets_dir).state_dict(), tmp_path / "net.pth")
  with pytest.raises(ValueError) as error:
    torch_convert.convert("tx_user_nets:Airy", tmp_path / "net.pth", tmp_path / "t",
                          dataset="digits")
  line = _one_line(str(error.value))
  assert "aten::special_airy_ai has no lowering" in line and "--arch" in line, line
  assert not (tmp_path / "t").exists()


def test_a_forward_returning_a_tuple_is_one_line(nets_dir, tmp_path):
  torch.save(pytorch_net(nets_dir).state_dict(), tmp_path / "net.pth")
  with pytest.raises(ValueError) as error:
    torch_convert.convert("tx_user_nets:Pair", tmp_path / "net.pth", tmp_path / "t",
                          dataset="digits")
  line = _one_line(str(error.value))
  assert "returns a tuple, not one logits tensor" in line, line


def test_bad_torch_kwargs_fail_in_one_line(nets_dir, tmp_path):
  with pytest.raises(ValueError, match="is not JSON"):
    torch_convert.convert("tx_user_nets:Net", tmp_path / "x.pth", tmp_path / "t",
                          dataset="digits", torch_kwargs="{width: 8}")
  with pytest.raises(ValueError) as error:
    torch_module.teacher_of({"module": "tx_user_nets:Net", "kwargs": {"depth": 3}})
  assert "TypeError" in _one_line(str(error.value))


def test_train_refuses_a_teacher_whose_module_no_longer_imports(converted, nets_dir,
                                                               tmp_path):
  """`train` checks at start: without the module on PYTHONPATH, one line naming it."""
  out, _ = converted
  env = env_with(nets_dir)  # Less the user's nets directory.
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in env["PYTHONPATH"].split(os.pathsep) if p != str(nets_dir))
  result = run_module(
      ["dfkd_jax.train", f"--config={REPO / 'configs/digits.py'}:dfkd",
       f"--config.teacher_dir={out}", "--config.teacher_config=",
       f"--workdir={tmp_path / 'run'}", "--config.num_epochs=1",
       "--config.iterations_per_epoch=1"], env)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  line = _one_line(result.stderr.strip().splitlines()[-1])
  assert "tx_user_nets" in line and "PYTHONPATH" in line, result.stderr[-2000:]


def test_train_checks_the_stored_weights_fit(converted, tmp_path):
  out, _ = converted
  copy = tmp_path / "teacher"
  subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
  meta = json.loads((copy / "teacher.json").read_text())
  meta["torch"]["kwargs"] = {"width": 4}  # Weights of width 8.
  (copy / "teacher.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError) as error:
    teacher_lib.load_teacher(copy)
  line = _one_line(str(error.value))
  assert "shape mismatches" in line and "stem.weight: (8, 1, 3, 3) != (4, 1, 3, 3)" in line


def test_train_and_convert_without_torchax_say_how_to_install_it(converted, nets_dir,
                                                                 tmp_path):
  """Simulated absence: a `torchax` package first on PYTHONPATH that fails to import
  (CI installs the real one)."""
  out, root = converted
  shadow = tmp_path / "shadow" / "torchax"
  shadow.mkdir(parents=True)
  (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'torchax'\")\n")
  env = env_with(nets_dir)
  env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
  train = run_module(
      ["dfkd_jax.train", f"--config={REPO / 'configs/digits.py'}:dfkd",
       f"--config.teacher_dir={out}", "--config.teacher_config=",
       f"--workdir={tmp_path / 'run'}"], env)
  convert = run_module(
      ["dfkd_jax.convert", "--torch_module=tx_user_nets:Net",
       f"--torch_checkpoint={root / 'net.pth'}", "--dataset=digits",
       f"--out={tmp_path / 'never'}"], env)
  for result in (train, convert):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = _one_line(result.stderr.strip().splitlines()[-1])
    assert "torchax" in line and torch_module.INSTALL in line, result.stderr[-2000:]


def test_missing_torchax_is_one_line_naming_the_install(monkeypatch):
  """Simulated: torchax made unimportable in this process (it is installed here)."""
  monkeypatch.setitem(sys.modules, "torchax", None)
  with pytest.raises(ModuleNotFoundError) as error:
    torch_module.import_torchax()
  line = _one_line(str(error.value))
  assert "torchax" in line and torch_module.INSTALL in line

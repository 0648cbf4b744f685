"""A PyTorch ``nn.Module`` as a teacher, run through torchax: no Flax port.

:class:`TorchTeacher` is a Flax Linen classifier whose forward pass is the PyTorch
module's, lowered to JAX by torchax (``torchax.interop.JittableModule``), so it is
jittable, differentiable with respect to the input and follows the classifier contract
of ``docs/contracts.md``:

* ``x`` is NHWC (our layout); it is transposed to NCHW for the PyTorch module;
* ``model(x)`` returns the logits; ``model(x, features=True)`` returns ``(logits,
  ClassifierFeatures(penultimate, bn_moments))``: one ``BNMoments`` per
  ``nn.BatchNorm{1,2,3}d`` call in forward order (the batch mean and biased variance of
  its input over all axes but the channels, and its running statistics), captured by
  forward pre-hooks during the traced call, and ``penultimate`` the input of the last
  ``nn.Linear`` called (flattened to ``[N, D]``; the logits if there is none);
* the PyTorch parameters are the Flax ``params`` and its buffers (BatchNorm running
  statistics) the ``batch_stats``, both nested by the ``state_dict`` names (``layer1.0.
  bn1.weight`` -> ``params["torch"]["layer1"]["0"]["bn1"]["weight"]``).

The module always runs in eval mode (a teacher is frozen): ``train=True`` neither uses
batch statistics nor updates the buffers.

The module is named by an import path ``package.module:NAME`` (an ``nn.Module`` class or
a factory returning one) and JSON keyword arguments, so the Flax module is a hashable
dataclass of strings and every process can rebuild it; :func:`build` imports it and
caches the instance.
"""

from __future__ import annotations

import importlib
import os
import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax.math import losses
from dfkd_jax.models import layers
from dfkd_jax.models import torch_conv
from dfkd_jax.models.layers import ClassifierFeatures

#: How to install what this module needs (the ``torch_module`` extra).
INSTALL = 'pip install -e ".[torch_module]"'
#: The collection names of the PyTorch parameters and buffers.
PARAMS, BUFFERS = "torch", "torch"
_SEP = "."


def _import(name: str, what: str):
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise ModuleNotFoundError(
        f"a PyTorch teacher needs {what}, which does not import ({e}): {INSTALL}") from None


def import_torch():
  """``torch``, or a one-line ``ModuleNotFoundError`` saying how to install it."""
  return _import("torch", "torch")


def import_torchax():
  """``torchax``, or a one-line ``ModuleNotFoundError`` saying how to install it."""
  import_torch()
  return _import("torchax", "torchax")


def parse_kwargs(kwargs_json: str | Mapping[str, Any] | None, label: str) -> dict:
  """``--torch_kwargs`` as a dict; a one-line ``ValueError`` if it is not a JSON object."""
  if kwargs_json is None or kwargs_json == "":
    return {}
  if isinstance(kwargs_json, Mapping):
    return dict(kwargs_json)
  try:
    kwargs = json.loads(kwargs_json)
  except json.JSONDecodeError as e:
    raise ValueError(f"{label}={kwargs_json!r} is not JSON ({e.msg}); pass an object, "
                     "e.g. '{\"num_classes\": 10}'") from None
  if not isinstance(kwargs, dict):
    raise ValueError(f"{label}={kwargs_json!r} is a JSON {type(kwargs).__name__}, not "
                     "an object of keyword arguments, e.g. '{\"num_classes\": 10}'")
  return kwargs


def resolve(path: str, label: str = "--torch_module"):
  """The object ``package.module:NAME`` names (an ``nn.Module`` class or a factory).

  Raises:
    ValueError: a malformed path, a module that does not import, a missing attribute,
      or something neither an ``nn.Module`` subclass nor callable; one line each.
  """
  module_name, sep, attr = path.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"{label}={path!r} must be package.module:NAME (an nn.Module "
                     "class or a function returning one)")
  import_torch()
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"{label}={path!r}: module {module_name!r} does not import ({e}); "
                     "put its directory on PYTHONPATH or install its package") from None
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{label}={path!r}: {module_name} has no attribute {attr!r}; "
                       "name the nn.Module class or factory it defines")
    obj = getattr(obj, part)
  if not callable(obj):
    raise ValueError(f"{label}={path!r} is a {type(obj).__name__}, not an nn.Module "
                     "class or a function returning one")
  return obj


def instantiate(path: str, kwargs: Mapping[str, Any],
                label: str = "--torch_module"):
  """``resolve(path)(**kwargs)`` in eval mode, checked to be an ``nn.Module``."""
  torch = import_torch()
  factory = resolve(path, label)
  try:
    module = factory(**kwargs)
  except Exception as e:  # pylint: disable=broad-except; the user's code, one line.
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"{label}={path!r} with kwargs {dict(kwargs)} raised "
                     f"{type(e).__name__}: {first}; fix --torch_kwargs") from None
  if not isinstance(module, torch.nn.Module):
    raise ValueError(f"{label}={path!r} returned a {type(module).__name__}, not a "
                     "torch.nn.Module")
  return module.eval()


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """``{"a.b.c": v}`` -> ``{"a": {"b": {"c": v}}}``."""
  out: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split(_SEP)
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """The inverse of :func:`nest`."""
  out = {}
  for key, value in nested.items():
    name = f"{prefix}{_SEP}{key}" if prefix else key
    if isinstance(value, Mapping):
      out.update(flatten(value, name))
    else:
      out[name] = value
  return out


class _Runner:
  """One PyTorch module, its torchax wrapper and the hooks that capture the features."""

  def __init__(self, module):
    torchax = import_torchax()
    torch = import_torch()
    self.module = module
    self.env = torchax.default_env()
    torch_conv.install(self.env)  # Convolutions on XLA's fast CPU path, in loops too.
    self.jittable = torchax.interop.JittableModule(module, dedup_parameters=False)
    state = module.state_dict()
    self.param_names = [k for k, _ in module.named_parameters() if k in state]
    self.buffer_names = [k for k in state if k not in set(self.param_names)]
    # Non-persistent buffers are not in the state_dict: constants of the module.
    self.constants = {k: v for k, v in self.jittable.buffers.items() if k not in state}
    self._moments = None
    self._linear_input = None
    for m in module.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.register_forward_pre_hook(self._batchnorm_hook)
      elif isinstance(m, torch.nn.Linear):
        m.register_forward_pre_hook(self._linear_hook)

  def _batchnorm_hook(self, bn, args):
    if self._moments is None or bn.running_mean is None:
      return
    x = args[0]
    dims = [0] + list(range(2, x.ndim))
    self._moments.append((x.mean(dims), x.var(dims, correction=0), bn.running_mean,
                          bn.running_var))

  def _linear_hook(self, _, args):
    if self._moments is not None:
      self._linear_input = args[0]

  def initial(self, names) -> dict[str, jax.Array]:
    """The instantiated module's tensors ``names`` as JAX arrays."""
    state = self.module.state_dict()
    return {k: jnp.asarray(state[k].detach().cpu().numpy()) for k in names}

  def __call__(self, params, buffers, x, features: bool):
    """``(logits, moments, penultimate)`` of the module on NCHW ``x`` (JAX arrays)."""
    constants = self.env.t2j_copy(self.constants) if self.constants else {}
    self._moments, self._linear_input = ([] if features else None), None
    try:
      params_t, buffers_t, x_t = self.env.j2t_iso(
          (dict(params), {**dict(buffers), **constants}, x))
      with self.env:
        logits = self.jittable.functional_call("forward", params_t, buffers_t, x_t)
        moments, penultimate = self._moments, self._linear_input
        if penultimate is not None:
          penultimate = penultimate.reshape(penultimate.shape[0], -1)
      return self.env.t2j_iso((logits, moments, penultimate))
    finally:
      self._moments, self._linear_input = None, None


_RUNNERS: dict[tuple[str, str], _Runner] = {}


def runner(path: str, kwargs_json: str, label: str = "torch_module") -> _Runner:
  """The :class:`_Runner` of ``path(**json.loads(kwargs_json))``, built once."""
  key = (path, kwargs_json)
  if key not in _RUNNERS:
    kwargs = parse_kwargs(kwargs_json, label.replace("module", "kwargs"))
    _RUNNERS[key] = _Runner(instantiate(path, kwargs, label))
  return _RUNNERS[key]


def canonical_kwargs(kwargs: Mapping[str, Any]) -> str:
  """The JSON text :class:`TorchTeacher` holds (sorted keys: one cache entry)."""
  return json.dumps(dict(kwargs), sort_keys=True)


class TorchTeacher(nn.Module):
  """A PyTorch classifier as a Flax Linen classifier (see the module docstring).

  Attributes:
    torch_module: ``package.module:NAME``, an ``nn.Module`` class or factory.
    torch_kwargs: JSON object of its keyword arguments (:func:`canonical_kwargs`).
  """

  torch_module: str
  torch_kwargs: str = "{}"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features: bool = False):
    del train  # A teacher runs in eval mode.
    run = runner(self.torch_module, self.torch_kwargs)
    params = self.param(PARAMS, lambda _: nest(run.initial(run.param_names)))
    buffers = self.variable("batch_stats", BUFFERS,
                            lambda: nest(run.initial(run.buffer_names))).value
    x_nchw = jnp.moveaxis(x, -1, 1) if x.ndim == 4 else x
    logits, moments, penultimate = run(flatten(params), flatten(buffers), x_nchw,
                                       features)
    if not isinstance(logits, jax.Array):
      raise ValueError(f"{self.torch_module}'s forward() returns a "
                       f"{type(logits).__name__}, not one logits tensor; wrap the "
                       "module in one whose forward() returns the logits")
    if not features:
      return logits
    bn_moments = tuple(_global_moments(*m) for m in moments)
    if penultimate is None:  # No nn.Linear: the logits stand in for the features.
      penultimate = logits.reshape(logits.shape[0], -1)
    return logits, ClassifierFeatures(penultimate, bn_moments)


def _global_moments(mean, var, running_mean, running_var) -> losses.BNMoments:
  """Float32 moments; inside :func:`layers.batch_stats_axis`, those of the global batch
  (as :class:`dfkd_jax.models.BatchNorm`: the same on every device)."""
  mean, var = mean.astype(jnp.float32), var.astype(jnp.float32)
  axis = layers.current_batch_stats_axis()
  if axis is not None:  # Equal shards: E[x] and E[(x - E[x])^2] of the whole batch.
    global_mean = jax.lax.pmean(mean, axis)
    var = jax.lax.pmean(var + jnp.square(mean - global_mean), axis)
    mean = global_mean
  return losses.BNMoments(mean, var, running_mean, running_var)


def variables_from_state_dict(state_dict: Mapping[str, Any], teacher: TorchTeacher
                              ) -> dict[str, Any]:
  """``{"params", "batch_stats"}`` of ``teacher`` from a checked ``state_dict``."""
  run = runner(teacher.torch_module, teacher.torch_kwargs)
  check_state_dict(state_dict, run.module, teacher.torch_module)
  arrays = {k: jnp.asarray(np.asarray(v.detach().cpu().numpy()))
            for k, v in state_dict.items()}
  return {"params": {PARAMS: nest({k: arrays[k] for k in run.param_names})},
          "batch_stats": ({BUFFERS: nest({k: arrays[k] for k in run.buffer_names})}
                          if run.buffer_names else {})}


def check_state_dict(state_dict: Mapping[str, Any], module, path: str) -> None:
  """Raises a one-line ``ValueError`` listing missing, unexpected and mis-shaped keys."""
  want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
  got = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
  problems = []
  if missing := sorted(set(want) - set(got)):
    problems.append(f"missing {missing}")
  if unexpected := sorted(set(got) - set(want)):
    problems.append(f"unexpected {unexpected}")
  if shapes := [f"{k}: {got[k]} != {want[k]}" for k in sorted(set(want) & set(got))
                if got[k] != want[k]]:
    problems.append(f"shape mismatches (checkpoint != module) {shapes}")
  if problems:
    raise ValueError(f"the state_dict does not fit {path}: " + "; ".join(problems)
                     + "; pass the checkpoint of this module (and its --torch_kwargs)")


def teacher_of(spec: Mapping[str, Any], label: str = "--torch_module") -> TorchTeacher:
  """The :class:`TorchTeacher` of ``{"module": ..., "kwargs": ...}``, its module built
  (so a module that no longer imports or builds fails here, in one line)."""
  import_torchax()
  path = spec.get("module")
  if not isinstance(path, str):
    raise ValueError(f"{label} is {path!r}; it must be package.module:NAME")
  teacher = TorchTeacher(path, canonical_kwargs(spec.get("kwargs") or {}))
  runner(teacher.torch_module, teacher.torch_kwargs, label)
  return teacher


def save_state_dict(state_dict: Mapping[str, Any], path: os.PathLike) -> None:
  """``torch.save`` of the tensors of ``state_dict`` (plain dict, CPU, contiguous)."""
  torch = import_torch()
  torch.save({k: torch.as_tensor(v).detach().cpu().contiguous()
              for k, v in state_dict.items()}, path)


def load_state_dict(path: os.PathLike) -> dict[str, Any]:
  """The state_dict :func:`save_state_dict` wrote (``weights_only=True``).

  Raises:
    FileNotFoundError: no such file (an incomplete teacher).
    ValueError: the file does not read as a state_dict.
  """
  torch = import_torch()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: incomplete teacher; convert it again "
                            "(`python -m dfkd_jax.convert --torch_module=... --overwrite`)")
  try:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except; torch fails many ways.
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"{path} is damaged ({type(e).__name__}: {first}); convert the "
                     "teacher again (`python -m dfkd_jax.convert ... --overwrite`)") from None
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state_dict; "
                     "convert the teacher again")
  return dict(state_dict)


def check_runs(teacher: TorchTeacher, variables, input_shape, num_classes: int,
               label: str, fix: str) -> None:
  """Runs ``teacher`` abstractly (``jax.eval_shape``: traced, not compiled) on a
  ``[2, *input_shape]`` batch with ``features=True``.

  Raises:
    ValueError: in one line, an op torchax cannot lower (named), any other failure of
      the forward, or logits that are not ``[2, num_classes]`` (``fix`` says what to do).
  """
  x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  h, w, c = input_shape
  try:
    logits, _ = jax.eval_shape(lambda v, x: teacher.apply(v, x, features=True),
                               variables, x)
  except Exception as e:  # pylint: disable=broad-except; the user's forward, one line.
    first = (str(e).strip().splitlines() or [""])[0]
    hint = ("; torchax cannot run that op: write that part of forward() with other "
            "ops, or port the network to Flax (convert --arch)"
            if type(e).__name__ == "OperatorNotFound" else "")
    raise ValueError(f"{label} fails on a [2, {c}, {h}, {w}] input through torchax: "
                     f"{type(e).__name__}: {first}{hint}") from None
  if tuple(logits.shape) != (2, num_classes):
    raise ValueError(f"{label} returns {tuple(logits.shape)} on a batch of 2, not "
                     f"logits (2, {num_classes}); {fix}")

"""Your own models: ``package.module:Name`` import paths and the model contract check.

A config field that names a model (``config.student``, ``config.generator``, a teacher's
``arch``, ``convert --arch``, ``train_teacher``'s ``config.model``) also accepts
``package.module:Name``: a Flax Linen ``Module`` subclass, or a factory function that
returns one, found on ``sys.path``. What it must do (``docs/contracts.md``, "Your
models"):

* a **classifier** takes ``num_classes`` (a field of the class, a factory argument) and
  is called as ``model(x, train=False, features=False)`` on normalised NHWC images
  ``[N, H, W, C]``; it returns ``logits [N, num_classes]``, or with ``features=True``
  ``(logits, ClassifierFeatures(penultimate [N, D], bn_moments))`` (the teacher's
  generator losses read them; ``bn_moments`` is what each
  :class:`dfkd_jax.models.layers.BatchNorm` returns, in forward order, ``()`` if none);
  BatchNorm statistics live in the ``batch_stats`` collection;
* a **generator** takes ``latent_dim`` and ``image_shape`` (``(H, W, C)``) and is called
  as ``model(z, train=...)`` on ``z [N, latent_dim]``, returning images ``[N, H, W, C]``
  in the teacher's normalised input space, or in ``(0, 1)`` when the class (or factory)
  has the attribute ``output_range = "unit"`` (the trainer then normalises them).

The kind is read from those names. :func:`describe` checks what can be checked without
shapes (importable, a Linen class or factory, the right kind); :func:`check_classifier`
and :func:`check_generator` run the model abstractly (``jax.eval_shape``: nothing is
compiled or allocated) on dummy inputs of the run's shape, at two batch sizes, in every
mode the trainer calls it in (a classifier: train, eval and ``features=True``). Every
failure is one ``ValueError`` line naming the value, the call and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dfkd_jax.math.losses import BNMoments
from dfkd_jax.models.layers import ClassifierFeatures

DOCS = "docs/contracts.md, 'Your models'"
CLASSIFIER_CONTRACT = ("a classifier takes num_classes and is called as model(x, "
                       "train=..., features=...) -> logits [N, num_classes] (with "
                       "features=True: (logits, ClassifierFeatures))")
GENERATOR_CONTRACT = ("a generator takes latent_dim and image_shape and is called as "
                      "model(z, train=...) -> images [N, H, W, C]")
OUTPUT_RANGES = ("normalized", "unit")


class Declared(NamedTuple):
  """What a user model object declares: how to build it and its traits.

  Attributes:
    build: ``build(num_classes, **options) -> nn.Module``.
    kind: ``"classifier"`` or ``"generator"``.
    options: keyword arguments ``build`` takes besides ``num_classes``.
    output_range: a generator's ``"normalized"`` or ``"unit"`` output.
  """

  build: Callable[..., nn.Module]
  kind: str
  options: tuple[str, ...]
  output_range: str


def is_import_path(name: Any) -> bool:
  """Whether ``name`` has the ``package.module:Name`` form."""
  return isinstance(name, str) and ":" in name


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def load(path: str, field: str) -> Any:
  """The object ``package.module:Name`` names.

  Args:
    path: ``package.module:Name`` (``Name`` may be dotted: ``Outer.Inner``).
    field: what the value is, for errors (``"config.student"``).

  Raises:
    ValueError: the module cannot be imported or lacks the attribute.
  """
  label = f"{field}={path!r}"
  module_name, _, attribute = path.partition(":")
  if not module_name or not attribute:
    raise ValueError(f"{label}: write a model import path as "
                     "'package.module:Name'")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except; any import error is the user's.
    raise ValueError(f"{label}: cannot import module {module_name!r} "
                     f"({_first_line(e)}); put the folder that holds it on PYTHONPATH "
                     "or install its package") from None
  obj = module
  for part in attribute.split("."):
    if not hasattr(obj, part):
      public = sorted(n for n in dir(module)
                      if not n.startswith("_") and callable(getattr(module, n)))[:12]
      raise ValueError(f"{label}: module {module_name!r} has no attribute "
                       f"{attribute!r}; it has: {', '.join(public) or 'nothing public'}")
    obj = getattr(obj, part)
  return obj


def _arguments(obj: Any, label: str) -> tuple[set[str], bool]:
  """The keyword arguments a Linen class or factory takes, and whether it takes ``**``."""
  if isinstance(obj, nn.Module):
    raise ValueError(f"{label} is a Module instance; name its class (or a "
                     "factory function) instead")
  if inspect.isclass(obj):
    if not issubclass(obj, nn.Module):
      raise ValueError(f"{label} is the class {obj.__qualname__}, not a "
                       "flax.linen.Module subclass; pass a Linen module class or a "
                       f"factory function returning one ({DOCS})")
    names = {f.name for f in dataclasses.fields(obj) if f.init} - {"parent", "name"}
    return names, False
  if not callable(obj):
    raise ValueError(f"{label} is an object of type {type(obj).__name__}, not a Linen "
                     "module class or a factory function returning one")
  try:
    parameters = inspect.signature(obj).parameters.values()
  except (TypeError, ValueError):
    parameters = ()
  names = {p.name for p in parameters
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def describe(obj: Any, label: str) -> Declared:
  """How to build the Linen class or factory ``obj`` and what kind of model it is.

  Args:
    obj: a ``flax.linen.Module`` subclass or a function returning an instance.
    label: the value, for errors (``"config.student='pkg.mod:Net'"``).

  Raises:
    ValueError: ``obj`` is neither, or takes neither ``num_classes`` (a classifier) nor
      ``latent_dim`` and ``image_shape`` (a generator), or has a bad ``output_range``.
  """
  names, var_keyword = _arguments(obj, label)
  if {"latent_dim", "image_shape"} <= names:
    kind = "generator"
  elif "num_classes" in names:
    kind = "classifier"
  else:
    raise ValueError(f"{label} takes neither num_classes (a classifier) nor "
                     f"latent_dim and image_shape (a generator); {CLASSIFIER_CONTRACT}; "
                     f"{GENERATOR_CONTRACT} ({DOCS})")
  output_range = getattr(obj, "output_range", "normalized")
  if kind == "generator" and output_range not in OUTPUT_RANGES:
    raise ValueError(f"{label} has output_range={output_range!r}; use one of "
                     f"{', '.join(OUTPUT_RANGES)}")
  takes_classes = "num_classes" in names or var_keyword
  contract = CLASSIFIER_CONTRACT if kind == "classifier" else GENERATOR_CONTRACT

  def build(num_classes: int, **options: Any) -> nn.Module:
    kwargs = {**options, **({"num_classes": num_classes} if takes_classes else {})}
    try:
      module = obj(**kwargs)
    except Exception as e:  # pylint: disable=broad-except; the user's constructor.
      raise ValueError(f"{label}: building it with {sorted(kwargs)} failed "
                       f"({_first_line(e)}); {contract} ({DOCS})") from None
    if not isinstance(module, nn.Module):
      raise ValueError(f"{label} returned a {type(module).__name__}, not a "
                       f"flax.linen.Module ({DOCS})")
    return module

  options = tuple(sorted(names - {"num_classes"}))
  return Declared(build, kind, options,
                  output_range if kind == "generator" else "normalized")


def _abstract(label: str, what: str, contract: str, fn: Callable, *args: Any) -> Any:
  """``jax.eval_shape(fn, *args)``; a failure is one line naming ``label``."""
  try:
    return jax.eval_shape(fn, *args)
  except Exception as e:  # pylint: disable=broad-except; the user's module raised it.
    raise ValueError(f"{label}: {what} failed ({_first_line(e)}); {contract} "
                     f"({DOCS})") from None


def _with_stats(variables: dict[str, Any]) -> dict[str, Any]:
  return {"params": variables.get("params", {}),
          "batch_stats": variables.get("batch_stats", {})}


def _shape(out: Any) -> tuple[int, ...] | str:
  """A shape, or what ``out`` is instead (``a tuple of 2 ((2, 10), (2, 16))``)."""
  if hasattr(out, "shape"):
    return tuple(out.shape)
  if isinstance(out, (tuple, list)):
    return (f"a {type(out).__name__} of {len(out)} "
            f"({', '.join(str(_shape(o)) for o in out)})")
  return type(out).__name__


#: The dummy batch the contract check inits a model on, and another: a model whose output
#: depends on the batch size (a reshape to a fixed batch) fails at the second.
DUMMY_BATCHES = (2, 3)
#: The modes the trainer calls a classifier in, and who calls it so (for the error).
CLASSIFIER_CALLS = ((True, "train mode, as the student's training step calls it"),
                    (False, "eval mode, as the test accuracy, the probe and export call "
                     "it"))


def _dummy(arg: str, batch: int, shape: Sequence[int]) -> str:
  text = f"on a dummy {arg} [{batch}, {', '.join(map(str, shape))}]"
  if batch != DUMMY_BATCHES[0]:
    text += (f" (a second batch size, after {DUMMY_BATCHES[0]}: nothing may depend on "
             "the batch size)")
  return text


def _init(module: nn.Module, label: str, dummy_input, dummy: str, contract: str):
  """``module.init`` (eval mode), abstractly: the variables the calls are checked with."""
  return _with_stats(_abstract(
      label, f"init {dummy}", contract,
      functools.partial(module.init, train=False), jax.random.key(0), dummy_input))


def _call(module: nn.Module, variables, label: str, arg: str, dummy_input, dummy: str,
          contract: str, train: bool) -> Any:
  """``module(arg, train=train)``, abstractly (train mode updates ``batch_stats``)."""

  def call(v, a):
    if train:
      return module.apply(v, a, train=True, mutable=["batch_stats"])[0]
    return module.apply(v, a, train=False)

  return _abstract(label, f"model({arg}, train={train}) {dummy}", contract, call,
                   variables, dummy_input)


def check_classifier(module: nn.Module, label: str, num_classes: int,
                     input_shape: Sequence[int]) -> None:
  """Checks a classifier's contract abstractly on dummy ``[2, H, W, C]`` and ``[3, H, W,
  C]`` inputs: in train mode, in eval mode and with ``features=True``.

  Args:
    module: the built classifier.
    label: the value, for errors (``"config.student='pkg.mod:Net'"``).
    num_classes: the logits it must return.
    input_shape: the run's ``(H, W, C)``.

  Raises:
    ValueError: init or a call fails, or returns the wrong shape or type; the line names
      the call, its mode and the dummy batch.
  """
  first = DUMMY_BATCHES[0]
  variables = _init(module, label,
                    jax.ShapeDtypeStruct((first, *input_shape), jnp.float32),
                    _dummy("input", first, input_shape), CLASSIFIER_CONTRACT)
  for batch in DUMMY_BATCHES:
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    dummy = _dummy("input", batch, input_shape)
    for train, mode in CLASSIFIER_CALLS:
      logits = _call(module, variables, label, "x", x, dummy, CLASSIFIER_CONTRACT, train)
      if _shape(logits) != (batch, num_classes):
        raise ValueError(
            f"{label}: model(x, train={train}) {dummy} returned {_shape(logits)}, not "
            f"logits ({batch}, {num_classes}) = (batch, num_classes) in {mode}; "
            f"{CLASSIFIER_CONTRACT} ({DOCS})")
    _check_features(module, variables, label, num_classes, x, dummy)


def _check_features(module: nn.Module, variables, label: str, num_classes: int, x,
                    dummy: str) -> None:
  """``model(x, train=False, features=True)`` returns logits and ClassifierFeatures."""
  out = _abstract(label, f"model(x, features=True) {dummy}", CLASSIFIER_CONTRACT,
                  lambda v, x: module.apply(v, x, train=False, features=True),
                  variables, x)
  batch = x.shape[0]
  ok = (isinstance(out, tuple) and len(out) == 2
        and _shape(out[0]) == (batch, num_classes)
        and isinstance(out[1], ClassifierFeatures)
        and len(_shape(out[1].penultimate)) == 2
        and _shape(out[1].penultimate)[0] == batch
        and all(isinstance(m, BNMoments) for m in out[1].bn_moments))
  if not ok:
    raise ValueError(f"{label}: model(x, features=True) must return (logits [N, "
                     f"{num_classes}], dfkd_jax.models.ClassifierFeatures(penultimate "
                     "[N, D], bn_moments=tuple of what each dfkd_jax.models.BatchNorm "
                     f"returns)) {dummy}; the generator losses read them ({DOCS})")


def check_generator(module: nn.Module, label: str, latent_dim: int,
                    image_shape: Sequence[int]) -> None:
  """Checks a generator's contract abstractly on dummy ``z [2, latent_dim]`` and ``z [3,
  latent_dim]``, in train mode (the mode the trainer samples in).

  Args:
    module: the built generator.
    label: the value, for errors.
    latent_dim: the width of ``z``.
    image_shape: the ``(H, W, C)`` images it must return.

  Raises:
    ValueError: init or the call fails, or returns the wrong shape.
  """
  first = DUMMY_BATCHES[0]
  variables = _init(module, label,
                    jax.ShapeDtypeStruct((first, latent_dim), jnp.float32),
                    _dummy("z", first, (latent_dim,)), GENERATOR_CONTRACT)
  for batch in DUMMY_BATCHES:
    z = jax.ShapeDtypeStruct((batch, latent_dim), jnp.float32)
    dummy = _dummy("z", batch, (latent_dim,))
    images = _call(module, variables, label, "z", z, dummy, GENERATOR_CONTRACT, True)
    want = (batch, *image_shape)
    if _shape(images) != want:
      raise ValueError(f"{label}: model(z, train=True) {dummy} returned "
                       f"{_shape(images)}, not images {want}; {GENERATOR_CONTRACT} "
                       f"({DOCS})")

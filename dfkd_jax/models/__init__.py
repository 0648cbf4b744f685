"""The model zoo: classifiers, generators and the VAE of adversarial DFKD.

All models are Flax Linen modules on NHWC arrays; see ``docs/contracts.md`` for the call
conventions. Build them by name::

  from dfkd_jax import models
  teacher = models.get("resnet34", num_classes=10)
  generator = models.get("dafl_generator", latent_dim=256, image_shape=(32, 32, 3))

Classifier names fix the input resolution (``resnet34`` is the 32x32 CIFAR network,
``resnet34_64`` the 64x64 Tiny-ImageNet one), so a teacher checkpoint's ``arch`` alone
says how to rebuild it. :func:`input_shape` gives a classifier's expected ``(H, W, C)``.

Your own models plug in without registering: every name also accepts
``package.module:Name``, a Flax Linen module class or factory on ``sys.path``
(:mod:`dfkd_jax.models.user`); :func:`register` names one from Python. Either way
:func:`get` checks the model's contract on a dummy input before it is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn

from dfkd_jax.core import registry
from dfkd_jax.models import user
from dfkd_jax.models.digits import DigitsCNN
from dfkd_jax.models.generators import (DAFLGenerator, FastGenerator, MADGenerator,
                                        MAD_IMAGE_SIZES, NoisyLayerGenerator)
from dfkd_jax.models.layers import BatchNorm, ClassifierFeatures
from dfkd_jax.models.lenet import LeNet5
from dfkd_jax.models.resnet import ResNet
from dfkd_jax.models.vae import VAE
from dfkd_jax.models.wrn import WideResNet

__all__ = ["BatchNorm", "ClassifierFeatures", "DAFLGenerator", "DigitsCNN", "FastGenerator",
           "LeNet5",
           "MADGenerator", "MODELS", "ModelEntry", "NoisyLayerGenerator", "ResNet", "VAE",
           "WideResNet", "get",
           "input_shape",
           "can_be_conditional", "is_classifier", "names", "options", "output_range",
           "register", "resolve"]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """How to build one registered model, and its traits.

  Attributes:
    build: ``build(num_classes, **kwargs) -> nn.Module``.
    kind: ``"classifier"``, ``"generator"`` or ``"vae"``.
    input_shape: a classifier's expected ``(H, W, C)`` (``C`` may be ``None`` = any).
    options: the keyword arguments ``build`` accepts besides ``num_classes``.
    output_range: a generator's output: ``"normalized"`` (an affine-free BatchNorm puts
      it in the teacher's normalised input space) or ``"unit"`` (a sigmoid image in
      ``(0, 1)``, normalised by the trainer with the teacher's mean/std; such a
      generator also returns its pre-sigmoid output with ``return_logits=True``).
    conditional: a generator that can be class-conditional, ``G(z + e_y)`` (MAD
      Sec. 3.2), called as ``G(z, y)``.
    check_contract: a model from outside the zoo (an import path, :func:`register`):
      :func:`get` checks its contract on a dummy input of the requested shape.
    class_coded: a generator whose input is class codes with noisy-layer one-hots
      (NAYER), built by a fast method's round, not drawn ``z``; its ``code_dim`` and
      ``num_layers`` are set by the trainer.
  """

  build: Callable[..., nn.Module]
  kind: str
  input_shape: tuple[int, int, int | None] | None = None
  options: tuple[str, ...] = ()
  output_range: str = "normalized"
  conditional: bool = False
  check_contract: bool = False
  class_coded: bool = False


_GENERATOR_OPTIONS = ("latent_dim", "image_shape")


def _image_shape(name: str, image_shape: Sequence[int], divisor: int,
                 sizes: Sequence[int] = ()) -> tuple[int, int, int]:
  """Checks a generator's ``image_shape`` and returns it as a tuple of ints."""
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"{name!r}: image_shape must be (H, W, C) with positive sizes, got "
                     f"{tuple(image_shape)}")
  h, w, _ = shape
  if sizes and (h != w or h not in sizes):
    raise ValueError(f"{name!r}: image_shape {shape} not supported; valid sizes: square "
                     f"{', '.join(map(str, sizes))}")
  if h % divisor or w % divisor:
    raise ValueError(f"{name!r}: image_shape {shape} needs H and W divisible by "
                     f"{divisor}")
  return shape


def _dafl_generator(num_classes: int, latent_dim: int = 1000,
                    image_shape: Sequence[int] = (32, 32, 3),
                    spectral_norm: bool = True, base_width: int = 64) -> nn.Module:
  del num_classes
  return DAFLGenerator(latent_dim, _image_shape("dafl_generator", image_shape, 4),
                       base_width=base_width, bn_epsilon=0.8, spectral_norm=spectral_norm,
                       lra_init=True)


def _dfad_generator(num_classes: int, latent_dim: int = 256,
                    image_shape: Sequence[int] = (32, 32, 3), base_width: int = 64
                    ) -> nn.Module:
  del num_classes
  return DAFLGenerator(latent_dim, _image_shape("dfad_generator", image_shape, 4),
                       base_width=base_width, bn_epsilon=1e-5, spectral_norm=False,
                       lra_init=False)


def _mad_generator(num_classes: int, latent_dim: int = 256,
                   image_shape: Sequence[int] = (32, 32, 3)) -> nn.Module:
  return MADGenerator(num_classes, latent_dim,
                      _image_shape("mad_generator", image_shape, 1, MAD_IMAGE_SIZES))


def _fast_generator(num_classes: int, latent_dim: int = 256,
                    image_shape: Sequence[int] = (32, 32, 3), base_width: int = 64
                    ) -> nn.Module:
  del num_classes
  return FastGenerator(latent_dim, _image_shape("fast_generator", image_shape, 4),
                       base_width=base_width)


def _nayer_generator(num_classes: int, latent_dim: int = 1000,
                     image_shape: Sequence[int] = (32, 32, 3), base_width: int = 64,
                     code_dim: int = 10, num_layers: int = 1) -> nn.Module:
  del num_classes
  return NoisyLayerGenerator(latent_dim, code_dim, num_layers,
                             _image_shape("nayer_generator", image_shape, 4),
                             base_width=base_width)


def _vae(num_classes: int, latent_dim: int = 100,
         image_shape: Sequence[int] = (32, 32, 3)) -> nn.Module:
  del num_classes
  return VAE(latent_dim, _image_shape("vae", image_shape, 8))


#: The models (``config.student``, ``config.generator``, a teacher's ``model``). A user
#: model plugs in with :func:`register`, or by its import path without registering.
MODELS: registry.Registry[ModelEntry] = registry.Registry(
    "model", valid="valid names", sort_names=True, unknown="Unknown model")
for _name, _model in {
    "resnet18": ModelEntry(lambda num_classes: ResNet(num_classes, 18, 32), "classifier",
                       (32, 32, None)),
    "resnet34": ModelEntry(lambda num_classes: ResNet(num_classes, 34, 32), "classifier",
                       (32, 32, None)),
    "resnet18_64": ModelEntry(lambda num_classes: ResNet(num_classes, 18, 64),
                          "classifier", (64, 64, None)),
    "resnet34_64": ModelEntry(lambda num_classes: ResNet(num_classes, 34, 64),
                          "classifier", (64, 64, None)),
    "wrn16_1": ModelEntry(lambda num_classes: WideResNet(num_classes, 16, 1), "classifier",
                      (32, 32, None)),
    "wrn16_2": ModelEntry(lambda num_classes: WideResNet(num_classes, 16, 2), "classifier",
                      (32, 32, None)),
    "wrn40_1": ModelEntry(lambda num_classes: WideResNet(num_classes, 40, 1), "classifier",
                      (32, 32, None)),
    "wrn40_2": ModelEntry(lambda num_classes: WideResNet(num_classes, 40, 2), "classifier",
                      (32, 32, None)),
    "lenet5": ModelEntry(lambda num_classes: LeNet5(num_classes, 1), "classifier",
                     (32, 32, 1)),
    "lenet5_half": ModelEntry(lambda num_classes: LeNet5(num_classes, 2), "classifier",
                          (32, 32, 1)),
    "lenet5_bn": ModelEntry(lambda num_classes: LeNet5(num_classes, 1, batch_norm=True),
                        "classifier", (32, 32, 1)),
    "digits_cnn": ModelEntry(lambda num_classes: DigitsCNN(num_classes, (32, 32, 64)),
                         "classifier", (8, 8, 1)),
    "digits_cnn_half": ModelEntry(lambda num_classes: DigitsCNN(num_classes, (16, 16, 32)),
                              "classifier", (8, 8, 1)),
    "dafl_generator": ModelEntry(_dafl_generator, "generator",
                             options=_GENERATOR_OPTIONS + ("spectral_norm", "base_width")),
    "dfad_generator": ModelEntry(_dfad_generator, "generator",
                             options=_GENERATOR_OPTIONS + ("base_width",)),
    "mad_generator": ModelEntry(_mad_generator, "generator", options=_GENERATOR_OPTIONS,
                            output_range="unit", conditional=True),
    "fast_generator": ModelEntry(_fast_generator, "generator",
                                 options=_GENERATOR_OPTIONS + ("base_width",),
                                 output_range="unit"),
    # code_dim and num_layers are set by the trainer (the class codes, the batch).
    "nayer_generator": ModelEntry(_nayer_generator, "generator",
                                  options=_GENERATOR_OPTIONS + ("base_width", "code_dim",
                                                                "num_layers"),
                                  output_range="unit", class_coded=True),
    "vae": ModelEntry(_vae, "vae", options=_GENERATOR_OPTIONS),
}.items():
  MODELS.register(_name, _model)
del _name, _model


_PLURAL = {"classifier": "classifiers", "generator": "generators", "vae": "VAEs"}


def names(kind: str | None = None) -> tuple[str, ...]:
  """The registered model names (of ``kind`` only, if given), sorted."""
  return tuple(n for n in MODELS.names() if kind is None or MODELS.get(n).kind == kind)


def register(name: str, model: Any, *,
             input_shape: Sequence[int | None] | None = None) -> ModelEntry:
  """Registers your own Flax model under ``name``, as the zoo's models are.

  The same contract as a ``package.module:Name`` import path (``docs/contracts.md``,
  "Your models"); the kind is read from what ``model`` takes::

    models.register("my_net", MyNet)  # class MyNet(nn.Module): num_classes: int ...
    student = models.get("my_net", num_classes=10, input_shape=(32, 32, 3))

  Args:
    name: the new name (a config's ``student``/``generator``, a teacher's ``arch``);
      a name in a teacher's metadata resolves only where this call has run, so for
      files an import path is the portable name.
    model: a ``flax.linen.Module`` subclass, or a factory function returning one. A
      classifier takes ``num_classes``; a generator ``latent_dim`` and ``image_shape``
      (and an ``output_range = "unit"`` attribute if its images are in ``(0, 1)``).
    input_shape: a classifier's fixed ``(H, W, C)`` (``C`` may be ``None``); default:
      any input, the data's.

  Returns:
    The registered :class:`ModelEntry`.

  Raises:
    ValueError: ``name`` is taken or not a plain name, or ``model`` breaks the
      contract, in one line naming the fix.
  """
  if not isinstance(name, str) or not name or user.is_import_path(name):
    raise ValueError(f"model name {name!r}: use a plain name without ':' (import paths "
                     "need no registering)")
  what = getattr(model, "__qualname__", type(model).__name__)
  return MODELS.register(name, _user_entry(model, f"models.register({name!r}, {what})",
                                           input_shape))


def _user_entry(model: Any, label: str,
                input_shape: Sequence[int | None] | None = None) -> ModelEntry:
  """The entry of a user's Linen class or factory (:func:`user.describe` checks it)."""
  declared = user.describe(model, label)
  if input_shape is not None:
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
      raise ValueError(f"{label}: input_shape must be (H, W, C), got {input_shape}")
  return ModelEntry(declared.build, declared.kind, input_shape, declared.options,
                    declared.output_range, check_contract=True)


def resolve(name: str, kind: str | None = None, label: str = "model") -> ModelEntry:
  """The entry of a registered name or a ``package.module:Name`` import path.

  Args:
    name: a registered name or an import path (imported here).
    kind: the kind the value must be (``"classifier"``, ``"generator"``); any if None.
    label: what the value is, for errors (``"config.student"``).

  Returns:
    The :class:`ModelEntry`.

  Raises:
    ValueError: unknown name, a model of another kind or an import path that breaks
      the contract, in one line listing the valid names of ``kind``.
  """
  if user.is_import_path(name):
    entry = _user_entry(user.load(name, label), f"{label}={name!r}")
  elif name in MODELS:
    entry = MODELS.get(name)
  else:
    entry = None
  if entry is None or (kind is not None and entry.kind != kind):
    what = (f"is not a registered {kind or 'model'}" if entry is None else
            f"is a {entry.kind}, not a {kind}")
    module, _, attribute = str(name).rpartition(".")
    hint = (f" (did you mean '{module}:{attribute}'?)" if entry is None and module
            and not user.is_import_path(name) else "")
    raise ValueError(f"{label}={name!r} {what}; {_PLURAL.get(kind, 'models')}: "
                     f"{', '.join(names(kind))}; or your own Flax module as "
                     f"'package.module:Name'{hint} ({user.DOCS})")
  return entry


def options(name: str) -> tuple[str, ...]:
  """The keyword options :func:`get` accepts for ``name`` besides ``num_classes``."""
  return resolve(name).options


def output_range(name: str) -> str:
  """A generator's output range: ``"normalized"`` or ``"unit"`` (see :class:`ModelEntry`)."""
  return resolve(name).output_range


def can_be_conditional(name: str) -> bool:
  """Whether the generator ``name`` can be class-conditional (``G(z, y)``)."""
  return resolve(name).conditional


def is_classifier(name: str) -> bool:
  """Whether ``name`` is a classifier (``ValueError`` if unknown)."""
  return resolve(name).kind == "classifier"


def input_shape(name: str, channels: int | None = None,
                data_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
  """The ``(H, W, C)`` input a classifier expects.

  Args:
    name: classifier name or import path.
    channels: for classifiers that accept any channel count (ResNets, WRNs), the channel
      count to report; defaults to 3 (or ``data_shape``'s).
    data_shape: the data's ``(H, W, C)``, the input of a classifier that takes any
      size (your own, unless registered with an ``input_shape``).

  Returns:
    ``(H, W, C)``.

  Raises:
    ValueError: unknown name, a generator/VAE name, or a channel count the classifier
      cannot take.
  """
  entry = resolve(name, "classifier")
  if entry.input_shape is None:
    if data_shape is None:
      raise ValueError(f"{name!r} takes inputs of any size: give the data's shape")
    h, w, c = tuple(int(d) for d in data_shape)
    return (h, w, c if channels is None else channels)
  h, w, c = entry.input_shape
  if c is None:
    return (h, w, 3 if channels is None else channels)
  if channels is not None and channels != c:
    raise ValueError(f"{name!r} takes {c}-channel input, not channels={channels}")
  return (h, w, c)


def _check_classifier_shape(name: str, shape: Sequence[int]) -> None:
  expected = resolve(name).input_shape
  shape = tuple(shape)
  if len(shape) != 3:
    raise ValueError(f"{name!r}: input_shape must be (H, W, C), got {shape}")
  if expected is None:
    return
  ok = len(shape) == 3 and shape[:2] == expected[:2] and (
      expected[2] is None or shape[2] == expected[2])
  if not ok:
    matching = [n for n in names("classifier")
                if (MODELS.get(n).input_shape or (None, None))[:2] == shape[:2]]
    raise ValueError(
        f"{name!r} takes input_shape {expected} (None = any channels), not {shape}; "
        f"classifiers for this resolution: {', '.join(matching) or 'none'}")


def get(name: str, *, num_classes: int = 10, label: str = "model",
        **kwargs: Any) -> nn.Module:
  """Builds the model ``name``.

  Args:
    name: one of :func:`names`, or a ``package.module:Name`` import path.
    num_classes: classifier outputs (class-conditional generators: embedding rows;
      ignored by the other generators and the VAE).
    label: what ``name`` is, for errors (``"config.student"``).
    **kwargs: model options. Classifiers accept ``input_shape=(H, W, C)``, checked
      against the architecture. Generators take ``latent_dim`` and
      ``image_shape=(H, W, C)`` (and model-specific flags, see the classes).

  Returns:
    An unbound ``flax.linen.Module``. One from outside the zoo has passed its contract
    check (:mod:`dfkd_jax.models.user`) on a dummy input of that shape (a classifier:
    when ``input_shape`` is given).

  Raises:
    ValueError: unknown name, unknown option, an impossible shape or a broken contract,
      with the valid choices or the fix in the message.
  """
  entry = resolve(name, label=label)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  shape = None
  if entry.kind == "classifier":
    shape = kwargs.pop("input_shape", None)
    if shape is not None:
      _check_classifier_shape(name, shape)
  unknown = sorted(set(kwargs) - set(entry.options))
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for model {name!r}; valid options: "
                     f"{', '.join(('num_classes',) + entry.options)}"
                     + (", input_shape" if entry.kind == "classifier" else ""))
  module = entry.build(num_classes, **kwargs)
  if entry.check_contract:
    _check_contract(module, entry.kind, f"{label}={name!r}", num_classes, shape, kwargs)
  return module


def _check_contract(module: nn.Module, kind: str, label: str, num_classes: int,
                    shape: Sequence[int] | None, kwargs: dict[str, Any]) -> None:
  """:mod:`dfkd_jax.models.user`'s check of a model from outside the zoo."""
  if kind == "classifier":
    if shape is not None:
      user.check_classifier(module, label, num_classes, shape)
    return
  latent_dim = kwargs.get("latent_dim", getattr(module, "latent_dim", None))
  image_shape = kwargs.get("image_shape", getattr(module, "image_shape", None))
  if latent_dim is not None and image_shape is not None:
    user.check_generator(module, label, int(latent_dim), tuple(image_shape))

"""The model zoo: classifiers, generators and the VAE of adversarial DFKD.

All models are Flax Linen modules on NHWC arrays; see ``docs/contracts.md`` for the call
conventions. Build them by name::

  from dfkd_jax import models
  teacher = models.get("resnet34", num_classes=10)
  generator = models.get("dafl_generator", latent_dim=256, image_shape=(32, 32, 3))

Classifier names fix the input resolution (``resnet34`` is the 32x32 CIFAR network,
``resnet34_64`` the 64x64 Tiny-ImageNet one), so a teacher checkpoint's ``arch`` alone
says how to rebuild it. :func:`input_shape` gives a classifier's expected ``(H, W, C)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn

from dfkd_jax import registry
from dfkd_jax.models.digits import DigitsCNN
from dfkd_jax.models.generators import DAFLGenerator, MADGenerator, MAD_IMAGE_SIZES
from dfkd_jax.models.layers import BatchNorm, ClassifierFeatures
from dfkd_jax.models.lenet import LeNet5
from dfkd_jax.models.resnet import ResNet
from dfkd_jax.models.vae import VAE
from dfkd_jax.models.wrn import WideResNet

__all__ = ["BatchNorm", "ClassifierFeatures", "DAFLGenerator", "DigitsCNN", "LeNet5",
           "MADGenerator", "MODELS", "ModelEntry", "ResNet", "VAE", "WideResNet", "get",
           "input_shape",
           "can_be_conditional", "is_classifier", "names", "options", "output_range"]


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
  """

  build: Callable[..., nn.Module]
  kind: str
  input_shape: tuple[int, int, int | None] | None = None
  options: tuple[str, ...] = ()
  output_range: str = "normalized"
  conditional: bool = False


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


def _vae(num_classes: int, latent_dim: int = 100,
         image_shape: Sequence[int] = (32, 32, 3)) -> nn.Module:
  del num_classes
  return VAE(latent_dim, _image_shape("vae", image_shape, 8))


#: The models (``config.student``, ``config.generator``, a teacher's ``model``). A user
#: model plugs in with ``MODELS.register("my_net", ModelEntry(build, "classifier",
#: (H, W, C)))``.
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
    "vae": ModelEntry(_vae, "vae", options=_GENERATOR_OPTIONS),
}.items():
  MODELS.register(_name, _model)
del _name, _model


def names() -> tuple[str, ...]:
  """All registered model names, sorted."""
  return MODELS.names()


def options(name: str) -> tuple[str, ...]:
  """The keyword options :func:`get` accepts for ``name`` besides ``num_classes``."""
  return MODELS.get(name).options


def output_range(name: str) -> str:
  """A generator's output range: ``"normalized"`` or ``"unit"`` (see :class:`ModelEntry`)."""
  return MODELS.get(name).output_range


def can_be_conditional(name: str) -> bool:
  """Whether the generator ``name`` can be class-conditional (``G(z, y)``)."""
  return MODELS.get(name).conditional


def is_classifier(name: str) -> bool:
  """Whether ``name`` is a registered classifier (``ValueError`` if unknown)."""
  return MODELS.get(name).kind == "classifier"


def input_shape(name: str, channels: int | None = None) -> tuple[int, int, int]:
  """The ``(H, W, C)`` input a registered classifier expects.

  Args:
    name: classifier name.
    channels: for classifiers that accept any channel count (ResNets, WRNs), the channel
      count to report; defaults to 3.

  Returns:
    ``(H, W, C)``.

  Raises:
    ValueError: unknown name, a generator/VAE name, or a channel count the classifier
      cannot take.
  """
  entry = MODELS.get(name)
  if entry.kind != "classifier":
    classifiers = [n for n in names() if MODELS.get(n).kind == "classifier"]
    raise ValueError(f"{name!r} is a {entry.kind}, not a classifier; classifiers: "
                     f"{', '.join(classifiers)}")
  h, w, c = entry.input_shape
  if c is None:
    return (h, w, 3 if channels is None else channels)
  if channels is not None and channels != c:
    raise ValueError(f"{name!r} takes {c}-channel input, not channels={channels}")
  return (h, w, c)


def _check_classifier_shape(name: str, shape: Sequence[int]) -> None:
  expected = MODELS.get(name).input_shape
  shape = tuple(shape)
  ok = len(shape) == 3 and shape[:2] == expected[:2] and (
      expected[2] is None or shape[2] == expected[2])
  if not ok:
    matching = [n for n in names() if MODELS.get(n).kind == "classifier" and
                len(shape) == 3 and MODELS.get(n).input_shape[:2] == shape[:2]]
    raise ValueError(
        f"{name!r} takes input_shape {expected} (None = any channels), not {shape}; "
        f"classifiers for this resolution: {', '.join(matching) or 'none'}")


def get(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
  """Builds the registered model ``name``.

  Args:
    name: one of :func:`names`.
    num_classes: classifier outputs (class-conditional generators: embedding rows;
      ignored by the other generators and the VAE).
    **kwargs: model options. Classifiers accept ``input_shape=(H, W, C)``, checked
      against the architecture. Generators take ``latent_dim`` and
      ``image_shape=(H, W, C)`` (and model-specific flags, see the classes).

  Returns:
    An unbound ``flax.linen.Module``.

  Raises:
    ValueError: unknown name, unknown option, or an impossible shape, with the valid
      choices in the message.
  """
  entry = MODELS.get(name)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if entry.kind == "classifier":
    shape = kwargs.pop("input_shape", None)
    if shape is not None:
      _check_classifier_shape(name, shape)
  unknown = sorted(set(kwargs) - set(entry.options))
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for model {name!r}; valid options: "
                     f"{', '.join(('num_classes',) + entry.options)}"
                     + (", input_shape" if entry.kind == "classifier" else ""))
  return entry.build(num_classes, **kwargs)

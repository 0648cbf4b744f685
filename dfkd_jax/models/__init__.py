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

from dfkd_jax.models.digits import DigitsCNN
from dfkd_jax.models.layers import BatchNorm, ClassifierFeatures
from dfkd_jax.models.lenet import LeNet5
from dfkd_jax.models.resnet import ResNet
from dfkd_jax.models.wrn import WideResNet

__all__ = ["BatchNorm", "ClassifierFeatures", "get", "input_shape", "is_classifier",
           "names"]


@dataclasses.dataclass(frozen=True)
class _Entry:
  """How to build one registered model.

  Attributes:
    build: ``build(num_classes, **kwargs) -> nn.Module``.
    kind: ``"classifier"``, ``"generator"`` or ``"vae"``.
    input_shape: a classifier's expected ``(H, W, C)`` (``C`` may be ``None`` = any).
    options: the keyword arguments ``build`` accepts besides ``num_classes``.
  """

  build: Callable[..., nn.Module]
  kind: str
  input_shape: tuple[int, int, int | None] | None = None
  options: tuple[str, ...] = ()


_REGISTRY: dict[str, _Entry] = {
    "resnet18": _Entry(lambda num_classes: ResNet(num_classes, 18, 32), "classifier",
                       (32, 32, None)),
    "resnet34": _Entry(lambda num_classes: ResNet(num_classes, 34, 32), "classifier",
                       (32, 32, None)),
    "resnet18_64": _Entry(lambda num_classes: ResNet(num_classes, 18, 64),
                          "classifier", (64, 64, None)),
    "resnet34_64": _Entry(lambda num_classes: ResNet(num_classes, 34, 64),
                          "classifier", (64, 64, None)),
    "wrn16_1": _Entry(lambda num_classes: WideResNet(num_classes, 16, 1), "classifier",
                      (32, 32, None)),
    "wrn16_2": _Entry(lambda num_classes: WideResNet(num_classes, 16, 2), "classifier",
                      (32, 32, None)),
    "wrn40_1": _Entry(lambda num_classes: WideResNet(num_classes, 40, 1), "classifier",
                      (32, 32, None)),
    "wrn40_2": _Entry(lambda num_classes: WideResNet(num_classes, 40, 2), "classifier",
                      (32, 32, None)),
    "lenet5": _Entry(lambda num_classes: LeNet5(num_classes, 1), "classifier",
                     (32, 32, 1)),
    "lenet5_half": _Entry(lambda num_classes: LeNet5(num_classes, 2), "classifier",
                          (32, 32, 1)),
    "digits_cnn": _Entry(lambda num_classes: DigitsCNN(num_classes, (32, 32, 64)),
                         "classifier", (8, 8, 1)),
    "digits_cnn_half": _Entry(lambda num_classes: DigitsCNN(num_classes, (16, 16, 32)),
                              "classifier", (8, 8, 1)),
}


def names() -> tuple[str, ...]:
  """All registered model names, sorted."""
  return tuple(sorted(_REGISTRY))


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(names())}")
  return _REGISTRY[name]


def is_classifier(name: str) -> bool:
  """Whether ``name`` is a registered classifier (``ValueError`` if unknown)."""
  return _entry(name).kind == "classifier"


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
  entry = _entry(name)
  if entry.kind != "classifier":
    classifiers = [n for n in names() if _REGISTRY[n].kind == "classifier"]
    raise ValueError(f"{name!r} is a {entry.kind}, not a classifier; classifiers: "
                     f"{', '.join(classifiers)}")
  h, w, c = entry.input_shape
  if c is None:
    return (h, w, 3 if channels is None else channels)
  if channels is not None and channels != c:
    raise ValueError(f"{name!r} takes {c}-channel input, not channels={channels}")
  return (h, w, c)


def _check_classifier_shape(name: str, shape: Sequence[int]) -> None:
  expected = _REGISTRY[name].input_shape
  shape = tuple(shape)
  ok = len(shape) == 3 and shape[:2] == expected[:2] and (
      expected[2] is None or shape[2] == expected[2])
  if not ok:
    matching = [n for n in names() if _REGISTRY[n].kind == "classifier" and
                len(shape) == 3 and _REGISTRY[n].input_shape[:2] == shape[:2]]
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
  entry = _entry(name)
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

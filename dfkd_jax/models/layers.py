"""Layers shared by the model zoo: PyTorch-semantics BatchNorm and initialisers.

Every classifier in :mod:`dfkd_jax.models` is an exact NHWC port of the PyTorch
definition used by the peers (CMI, DFAD, DAFL, LRA, MAD). Two details make ports exact:

* :class:`BatchNorm` follows ``torch.nn.BatchNorm2d``: normalisation with the *biased*
  batch variance, running variance updated with the *unbiased* one, ``momentum=0.1``
  (Flax's ``0.9``), ``eps=1e-5`` by default. It also reports the moments of its input
  (:class:`dfkd_jax.math.losses.BNMoments`) for BatchNorm moment matching (MAD eq. 9).
* Initialisers reproduce PyTorch's defaults (``kaiming_uniform_(a=sqrt(5))`` for conv and
  linear weights, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for biases) unless a peer
  overrides them.

Parameter and statistic names match ``flax.linen.BatchNorm`` (``scale``, ``bias`` /
``mean``, ``var``) so that checkpoints read like ordinary Flax ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Iterator, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax.math.losses import BNMoments
from dfkd_jax.models import conv

Array = jax.Array
Initializer = Callable[..., Array]


class ClassifierFeatures(NamedTuple):
  """What a classifier returns beside its logits when called with ``features=True``.

  Attributes:
    penultimate: ``[N, D]`` features fed to the final linear layer (LRA eq. 13).
    bn_moments: one :class:`~dfkd_jax.math.losses.BNMoments` per BatchNorm layer, in
      forward order (empty for networks without BatchNorm, e.g. LeNet-5).
  """

  penultimate: Array
  bn_moments: tuple[BNMoments, ...]


# PyTorch's default ``kaiming_uniform_(w, a=sqrt(5))`` is U(-1/sqrt(fan_in), ..), i.e. a
# variance scaling of 1/3 over fan_in.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                            "uniform")
# ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` (CMI ResNets) and WRN's
# ``normal_(0, sqrt(2 / (k*k*out)))``: the same distribution (not truncated).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias initialiser ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

  Args:
    fan_in: number of inputs of the layer (``k*k*C_in`` for a convolution).

  Returns:
    A Flax initialiser.
  """
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def uniform_init(bound: float) -> Initializer:
  """``U(-bound, bound)``, e.g. the LRA generator's ``uniform_(-0.08, 0.08)``."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(features: int, fan_in: int, name: str | None = None,
                 kernel_init: Initializer = torch_default_kernel_init) -> nn.Dense:
  """``nn.Dense`` initialised like ``torch.nn.Linear``.

  Args:
    features: output width.
    fan_in: input width (for the bias initialiser).
    name: submodule name.
    kernel_init: weight initialiser (PyTorch default unless given).

  Returns:
    The Dense layer.
  """
  return nn.Dense(features, kernel_init=kernel_init,
                  bias_init=torch_default_bias_init(fan_in), name=name)


def torch_conv(features: int, kernel_size: int, in_features: int, *, stride: int = 1,
               padding: int = 0, use_bias: bool = True, name: str | None = None,
               kernel_init: Initializer = torch_default_kernel_init) -> conv.Conv2d:
  """A convolution with explicit symmetric padding, as ``torch.nn.Conv2d``.

  Its parameters are ``nn.Conv``'s; on CPU its gradients avoid a slow XLA path of
  second-order programs (:mod:`dfkd_jax.models.conv`).

  Args:
    features: output channels.
    kernel_size: square kernel size ``k``.
    in_features: input channels (for the default bias initialiser).
    stride: stride.
    padding: zero padding on every side, as PyTorch's ``padding=`` integer.
    use_bias: whether the convolution has a bias.
    name: submodule name.
    kernel_init: weight initialiser.

  Returns:
    The convolution (input ``[N, H, W, in_features]``).
  """
  return conv.Conv2d(features, kernel_size, stride=stride, padding=padding,
                     use_bias=use_bias, kernel_init=kernel_init,
                     bias_init=torch_default_bias_init(kernel_size * kernel_size *
                                                       in_features), name=name)


_BATCH_STATS_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "batch_stats_axis", default=None)


@contextlib.contextmanager
def batch_stats_axis(axis_name: str | None) -> Iterator[None]:
  """Within this context, every :class:`BatchNorm` reduces its batch over ``axis_name``.

  For data parallelism inside ``jax.shard_map``: the batch is split over the mesh axis
  ``axis_name``, and the batch mean/variance (used to normalise in training mode, to
  update the running statistics and reported as :class:`BNMoments`) are those of the
  *global* batch, computed with ``lax.pmean``. Sharded training then computes exactly
  what one device would on the whole batch. The context is read while tracing, so
  enter it inside the function being traced (or around the ``jit`` call that traces it).

  Args:
    axis_name: the mesh axis the batch is sharded over, or ``None`` for local batches.
  """
  token = _BATCH_STATS_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BATCH_STATS_AXIS.reset(token)


def current_batch_stats_axis() -> str | None:
  """The axis :func:`batch_stats_axis` set (``None`` outside it)."""
  return _BATCH_STATS_AXIS.get()


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm`` over the last axis, reporting its input moments.

  Attributes:
    epsilon: added to the variance (PyTorch ``eps``; note ``BatchNorm2d(128, 0.8)`` in
      the DAFL/LRA generator passes ``eps=0.8``).
    momentum: PyTorch momentum: ``running = (1 - m) * running + m * batch``.
    use_affine: learnable ``scale``/``bias`` (PyTorch ``affine``).
  """

  epsilon: float = 1e-5
  momentum: float = 0.1
  use_affine: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, BNMoments]:
    """Normalises ``x`` with batch (``train``) or running (eval) statistics.

    Args:
      x: ``[..., C]`` input.
      train: use and update batch statistics (requires ``mutable=["batch_stats"]``).

    Returns:
      ``(y, moments)``: the output and the batch mean / biased variance of ``x`` over
      all axes but the last together with the running statistics before this call.
    """
    channels = x.shape[-1]
    reduce_axes = tuple(range(x.ndim - 1))
    running_mean = self.variable("batch_stats", "mean",
                                 lambda: jnp.zeros((channels,), jnp.float32))
    running_var = self.variable("batch_stats", "var",
                                lambda: jnp.ones((channels,), jnp.float32))
    x32 = x.astype(jnp.float32)
    axis_name = _BATCH_STATS_AXIS.get()
    count = math.prod(x.shape[:-1])
    batch_mean = jnp.mean(x32, axis=reduce_axes)
    if axis_name is not None:  # Global moments of a batch sharded over axis_name.
      batch_mean = jax.lax.pmean(batch_mean, axis_name)
      count *= jax.lax.axis_size(axis_name)
    batch_var = jnp.mean(jnp.square(x32 - batch_mean), axis=reduce_axes)
    if axis_name is not None:
      batch_var = jax.lax.pmean(batch_var, axis_name)
    moments = BNMoments(batch_mean, batch_var, running_mean.value, running_var.value)

    if train:
      mean, var = batch_mean, batch_var
      if not self.is_initializing():
        unbiased_var = batch_var * (count / max(count - 1, 1))
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * batch_mean
        running_var.value = (1 - m) * running_var.value + m * unbiased_var
    else:
      mean, var = running_mean.value, running_var.value

    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_affine:
      scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
      y = y * scale + bias
    return y.astype(x.dtype), moments


def collect_moments(groups: Sequence[Sequence[BNMoments]]) -> tuple[BNMoments, ...]:
  """Concatenates per-block moment tuples into one forward-ordered tuple."""
  return tuple(m for group in groups for m in group)


def check_input(name: str, x: Array, expected_hwc: Sequence[int | None]) -> None:
  """Raises ``ValueError`` when ``x`` is not ``[N, *expected_hwc]``.

  Args:
    name: model name for the message.
    x: input batch.
    expected_hwc: expected ``(H, W, C)``; ``None`` entries are not checked.
  """
  if x.ndim != 4 or any(e is not None and e != s
                        for e, s in zip(expected_hwc, x.shape[1:])):
    raise ValueError(f"{name} expects NHWC input [N, {', '.join(map(str, expected_hwc))}]"
                     f" (None = any), got shape {tuple(x.shape)}")



def upsample_nearest(x: Array, factor: int = 2) -> Array:
  """``F.interpolate(x, scale_factor=factor)`` (nearest) on ``[N, H, W, C]``."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``[size_out, size_in]`` linear-interpolation weights with aligned corners."""
  weights = np.zeros((size_out, size_in), np.float32)
  if size_in == 1:
    weights[:, 0] = 1.0
    return weights
  pos = np.arange(size_out) * (size_in - 1) / (size_out - 1)
  lo = np.minimum(np.floor(pos).astype(int), size_in - 2)
  frac = pos - lo
  weights[np.arange(size_out), lo] = 1.0 - frac
  weights[np.arange(size_out), lo + 1] += frac
  return weights


def upsample_bilinear_aligned(x: Array, factor: int = 2) -> Array:
  """``torch.nn.UpsamplingBilinear2d(scale_factor=factor)`` on ``[N, H, W, C]``.

  PyTorch's ``UpsamplingBilinear2d`` uses ``align_corners=True``, unlike
  ``jax.image.resize``; the interpolation is done with two small constant matrices.
  """
  _, h, w, _ = x.shape
  rows = jnp.asarray(_align_corners_matrix(h, h * factor), x.dtype)
  cols = jnp.asarray(_align_corners_matrix(w, w * factor), x.dtype)
  return jnp.einsum("oh,pw,nhwc->nopc", rows, cols, x)


# Rows of the 3-tap kernel that reach input rows (p - 1 + j, j = 0, 1 of a padded 2-tap
# window) from output row 2p + phase after nearest x2 upsampling (see UpsampleConv3x3).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],    # even rows: x[p-1], x[p]
                        [[1, 1, 0], [0, 0, 1]]],   # odd rows:  x[p],   x[p+1]
                       np.float32)


class UpsampleConv3x3(nn.Module):
  """``conv3x3(upsample_nearest(x))`` with zero padding 1, in sub-pixel form.

  After nearest x2 upsampling, output row ``2p`` sees input rows ``(p-1, p, p)`` and
  row ``2p+1`` sees ``(p, p, p+1)`` through the 3 taps, so each of the 4 output phases
  is a 2x2 convolution of the *low-resolution* input with summed taps. All four are
  one matrix product of the ``(H+1)(W+1)`` 2x2 patches of the padded input with a
  ``[4 in, 4 out]`` kernel, then depth-to-space: 16 ``(H+1)(W+1)`` instead of 36 ``HW``
  multiply-adds per channel pair (about 2x fewer), and the upsampled tensor is never
  built. A matrix product rather than a 2x2 convolution because XLA's CPU backend
  computes that convolution's kernel gradient about 40x slower than the product's.
  The parameters are those of the 3x3 ``nn.Conv`` it replaces (``kernel [3, 3, in,
  out]``, ``bias``), so checkpoints, PyTorch imports and spectral normalisation are
  unchanged.

  Attributes:
    features: output channels.
    kernel_init: initialiser of the ``[3, 3, in, out]`` kernel.
    bias_init: initialiser of the bias.
    use_bias: whether it has a bias (PyTorch's ``bias=False``: none).
  """

  features: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x: ``[N, H, W, C]``. Returns: ``[N, 2H, 2W, features]``."""
    n, h, w, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (3, 3, c, self.features))
    bias = (self.param("bias", self.bias_init, (self.features,)) if self.use_bias
            else jnp.zeros((self.features,), kernel.dtype))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
    taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
    # [i, j, in, a, b, out]: tap (i, j) of the 2x2 kernel of row phase a, column phase b.
    phases = jnp.einsum("aik,bjl,klco->ijcabo", taps, taps, kernel)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h + 1, j:j + w + 1]
                               for i in (0, 1) for j in (0, 1)], axis=-1)
    y = patches @ phases.reshape(4 * c, 4 * self.features)  # [N, H+1, W+1, 4 out]
    y = y.reshape(n, h + 1, w + 1, 2, 2, self.features)
    # Phase (a, b) of output pixel (p, q) sits at window (p + a, q + b).
    rows = jnp.stack([y[:, :h, :, 0], y[:, 1:, :, 1]], axis=2)  # [N, H, 2, W+1, 2, out]
    out = jnp.stack([rows[:, :, :, :w, 0], rows[:, :, :, 1:, 1]], axis=4)
    return out.reshape(n, 2 * h, 2 * w, self.features) + bias

"""PyTorch's 2-D convolutions lowered channels-last for torchax (XLA's fast CPU path).

torchax lowers ``aten.convolution`` and ``aten.conv2d`` to ``lax.conv_general_dilated``
on NCHW inputs and OIHW kernels (PyTorch's layouts). XLA's CPU compiler turns such a
convolution into its fast NHWC/HWIO kernel only where layout assignment may change the
operands' layouts: in a program's straight-line code it does, but inside a loop body
(``lax.scan``, ``lax.map``, ``fori_loop``: the trainer's scanned student steps, its
replicas, a Fast method's inner steps) the NCHW convolution stays and runs on a generic
kernel. Measured on a 2-core CPU (WRN-16-2, batch 64, process CPU seconds per forward):
0.089 s as one call, 3.93 s as the body of a 5-step ``lax.scan`` (44x; the input
gradient 0.18 s against 7.8 s), where the zoo's Flax port of the same weights takes
0.094 s and 0.083 s; a whole ``dfkd`` iteration of WRN-40-2 -> WRN-16-1 was 16x slower
through torchax than through the Flax port (``benchmarks/torch_teacher_speed.py``).

:func:`install` replaces torchax's lowering of the two ops, for 4-D inputs and kernels
of a non-transposed convolution with numeric padding, by the same convolution written
NHWC/HWIO with transposes around it (XLA cancels the transposes between consecutive
layers); every other case keeps torchax's own lowering. The result is the same
convolution up to float32 summation order.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")


def _pair(value, name: str) -> tuple[int, int]:
  values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if len(values) == 1:
    values = values * 2
  if len(values) != 2 or not all(isinstance(v, int) for v in values):
    raise TypeError(f"{name}={value!r}")
  return values


def conv2d_channels_last(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                         stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], groups: int) -> jax.Array:
  """PyTorch's ``conv2d`` (NCHW ``x``, OIHW ``kernel``, NCHW result) computed NHWC."""
  (sh, sw), (ph, pw), (dh, dw) = (_pair(stride, "stride"), _pair(padding, "padding"),
                                  _pair(dilation, "dilation"))
  y = jax.lax.conv_general_dilated(
      jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(kernel, (2, 3, 1, 0)), (sh, sw),
      ((ph, ph), (pw, pw)), rhs_dilation=(dh, dw), dimension_numbers=_NHWC,
      feature_group_count=groups)
  if bias is not None:
    y = y + bias
  return jnp.transpose(y, (0, 3, 1, 2))


def _lowers_channels_last(x, kernel, padding, transposed=False) -> bool:
  if transposed or getattr(x, "ndim", 0) != 4 or getattr(kernel, "ndim", 0) != 4:
    return False
  try:
    _pair(padding, "padding")
  except TypeError:  # padding="same"/"valid": torchax's own lowering.
    return False
  return True


def install(env) -> None:
  """Lowers ``aten.convolution`` and ``aten.conv2d`` channels-last in the torchax
  environment ``env`` (its other convolutions keep torchax's lowering). Idempotent."""
  import torch  # pylint: disable=g-import-not-at-top
  from torchax import interop  # pylint: disable=g-import-not-at-top
  from torchax.ops import jaten  # pylint: disable=g-import-not-at-top
  if getattr(env, "_dfkd_channels_last_conv", False):
    return

  def convolution(x, kernel, bias, stride, padding, dilation, transposed,
                  output_padding, groups):
    if _lowers_channels_last(x, kernel, padding, transposed):
      return conv2d_channels_last(x, kernel, bias, stride, padding, dilation, groups)
    return jaten._aten_convolution(x, kernel, bias, stride, padding, dilation,  # pylint: disable=protected-access
                                   transposed, output_padding, groups)

  def conv2d(x, kernel, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if _lowers_channels_last(x, kernel, padding):
      return conv2d_channels_last(x, kernel, bias, stride, padding, dilation, groups)
    return jaten._aten_conv2d(x, kernel, bias, stride, padding, dilation, groups)  # pylint: disable=protected-access

  env.override_op_definition(torch.ops.aten.convolution, interop.torch_view(convolution))
  env.override_op_definition(torch.ops.aten.conv2d, interop.torch_view(conv2d))
  env._dfkd_channels_last_conv = True  # pylint: disable=protected-access

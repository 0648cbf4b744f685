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
The input gradient needs the same: JAX's own transpose rule gives the backward
convolution's kernel as ``01oi`` labels, off the fast path inside a loop (1.87 s per
gradient in the scan, the Flax port 0.16 s), so the non-grouped convolution has a
custom VJP whose input gradient is an explicit NHWC/HWIO convolution (0.15 s).

:func:`install` replaces torchax's lowering of the two ops, for 4-D inputs and kernels
of a non-transposed convolution with numeric padding, by the same convolution written
NHWC/HWIO with transposes around it (XLA cancels the transposes between consecutive
layers); every other case keeps torchax's own lowering. The result is the same
convolution up to float32 summation order.
"""

from __future__ import annotations

import functools
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


def _nhwc_conv(x_nhwc, kernel_hwio, stride, padding, lhs_dilation, rhs_dilation, groups):
  # The barrier keeps XLA from folding a transpose of the kernel into the convolution's
  # dimension labels: the kernel reaches it as a materialised HWIO array (01io), the
  # layout of XLA's fast CPU kernel, as a Flax port's kernel parameter does.
  return jax.lax.conv_general_dilated(
      x_nhwc, jax.lax.optimization_barrier(kernel_hwio), stride, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=_NHWC,
      feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x_nhwc, kernel_hwio, stride, padding, dilation):
  return _nhwc_conv(x_nhwc, kernel_hwio, stride, padding, (1, 1), dilation, 1)


def _conv_fwd(x_nhwc, kernel_hwio, stride, padding, dilation):
  return _conv(x_nhwc, kernel_hwio, stride, padding, dilation), (x_nhwc, kernel_hwio)


def _conv_bwd(stride, padding, dilation, residuals, g):
  """The input gradient as an explicit NHWC/HWIO convolution (the transposed
  convolution: the kernel flipped in space, its in/out features swapped, the
  gradient dilated by the stride); the kernel gradient as JAX derives it (XLA drops it
  where, as for a frozen teacher, nothing uses it)."""
  x, kernel = residuals
  flipped = jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2))
  pads = []
  for axis in (0, 1):
    span = (kernel.shape[axis] - 1) * dilation[axis] + 1
    lo = span - 1 - padding[axis][0]
    out = g.shape[1 + axis]
    hi = x.shape[1 + axis] + padding[axis][1] - 1 - (out - 1) * stride[axis]
    pads.append((lo, hi))
  dx = _nhwc_conv(g, flipped, (1, 1), pads, stride, dilation, 1)
  _, kernel_vjp = jax.vjp(
      lambda k: jax.lax.conv_general_dilated(x, k, stride, padding, rhs_dilation=dilation,
                                             dimension_numbers=_NHWC), kernel)
  return dx, kernel_vjp(g)[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d_channels_last(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                         stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], groups: int) -> jax.Array:
  """PyTorch's ``conv2d`` (NCHW ``x``, OIHW ``kernel``, NCHW result) computed NHWC."""
  (sh, sw), (ph, pw), (dh, dw) = (_pair(stride, "stride"), _pair(padding, "padding"),
                                  _pair(dilation, "dilation"))
  x_nhwc, kernel_hwio = jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(kernel, (2, 3, 1, 0))
  if groups == 1:
    y = _conv(x_nhwc, kernel_hwio, (sh, sw), ((ph, ph), (pw, pw)), (dh, dw))
  else:
    y = _nhwc_conv(x_nhwc, kernel_hwio, (sh, sw), ((ph, ph), (pw, pw)), (1, 1), (dh, dw),
                   groups)
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

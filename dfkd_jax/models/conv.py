"""2-D convolution whose gradients stay fast when they are differentiated again.

The exact meta-gradient of LRA (eq. 6-8) differentiates the student's gradient: a
Hessian-vector product through every convolution. JAX derives it by transposing the
convolutions of the first backward pass, and the transpose of the kernel-gradient
convolution (``dW = conv(x, dy)`` over the batch) with respect to ``x`` is a convolution
with permuted dimension labels (``01fb_o01i->f01b`` with reversed kernel) that XLA's CPU
backend runs on a generic slow path: in a 4-layer 3x3 network at batch 64 three such
convolutions took half of the meta-gradient's time, at ~1 GFLOP/s.

:func:`conv2d` computes the same function with a custom VJP that never produces that
form. The kernel gradient is ``k * k`` matrix products of strided slices of the padded
input with ``dy`` (``dW[i, j] = x_pad[:, i::s, j::s, :]^T dy``), whose derivatives are
slices, pads and products; the input gradient is written out as a convolution of the
dilated, padded ``dy`` with the flipped, transposed kernel, itself given a custom VJP
that maps back to :func:`conv2d` and the matrix-product kernel gradient. Values and
gradients of every order equal ``lax.conv_general_dilated``'s (tested in float64).
Forward-mode differentiation (``jax.jvp``) is not defined for a custom VJP;
:func:`kernel_gradient` ``("xla")`` switches back to XLA's own rules.

By default (``"auto"``) the custom rules are used on the CPU backend only; GPU and TPU
convolution libraries handle every form of the second-order program themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
KERNEL_GRADIENTS = ("auto", "matmul", "xla")
_KERNEL_GRADIENT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "kernel_gradient", default="auto")


@contextlib.contextmanager
def kernel_gradient(mode: str) -> Iterator[None]:
  """Within this context, :class:`Conv2d` uses the given gradient rules.

  Read while tracing, like :func:`~dfkd_jax.models.layers.batch_stats_axis`.

  Args:
    mode: ``"matmul"`` (the custom VJP of :func:`conv2d`), ``"xla"`` (XLA's own
      convolution gradients; needed for ``jax.jvp``) or ``"auto"`` (``matmul`` on CPU).
  """
  if mode not in KERNEL_GRADIENTS:
    raise ValueError(f"unknown kernel gradient {mode!r}; valid: {', '.join(KERNEL_GRADIENTS)}")
  token = _KERNEL_GRADIENT.set(mode)
  try:
    yield
  finally:
    _KERNEL_GRADIENT.reset(token)


def _uses_matmul_gradient() -> bool:
  mode = _KERNEL_GRADIENT.get()
  return mode == "matmul" or (mode == "auto" and jax.default_backend() == "cpu")


def _forward(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  return lax.conv_general_dilated(x, kernel, (stride, stride),
                                  ((padding, padding), (padding, padding)),
                                  dimension_numbers=_DIMENSIONS)


def matmul_kernel_gradient(x: Array, dy: Array, kernel_size: int, stride: int,
                           padding: int) -> Array:
  """The kernel gradient of :func:`conv2d` as ``kernel_size**2`` matrix products.

  Args:
    x: ``[N, H, W, C_in]`` convolution input.
    dy: ``[N, H_out, W_out, C_out]`` cotangent of the output.
    kernel_size: ``k`` of the square kernel.
    stride: the convolution's stride.
    padding: its symmetric zero padding.

  Returns:
    ``[k, k, C_in, C_out]``: ``sum_{n, y, x} x_pad[n, s*y + i, s*x + j, :]^T dy[n, y, x, :]``.
  """
  n, h_out, w_out, c_out = dy.shape
  c_in = x.shape[-1]
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  dy = dy.reshape(-1, c_out)
  rows = []
  for i in range(kernel_size):
    row = []
    for j in range(kernel_size):
      patch = lax.slice(x, (0, i, j, 0),
                        (n, i + stride * (h_out - 1) + 1, j + stride * (w_out - 1) + 1, c_in),
                        (1, stride, stride, 1))
      row.append(patch.reshape(-1, c_in).T @ dy)
    rows.append(jnp.stack(row))
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: Array, kernel: Array, stride: int = 1, padding: int = 0) -> Array:
  """``lax.conv_general_dilated`` (NHWC, HWIO) with CPU-friendly gradients of any order.

  Args:
    x: ``[N, H, W, C_in]`` input.
    kernel: ``[k, k, C_in, C_out]`` kernel.
    stride: stride in both spatial dimensions.
    padding: zero padding on every side (PyTorch's integer ``padding``).

  Returns:
    ``[N, H_out, W_out, C_out]``, the cross-correlation of PyTorch's ``conv2d``.
  """
  return _forward(x, kernel, stride, padding)


def _like(cotangent: Array, primal: Array) -> Array:
  """Sums ``cotangent`` over the mesh axes it varies on and ``primal`` does not.

  Inside ``shard_map`` a replicated kernel meets a batch-sharded input; its cotangent
  is then the sum over devices, the transpose of the implicit broadcast that JAX's own
  rules would insert.
  """
  extra = tuple(sorted(_varying_axes(cotangent) - _varying_axes(primal)))
  return lax.psum(cotangent, extra) if extra else cotangent


def _varying_axes(x: Array) -> frozenset[str]:
  """The manual mesh axes ``x`` varies over (empty outside ``shard_map``)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax 0.10; older: ``aval.vma``.
  return manual.varying if manual is not None else getattr(aval, "vma", frozenset())


def _conv2d_fwd(x, kernel, stride, padding):
  # conv2d, not _forward: under a second differentiation the outer level differentiates
  # this primal computation too, and must meet the custom rules again, not XLA's.
  return conv2d(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  dx = _input_gradient(dy, kernel, stride, padding, x.shape)
  dw = matmul_kernel_gradient(x, dy, kernel.shape[0], stride, padding)
  return _like(dx, x), _like(dw, kernel)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _input_gradient(dy, kernel, stride, padding, x_shape):
  """The adjoint of ``x -> conv2d(x, kernel)`` applied to ``dy``: a transposed convolution.

  ``dy`` dilated by the stride, correlated with the spatially flipped kernel (input and
  output channels swapped), padded so that the result has the input's size. Written out
  rather than via ``jax.linear_transpose`` so that it keeps ``dy``'s sharding type
  inside ``shard_map``.
  """
  k = kernel.shape[0]
  h_out, w_out = dy.shape[1:3]
  low = k - 1 - padding
  high_h = x_shape[1] - 1 - (h_out - 1) * stride + padding
  high_w = x_shape[2] - 1 - (w_out - 1) * stride + padding
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  return lax.conv_general_dilated(dy, flipped, (1, 1), ((low, high_h), (low, high_w)),
                                  lhs_dilation=(stride, stride),
                                  dimension_numbers=_DIMENSIONS)


def _input_gradient_fwd(dy, kernel, stride, padding, x_shape):
  return _input_gradient(dy, kernel, stride, padding, x_shape), (dy, kernel)


def _input_gradient_bwd(stride, padding, x_shape, residuals, u):
  # <u, conv^T(dy)> = <conv(u), dy>: d/d dy = conv2d(u, kernel), d/d kernel = dW(u, dy).
  dy, kernel = residuals
  d_dy = conv2d(u, kernel, stride, padding)
  d_kernel = matmul_kernel_gradient(u, dy, kernel.shape[0], stride, padding)
  return _like(d_dy, dy), _like(d_kernel, kernel)


_input_gradient.defvjp(_input_gradient_fwd, _input_gradient_bwd)


class Conv2d(nn.Module):
  """A square ``torch.nn.Conv2d`` in NHWC with :func:`conv2d`'s gradients on CPU.

  Parameters are named and shaped as ``flax.linen.Conv``'s (``kernel`` HWIO, ``bias``),
  so checkpoints and the PyTorch importer are unaffected.

  Attributes:
    features: output channels.
    kernel_size: ``k``.
    stride: stride.
    padding: symmetric zero padding.
    use_bias: add a bias.
    kernel_init: kernel initialiser.
    bias_init: bias initialiser.
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if _uses_matmul_gradient():
      y = conv2d(x, kernel, self.stride, self.padding)
    else:
      y = _forward(x, kernel, self.stride, self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(dtype)
    return y

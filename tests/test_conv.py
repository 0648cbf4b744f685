"""conv2d's custom gradients equal XLA's to every order used (float64)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax.models import conv


@pytest.fixture(autouse=True)
def _float64():
  """float64 for these tests only (a global switch would change other test files)."""
  with jax.enable_x64(True):
    yield


CASES = [  # (kernel_size, stride, padding, input size)
    (3, 1, 1, 6), (3, 2, 1, 7), (1, 2, 0, 6), (5, 1, 0, 9), (3, 1, 0, 5),
]


def _arrays(k, size, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)))
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)) / k)
  return x, w


def _objectives(impl, stride, padding):
  """A smooth loss and LRA's meta-objective (eq. 6) of a two-convolution net."""

  def net(params, x):
    h = jnp.tanh(impl(x, params[0], stride, padding))
    return jnp.tanh(impl(h, params[1], 1, 1)).mean(axis=(1, 2))

  def loss(params, x, target):
    return jnp.sum((net(params, x) - target) ** 2)

  def meta(params, x_acq, x_ret, target):
    grads = jax.grad(loss)(params, x_acq, target)
    inner = [p - 0.1 * g for p, g in zip(params, grads)]
    return loss(params, x_acq, target) + loss(inner, x_ret, target)

  return loss, meta


@pytest.mark.parametrize("k, stride, padding, size", CASES)
def test_values_and_gradients_match_xla(k, stride, padding, size):
  x, w = _arrays(k, size)
  y_ref, vjp_ref = jax.vjp(lambda x, w: conv._forward(x, w, stride, padding), x, w)
  y, vjp = jax.vjp(lambda x, w: conv.conv2d(x, w, stride, padding), x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
  dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape))
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k, stride, padding, size", CASES)
def test_meta_gradient_matches_xla(k, stride, padding, size):
  x, w1 = _arrays(k, size)
  w2 = jnp.asarray(np.random.default_rng(2).normal(size=(3, 3, 4, 4)) / 3)
  x_ret = _arrays(k, size, seed=3)[0]
  target = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4)))
  params = [w1, w2]
  results = []
  for impl in (conv._forward, conv.conv2d):
    _, meta = _objectives(impl, stride, padding)
    results.append(jax.grad(meta)(params, x, x_ret, target))
  for got, want in zip(results[1], results[0]):
    assert float(jnp.abs(want).max()) > 1e-3  # Not a trivially zero gradient.
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_third_order_input_gradient_rule():
  """The custom VJP of the input gradient is itself differentiated exactly."""
  x, w = _arrays(3, 6)
  dy = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 3, 4)))

  def f(impl, w):
    dx = jax.vjp(lambda x: impl(x, w, 2, 1), x)[1](dy)[0]
    return jnp.sum(jnp.sin(dx))

  for order in (jax.grad, lambda f: jax.grad(lambda w: jnp.sum(jax.grad(f)(w) ** 2))):
    want = order(lambda w: f(conv._forward, w))(w)
    got = order(lambda w: f(conv.conv2d, w))(w)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_module_matches_flax_conv_and_modes():
  x, _ = _arrays(3, 7)
  ours = conv.Conv2d(5, 3, stride=2, padding=1)
  flax_conv = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  variables = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, flax_conv.init(jax.random.key(0), x))
  want = flax_conv.apply(variables, x)
  for mode in conv.KERNEL_GRADIENTS:
    with conv.kernel_gradient(mode):
      np.testing.assert_allclose(ours.apply(variables, x), want, rtol=1e-10)
  # Forward mode needs XLA's rules; the custom VJP refuses it with JAX's error.
  tangent = jax.tree.map(jnp.ones_like, variables)
  with conv.kernel_gradient("xla"):
    jax.jvp(lambda v: ours.apply(v, x), (variables,), (tangent,))
  with conv.kernel_gradient("matmul"), pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda v: ours.apply(v, x), (variables,), (tangent,))
  with pytest.raises(ValueError, match="'cudnn'.*auto, matmul, xla"):
    with conv.kernel_gradient("cudnn"):
      pass


def _convolution_layouts(fn, *args) -> set[str]:
  """``dim_labels`` of the convolutions in the lowered (unoptimised) HLO of ``fn``."""
  text = jax.jit(fn).lower(*args).as_text(dialect="hlo")
  return set(re.findall(r" convolution\(.*dim_labels=([^,\s]+)", text))


@pytest.mark.parametrize("stride", [1, 2])
def test_meta_gradient_has_only_forward_layout_convolutions(stride):
  """With the custom rules every convolution of the meta-gradient, including those the
  outer differentiation adds to the first backward pass, is a plain NHWC x HWIO one:
  no kernel-gradient (``f01b_i01o->01bf``) or transposed-kernel (``01oi``) forms."""
  x, w1 = _arrays(3, 8)
  w2 = jnp.full((3, 3, 4, 4), 0.1)
  target = jnp.zeros((2, 4))
  layouts = {}
  for name, impl in (("xla", conv._forward), ("matmul", conv.conv2d)):
    _, meta = _objectives(impl, stride, 1)
    layouts[name] = _convolution_layouts(jax.grad(meta), [w1, w2], x, x, target)
  forward = "b01f_01io->b01f"
  assert layouts["matmul"] == {forward}, layouts
  assert layouts["xla"] - {forward}, layouts  # XLA's rules do use the other forms.

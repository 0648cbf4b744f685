"""Tests of dfkd_jax.math.losses against independent NumPy references (float64)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfkd_jax.math import losses

SHAPES = ((4, 10), (2, 3, 5), (1, 2), (16, 100))
TEMPERATURES = (0.5, 1.0, 3.0)


def shape_id(shape):
  """Test id of a shape, e.g. ``4x10``."""
  return "x".join(map(str, shape))


def eager(fn):
  """The eager counterpart of ``jax.jit``: ``fn`` itself, run op by op."""
  return fn


parametrize_shapes = pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
parametrize_temperatures = pytest.mark.parametrize("temperature", TEMPERATURES)
parametrize_jit_or_eager = pytest.mark.parametrize("transform", (jax.jit, eager),
                                                   ids=("jit", "eager"))


# ----------------------------- NumPy references -----------------------------


def np_softmax(x, t=1.0):
  z = np.asarray(x, np.float64) / t
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def np_kl(p, q):
  """sum p log(p/q) over the last axis, with 0 log 0 = 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
  return terms.sum(-1)


def np_js(a, b, t=1.0):
  p, q = np_softmax(a, t), np_softmax(b, t)
  m = 0.5 * (p + q)
  return 0.5 * np_kl(p, m) + 0.5 * np_kl(q, m)


def rand(rng, shape, scale=3.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ------------------------------- student losses ------------------------------


@parametrize_shapes
def test_mae_matches_numpy_and_torch_l1_reduction(shape):
  rng = np.random.default_rng(0)
  s, t = rand(rng, shape), rand(rng, shape)
  got = losses.mae(s, t)
  chex.assert_shape(got, shape[:-1])
  assert_close(got, np.abs(t.astype(np.float64) - s).mean(-1))
  # jnp.mean of the per-example loss is PyTorch's F.l1_loss (mean over everything).
  assert_close(jnp.mean(got), np.abs(t.astype(np.float64) - s).mean())


@parametrize_shapes
@parametrize_temperatures
def test_kl_matches_numpy(shape, temperature):
  rng = np.random.default_rng(1)
  s, t = rand(rng, shape), rand(rng, shape)
  got = losses.kl_divergence(s, t, temperature)
  expected = np_kl(np_softmax(t, temperature), np_softmax(s, temperature)) * temperature**2
  assert_close(got, expected, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(got) >= -1e-6)


def test_kl_zero_for_equal_inputs():
  x = rand(np.random.default_rng(2), (8, 10))
  np.testing.assert_allclose(losses.kl_divergence(x, x), 0.0, atol=1e-6)


# ------------------------------ generator losses -----------------------------


@parametrize_shapes
@parametrize_temperatures
def test_js_matches_numpy(shape, temperature):
  rng = np.random.default_rng(3)
  a, b = rand(rng, shape), rand(rng, shape)
  got = losses.js_divergence(a, b, temperature)
  chex.assert_shape(got, shape[:-1])
  assert_close(got, np_js(a, b, temperature), rtol=1e-4, atol=1e-6)


@parametrize_temperatures
def test_js_properties(temperature):
  rng = np.random.default_rng(4)
  a, b = rand(rng, (64, 10), 10.0), rand(rng, (64, 10), 10.0)
  ab = losses.js_divergence(a, b, temperature)
  ba = losses.js_divergence(b, a, temperature)
  np.testing.assert_allclose(ab, ba, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(losses.js_divergence(a, a, temperature), 0.0, atol=1e-6)
  assert np.all(np.asarray(ab) <= math.log(2) + 1e-6)
  assert np.all(np.asarray(ab) >= -1e-7)
  # Disjoint one-hot-like distributions reach the ln 2 bound.
  far = losses.js_divergence(jnp.array([[1e4, 0.0]]), jnp.array([[0.0, 1e4]]), temperature)
  np.testing.assert_allclose(far, math.log(2), rtol=1e-6)


@parametrize_shapes
def test_one_hot_is_cross_entropy_with_argmax(shape):
  t = rand(np.random.default_rng(5), shape)
  labels = np.argmax(t, axis=-1)
  got = losses.one_hot_loss(t)
  expected = optax.softmax_cross_entropy_with_integer_labels(t, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  p = np_softmax(t)
  assert_close(got, -np.log(np.take_along_axis(p, labels[..., None], -1)[..., 0]))


def test_activation_loss_matches_numpy():
  f = rand(np.random.default_rng(6), (5, 4, 4, 8))
  got = losses.activation_loss(f)
  chex.assert_shape(got, (5,))
  assert_close(got, -np.abs(f.astype(np.float64)).reshape(5, -1).mean(-1))


@pytest.mark.parametrize("n, c", ((4, 10), (32, 3), (7, 100)))
def test_entropy_loss_matches_numpy(n, c):
  t = rand(np.random.default_rng(7), (n, c))
  p_bar = np_softmax(t).mean(0)
  assert_close(losses.entropy_loss(t), (p_bar * np.log(p_bar)).sum(), rtol=1e-5)
  assert_close(losses.entropy_loss(t, log_base=10), (p_bar * np.log10(p_bar)).sum(),
               rtol=1e-5)


def test_entropy_loss_minimal_for_uniform_class_mean():
  c = 10
  # A batch of confident predictions covering every class once: p_bar is uniform.
  uniform = 20.0 * jnp.eye(c)
  minimum = float(losses.entropy_loss(uniform))
  np.testing.assert_allclose(minimum, -math.log(c), rtol=1e-5)
  rng = np.random.default_rng(8)
  for _ in range(20):
    assert float(losses.entropy_loss(rand(rng, (c, c), 5.0))) >= minimum - 1e-6
  # All samples in one class is the maximum, 0.
  collapsed = jnp.tile(20.0 * jnp.eye(c)[:1], (c, 1))
  assert float(losses.entropy_loss(collapsed)) > -1e-3


@pytest.mark.parametrize("squared", (True, False))
def test_bn_moment_loss_matches_numpy(squared):
  rng = np.random.default_rng(9)
  moments, expected = [], 0.0
  for channels in (3, 16, 8):
    m = [rand(rng, (channels,)) for _ in range(4)]
    moments.append(losses.BNMoments(*m))
    d_mean = np.sum((m[0].astype(np.float64) - m[2]) ** 2)
    d_var = np.sum((m[1].astype(np.float64) - m[3]) ** 2)
    expected += (d_mean + d_var) if squared else (np.sqrt(d_mean) + np.sqrt(d_var))
  assert_close(losses.bn_moment_loss(moments, squared=squared), expected, rtol=1e-5)


def test_bn_moment_loss_without_layers_is_a_clear_error():
  with pytest.raises(ValueError, match="no.*BatchNorm|BN-moment weight"):
    losses.bn_moment_loss([])


def test_prior_and_generator_loss_compose_eq_11_and_15():
  rng = np.random.default_rng(10)
  s, t, f = rand(rng, (16, 10)), rand(rng, (16, 10)), rand(rng, (16, 32))
  w = losses.PriorWeights(one_hot=0.7, activation=0.3, entropy=2.0)
  p = np_softmax(t)
  p_bar = p.mean(0)
  l_oh = -np.log(p.max(-1)).mean()
  l_a = -np.abs(f.astype(np.float64)).mean()
  l_em = (p_bar * np.log(p_bar)).sum()
  prior = 0.7 * l_oh + 0.3 * l_a + 2.0 * l_em
  assert_close(losses.prior_loss(t, f, w), prior, rtol=1e-5)
  js = np_js(t, s, 3.0).mean()
  assert_close(losses.generator_loss(s, t, f, w, js_temperature=3.0), -js + prior,
               rtol=1e-5)
  # adversarial_weight=0 is DAFL's non-adversarial objective.
  assert_close(losses.generator_loss(s, t, f, w, adversarial_weight=0.0), prior, rtol=1e-5)


def test_lra_reference_js_loss_matches_official_formula():
  rng = np.random.default_rng(11)
  s, t = rand(rng, (8, 10)), rand(rng, (8, 10))
  p = np_softmax(t, 3.0)
  q = np_softmax(s, 3.0)
  m = np.clip(0.5 * (p + q), 0.01, 0.99)
  p, q = np.clip(p, 0.01, 0.99), np.clip(q, 0.01, 0.99)
  js = 0.5 * (m * (np.log(m) - np.log(p))).mean() + 0.5 * (m * (np.log(m) - np.log(q))).mean()
  assert_close(losses.lra_reference_js_loss(s, t), 1.0 - np.clip(js, 0, 1), rtol=1e-5)


# --------------------------------- MAD losses --------------------------------


def test_class_nll():
  rng = np.random.default_rng(12)
  t = rand(rng, (6, 10))
  y = rng.integers(0, 10, size=6)
  expected = -np.log(np_softmax(t)[np.arange(6), y])
  assert_close(losses.class_nll(t, jnp.asarray(y)), expected)


@pytest.mark.parametrize("gamma", (1.0, 1.1, 2.0))
def test_embedding_norm_regularizer(gamma):
  rng = np.random.default_rng(13)
  e = rand(rng, (6, 16), 1.5)
  norm = np.linalg.norm(e.astype(np.float64), axis=-1)
  assert_close(losses.embedding_norm_regularizer(e, gamma),
               np.maximum(norm - gamma * 4.0, 0.0))


def test_bound_penalty():
  v = rand(np.random.default_rng(14), (5, 7), 30.0)
  expected = np.maximum(np.abs(v.astype(np.float64)) - 20.0, 0).mean(-1)
  assert_close(losses.bound_penalty(v, 20.0), expected)


# -------------------------- stability and jit variants -----------------------

_PAIRWISE = {
    "mae": lambda s, t: losses.mae(s, t),
    "kl": lambda s, t: losses.kl_divergence(s, t, 3.0),
    "js": lambda s, t: losses.js_divergence(t, s, 3.0),
    "lra_reference_js": losses.lra_reference_js_loss,
    "generator": lambda s, t: losses.generator_loss(s, t, t),
}
_TEACHER_ONLY = {
    "one_hot": losses.one_hot_loss,
    "entropy": losses.entropy_loss,
    "class_nll": lambda t: losses.class_nll(t, jnp.zeros(t.shape[:1], jnp.int32)),
}
parametrize_extreme_scales = pytest.mark.parametrize("scale", (1e4, -1e4))


@pytest.mark.parametrize("name", sorted(_PAIRWISE))
@parametrize_extreme_scales
def test_finite_gradients_for_extreme_and_one_hot_logits(name, scale):
  fn = _PAIRWISE[name]
  rng = np.random.default_rng(15)
  student = jnp.asarray(scale * np.sign(rng.standard_normal((4, 10))), jnp.float32)
  one_hot_teacher = scale * jax.nn.one_hot(jnp.arange(4) % 10, 10)
  for teacher in (one_hot_teacher, -student):
    grads = jax.grad(lambda s, t: jnp.sum(fn(s, t)), argnums=(0, 1))(student, teacher)
    for g in grads:
      assert np.all(np.isfinite(g)), f"{name}: non-finite gradient"
    assert np.all(np.isfinite(fn(student, teacher)))


@pytest.mark.parametrize("name", sorted(_TEACHER_ONLY))
@parametrize_extreme_scales
def test_finite_gradients_teacher_losses(name, scale):
  fn = _TEACHER_ONLY[name]
  teacher = scale * jax.nn.one_hot(jnp.arange(4) % 10, 10)
  g = jax.grad(lambda t: jnp.sum(fn(t)))(teacher)
  assert np.all(np.isfinite(g))


def test_norms_have_finite_gradient_at_zero():
  g = jax.grad(lambda e: jnp.sum(losses.embedding_norm_regularizer(e, 0.0)))(
      jnp.zeros((2, 4)))
  assert np.all(np.isfinite(g))
  zero = losses.BNMoments(*(jnp.zeros(3),) * 4)
  g = jax.grad(lambda m: losses.bn_moment_loss([m], squared=False))(zero)
  assert all(np.all(np.isfinite(x)) for x in g)


@parametrize_jit_or_eager
def test_jit_and_eager_agree(transform):
  rng = np.random.default_rng(16)
  s, t, f = rand(rng, (8, 10)), rand(rng, (8, 10)), rand(rng, (8, 12))

  @transform
  def all_losses(s, t, f):
    return (losses.mae(s, t), losses.kl_divergence(s, t, 2.0),
            losses.js_divergence(s, t, 3.0), losses.generator_loss(s, t, f),
            losses.entropy_loss(t), losses.one_hot_loss(t))

  got = all_losses(s, t, f)
  reference = (np.abs(t.astype(np.float64) - s).mean(-1),
               np_kl(np_softmax(t, 2.0), np_softmax(s, 2.0)) * 4.0,
               np_js(s, t, 3.0))
  for g, r in zip(got[:3], reference):
    assert_close(g, r, rtol=1e-4, atol=1e-6)
  eager_losses = (losses.mae(s, t), losses.kl_divergence(s, t, 2.0),
                  losses.js_divergence(s, t, 3.0), losses.generator_loss(s, t, f),
                  losses.entropy_loss(t), losses.one_hot_loss(t))
  for g, e in zip(got, eager_losses):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)

"""Model zoo: parameter counts, shapes, BatchNorm semantics, features, registry."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax import models
from dfkd_jax.models import conv
from dfkd_jax.models import layers

CLASSIFIERS = [n for n in models.names() if models.is_classifier(n)]


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _abstract_init(module, *args):
  return jax.eval_shape(module.init, jax.random.key(0), *args)


def _numpy_init(module, *args, seed: int = 0):
  """Random variables with the module's structure, without compiling ``init``.

  ``module.init`` compiles one small program per random draw; NumPy draws keep these
  tests fast on a busy CPU. Variances and spectral-norm scales stay positive.
  """
  rng = np.random.default_rng(seed)
  abstract = _abstract_init(module, *jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.dtype != jnp.float32:
      return jnp.zeros(leaf.shape, leaf.dtype)
    if "'var'" in name or "sigma" in name or "'scale'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.normal(size=leaf.shape) / math.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.parametrize("name, num_classes, expected", [
    ("resnet18", 10, 11_173_962), ("resnet34", 10, 21_282_122),
    ("resnet18", 100, 11_220_132), ("resnet34", 100, 21_328_292),
    ("wrn16_1", 10, 175_066), ("wrn16_2", 10, 691_674), ("wrn40_1", 10, 563_930),
    ("wrn40_2", 10, 2_243_546), ("lenet5", 10, 61_706), ("lenet5_half", 10, 15_738),
    ("lenet5_bn", 10, 61_706 + 2 * (6 + 16 + 120)),
])
def test_classifier_parameter_counts(name, num_classes, expected):
  module = models.get(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, *models.input_shape(name)), jnp.float32)
  assert _count(_abstract_init(module, x)["params"]) == expected


def test_digits_cnn_sizes():
  for name, low, high in (("digits_cnn", 5_000, 50_000),
                          ("digits_cnn_half", 2_000, 15_000)):
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    count = _count(_abstract_init(models.get(name), x)["params"])
    assert low <= count <= high, (name, count)


def test_lra_generator_parameter_count():
  module = models.get("dafl_generator", latent_dim=1000, image_shape=(32, 32, 3))
  variables = _abstract_init(module, jax.ShapeDtypeStruct((2, 1000), jnp.float32))
  assert _count(variables["params"]) == 8_423_939


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_shapes(name):
  module = models.get(name, num_classes=7)
  shape = models.input_shape(name)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  variables = _abstract_init(module, x)
  logits, feats = jax.eval_shape(
      lambda v, x: module.apply(v, x, features=True), variables, x)
  assert logits.shape == (2, 7)
  assert feats.penultimate.ndim == 2 and feats.penultimate.shape[0] == 2
  assert len(feats.bn_moments) == len(jax.tree.leaves(
      variables.get("batch_stats", {}))) // 2
  for m in feats.bn_moments:
    assert m.batch_mean.shape == m.batch_var.shape == m.running_mean.shape


@pytest.mark.parametrize("name, kwargs, shape", [
    ("dafl_generator", dict(latent_dim=100, image_shape=(32, 32, 3)), (32, 32, 3)),
    ("dafl_generator", dict(latent_dim=100, image_shape=(32, 32, 1),
                            spectral_norm=False), (32, 32, 1)),
    ("dafl_generator", dict(latent_dim=100, image_shape=(64, 64, 3)), (64, 64, 3)),
    ("dfad_generator", dict(latent_dim=100, image_shape=(32, 32, 1)), (32, 32, 1)),
    ("dfad_generator", dict(latent_dim=256, image_shape=(32, 32, 3)), (32, 32, 3)),
    ("mad_generator", dict(latent_dim=16, image_shape=(8, 8, 1)), (8, 8, 1)),
    ("mad_generator", dict(latent_dim=64, image_shape=(32, 32, 3)), (32, 32, 3)),
    ("mad_generator", dict(latent_dim=64, image_shape=(64, 64, 3)), (64, 64, 3)),
    ("mad_generator", dict(latent_dim=64, image_shape=(256, 256, 3)), (256, 256, 3)),
])
def test_generator_shapes(name, kwargs, shape):
  module = models.get(name, num_classes=10, **kwargs)
  z = jax.ShapeDtypeStruct((2, kwargs["latent_dim"]), jnp.float32)
  variables = _abstract_init(module, z)
  images, _ = jax.eval_shape(
      lambda v, z: module.apply(v, z, train=True, mutable=["batch_stats"]), variables, z)
  assert images.shape == (2, *shape)


@pytest.mark.slow
def test_dafl_generator_output_is_batch_normalised():
  module = models.get("dafl_generator", latent_dim=32, image_shape=(8, 8, 3))
  z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32)), jnp.float32)
  variables = _numpy_init(module, z)
  images, updates = module.apply(variables, z, mutable=["batch_stats"])
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(images.var(axis=(0, 1, 2)), 1.0, atol=1e-3)
  assert "conv1_sn" in updates["batch_stats"]  # spectral-norm power iteration state
  eval_images = module.apply(variables, z, train=False)
  assert eval_images.shape == images.shape


def test_mad_generator_conditioning_and_logits():
  module = models.get("mad_generator", num_classes=5, latent_dim=16,
                      image_shape=(32, 32, 3))
  z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16)), jnp.float32)
  y = jnp.array([0, 3])
  variables = _numpy_init(module, z, y)
  assert variables["params"]["class_embedding"]["embedding"].shape == (5, 16)
  (images, logits), _ = module.apply(variables, z, y, return_logits=True,
                                     mutable=["batch_stats"])
  np.testing.assert_allclose(images, jax.nn.sigmoid(logits), atol=1e-6)
  unconditional, _ = module.apply(variables, z, mutable=["batch_stats"])
  assert not np.allclose(unconditional, images)


def test_vae_methods():
  module = models.get("vae", latent_dim=12, image_shape=(16, 16, 3))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 3)), jnp.float32)
  variables = _numpy_init(module, x, jax.random.key(2))
  (recon, mean, logvar), _ = module.apply(variables, x, jax.random.key(2),
                                          mutable=["batch_stats"])
  assert recon.shape == x.shape and mean.shape == logvar.shape == (2, 12)
  mean2, _ = module.apply(variables, x, False, method="encode")
  assert mean2.shape == (2, 12)
  assert module.apply(variables, mean2, False, method="decode").shape == x.shape



@pytest.mark.slow
def test_vae_kernel_gradients_are_conv_py_matrix_products():
  """The VAE's convolutions are ``models/conv.py``'s: on CPU their kernel gradients are
  matrix products (XLA's own is slow inside the loops the VAE trains in), with the same
  values as XLA's rules."""
  module = models.get("vae", latent_dim=12, image_shape=(16, 16, 3))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 16, 16, 3)), jnp.float32)
  variables = _numpy_init(module, x, jax.random.key(2))

  def loss(params):
    (recon, mean, _), _ = module.apply({**variables, "params": params}, x,
                                       jax.random.key(2), mutable=["batch_stats"])
    return jnp.sum(recon ** 2) + jnp.sum(mean ** 2)

  kernels = [k for k in jax.tree.leaves(variables["params"]) if k.ndim == 4]
  grads, custom_rules = {}, {}
  for mode in ("matmul", "xla"):
    with conv.kernel_gradient(mode):
      grads[mode] = jax.grad(loss)(variables["params"])
      custom_rules[mode] = str(jax.make_jaxpr(jax.grad(loss))(
          variables["params"])).count("custom_vjp_call")
  # One conv.py rule per convolution of the encoder and the decoder, none under XLA's.
  assert len(kernels) == 6 and (custom_rules["matmul"], custom_rules["xla"]) == (6, 0)
  chex.assert_trees_all_close(grads["matmul"], grads["xla"], rtol=1e-4, atol=2e-4)


def test_batchnorm_train_and_eval_semantics():
  module = models.get("digits_cnn")
  x = jnp.asarray(np.random.default_rng(1).normal(1.0, 2.0, (4, 8, 8, 1)), jnp.float32)
  variables = _numpy_init(module, x)
  variables["batch_stats"] = jax.tree.map(
      lambda a: jnp.ones_like(a) if a.ndim else a, variables["batch_stats"])
  variables["batch_stats"]["bn1"]["mean"] = jnp.zeros(32)
  logits, updates = module.apply(variables, x, train=True, features=True,
                                 mutable=["batch_stats"])
  _, feats = logits
  first = feats.bn_moments[0]
  # PyTorch momentum 0.1; running variance from the unbiased batch variance.
  n = 4 * 8 * 8
  new = updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(new["mean"], 0.1 * first.batch_mean, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * first.batch_var * n / (n - 1),
                             atol=1e-5)
  # Eval mode uses the running statistics: it changes when they do, train mode not.
  updated = {**variables, "batch_stats": updates["batch_stats"]}
  assert not np.allclose(module.apply(variables, x), module.apply(updated, x))
  train_a, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
  train_b, _ = module.apply(updated, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(train_a, train_b, atol=1e-5)


def test_batchnorm_layer_matches_manual_formula():
  bn = layers.BatchNorm(epsilon=0.8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 5)), jnp.float32)
  variables = {"params": {"scale": jnp.ones(5), "bias": jnp.zeros(5)},
               "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)}}
  (y, moments), _ = bn.apply(variables, x, True, mutable=["batch_stats"])
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 0.8), atol=1e-5)
  np.testing.assert_allclose(moments.batch_var, var, atol=1e-6)


@pytest.mark.parametrize("name", ["digits_cnn", "wrn16_1"])
def test_features_match_plain_call_and_first_bn_input(name):
  module = models.get(name)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, *models.input_shape(name))),
                  jnp.float32)
  variables = _numpy_init(module, x)
  plain = module.apply(variables, x)
  logits, feats = module.apply(variables, x, features=True)
  np.testing.assert_allclose(logits, plain, atol=1e-6)
  # The first BatchNorm's input is the first convolution of x (no bias in both nets).
  kernel = variables["params"]["conv1"]["kernel"]
  conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  first = feats.bn_moments[0]
  np.testing.assert_allclose(first.batch_mean, conv.mean(axis=(0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(first.batch_var, conv.var(axis=(0, 1, 2)), atol=1e-5)
  first_bn = {"digits_cnn": ("bn1",), "wrn16_1": ("block1_0", "bn1")}[name]
  stats = variables["batch_stats"]
  for key in first_bn:
    stats = stats[key]
  np.testing.assert_allclose(first.running_mean, stats["mean"])
  np.testing.assert_allclose(first.running_var, stats["var"])
  # Penultimate features feed the final linear layer.
  head = variables["params"]["fc"]
  np.testing.assert_allclose(feats.penultimate @ head["kernel"] + head["bias"], logits,
                             atol=1e-5)


def test_lenet_has_no_bn_moments():
  module = models.get("lenet5")
  x = jnp.ones((1, 32, 32, 1))
  variables = _numpy_init(module, x)
  logits, feats = module.apply(variables, x, features=True)
  assert feats.bn_moments == () and feats.penultimate.shape == (1, 84)
  assert logits.shape == (1, 10)


def test_lenet_bn_is_lenet_with_a_batchnorm_per_convolution():
  plain, with_bn = models.get("lenet5"), models.get("lenet5_bn")
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32, 32, 1)), jnp.float32)
  variables = _numpy_init(with_bn, x)
  params = {k: v for k, v in variables["params"].items() if not k.startswith("bn")}
  # Running statistics (mean 0, var 1) and a unit affine map: eval-mode BN is ~identity.
  identity_bn = jax.tree_util.tree_map_with_path(
      lambda path, v: (jnp.ones_like(v) if jax.tree_util.keystr(path).endswith(
          ("'var']", "'scale']")) else jnp.zeros_like(v)), variables)
  identity_bn["params"].update(params)
  np.testing.assert_allclose(with_bn.apply(identity_bn, x),
                             plain.apply({"params": params}, x), rtol=1e-4, atol=1e-4)
  assert not np.allclose(with_bn.apply(variables, x), plain.apply({"params": params}, x),
                         rtol=1e-2, atol=1e-2)
  _, feats = with_bn.apply(variables, x, train=True, features=True,
                           mutable=["batch_stats"])[0]
  assert [m.batch_mean.shape[0] for m in feats.bn_moments] == [6, 16, 120]
  conv1 = variables["params"]["conv1"]
  pre_bn = jax.lax.conv_general_dilated(x, conv1["kernel"], (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(feats.bn_moments[0].batch_mean,
                             (pre_bn + conv1["bias"]).mean(axis=(0, 1, 2)), atol=1e-5)


def test_resnet_bn_layer_count():
  module = models.get("resnet18")
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = _abstract_init(module, x)
  _, feats = jax.eval_shape(lambda v, x: module.apply(v, x, features=True), variables, x)
  assert len(feats.bn_moments) == 1 + 8 * 2 + 3
  assert [m.batch_mean.shape[0] for m in feats.bn_moments][:3] == [64, 64, 64]


def test_upsample_bilinear_aligned_corners():
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)
  y = layers.upsample_bilinear_aligned(x)
  assert y.shape == (1, 4, 6, 1)
  np.testing.assert_allclose(y[0, :, 0, 0], [0.0, 1.0, 2.0, 3.0], atol=1e-6)
  np.testing.assert_allclose(y[0, 0, :, 0], [0.0, 0.4, 0.8, 1.2, 1.6, 2.0], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 4, 4, 3),
                                   pytest.param((1, 5, 7, 2), marks=pytest.mark.slow),
                                   pytest.param((3, 1, 2, 4), marks=pytest.mark.slow)])
def test_upsample_conv3x3_is_conv_of_upsampled_input(shape):
  """The sub-pixel form equals conv3x3(upsample_nearest(x)), values and gradients."""
  import flax.linen as nn
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    fast = layers.UpsampleConv3x3(5, bias_init=nn.initializers.normal(1.0))
    variables = fast.init(jax.random.key(1), x)
    slow = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)))

    def loss(module, prepare, variables, x):
      y = module.apply(variables, prepare(x))
      return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

    (l_fast, y_fast), g_fast = jax.value_and_grad(loss, argnums=(2, 3), has_aux=True)(
        fast, lambda x: x, variables, x)
    (l_slow, y_slow), g_slow = jax.value_and_grad(loss, argnums=(2, 3), has_aux=True)(
        slow, layers.upsample_nearest, variables, x)
    assert y_fast.shape == (shape[0], 2 * shape[1], 2 * shape[2], 5)
    np.testing.assert_allclose(y_fast, y_slow, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(l_fast, l_slow, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                 g_fast, g_slow)


def test_dfad_generator_matches_pytorch():
  """DFAD's GeneratorA in PyTorch (train mode) on our parameters gives our images."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  module = models.get("dfad_generator", latent_dim=16, image_shape=(8, 8, 1),
                      base_width=4)
  z = np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32)
  variables = _numpy_init(module, jnp.asarray(z))
  images, _ = module.apply(variables, jnp.asarray(z), mutable=["batch_stats"])
  p = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), variables["params"])

  def conv(h, name):  # flax [kh, kw, in, out] -> torch [out, in, kh, kw]
    weight = p[name]["kernel"].permute(3, 2, 0, 1)
    return F.conv2d(h, weight, p[name]["bias"], padding=1)

  def bn(h, name, eps):
    scale = p[name]["scale"] if name in p else None
    bias = p[name]["bias"] if name in p else None
    return F.batch_norm(h, None, None, scale, bias, training=True, eps=eps)

  h = F.linear(torch.tensor(z), p["l1"]["kernel"].T, p["l1"]["bias"]).view(6, 8, 2, 2)
  h = F.interpolate(bn(h, "bn0", 1e-5), scale_factor=2)
  h = F.leaky_relu(bn(conv(h, "conv1"), "bn1", 1e-5), 0.2)
  h = F.interpolate(h, scale_factor=2)
  h = F.leaky_relu(bn(conv(h, "conv2"), "bn2", 1e-5), 0.2)
  h = bn(torch.tanh(conv(h, "conv3")), "bn3", 1e-5)
  np.testing.assert_allclose(np.asarray(images), h.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-4, atol=1e-4)


def test_registry_errors():
  with pytest.raises(ValueError, match="resnet34"):
    models.get("resnet50")
  with pytest.raises(ValueError, match=r"lenet5.*\(28, 28, 1\)"):
    models.get("lenet5", input_shape=(28, 28, 1))
  with pytest.raises(ValueError, match="resnet18_64"):
    models.get("resnet18", input_shape=(64, 64, 3))
  with pytest.raises(ValueError, match="divisible by 4"):
    models.get("dafl_generator", image_shape=(30, 30, 3))
  with pytest.raises(ValueError, match="8, 32, 64, 256"):
    models.get("mad_generator", image_shape=(128, 128, 3))
  with pytest.raises(ValueError, match="latent_dim"):
    models.get("dfad_generator", nz=100)
  with pytest.raises(ValueError, match="num_classes"):
    models.get("resnet18", num_classes=0)
  with pytest.raises(ValueError, match="expects NHWC"):
    models.get("lenet5").init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))
  assert set(models.names()) >= {"resnet18", "resnet34", "resnet18_64", "resnet34_64",
                                 "wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2", "lenet5",
                                 "lenet5_half", "digits_cnn", "digits_cnn_half",
                                 "dafl_generator", "dfad_generator", "mad_generator",
                                 "vae"}

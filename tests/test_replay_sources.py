"""Tests of the EMA generator and the VAE generative replay (dfkd_jax.replay)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax import models
from dfkd_jax.replay import ema
from dfkd_jax.replay import generative


def _tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)) * scale, jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(2,)) * scale, jnp.float32)},
          "embed": jnp.asarray(rng.normal(size=(4, 3)) * scale, jnp.float32)}


@pytest.mark.parametrize("decay", [0.95, 0.5, 0.0, 1.0])
def test_ema_update_matches_mad_eq5(decay):
  old, new = _tree(0), _tree(1, 5.0)
  stats = {"bn": {"mean": jnp.arange(3.0)}}
  state = ema.EMAState(old, {"bn": {"mean": jnp.zeros(3)}})
  got = ema.update(state, new, stats, decay)
  expected = jax.tree.map(lambda o, n: decay * np.asarray(o) + (1 - decay) * np.asarray(n),
                          old, new)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6),
               got.params, expected)
  np.testing.assert_array_equal(got.batch_stats["bn"]["mean"], stats["bn"]["mean"])


def test_ema_repeated_updates_are_a_geometric_average():
  """After k updates towards a fixed G: theta~ = a^k theta~_0 + (1 - a^k) theta_G."""
  a, k = 0.95, 7
  start, target = _tree(2), _tree(3)
  state = ema.init(start, {})
  update = jax.jit(functools.partial(ema.update, decay=a))
  for _ in range(k):
    state = update(state, target, {})
  expected = jax.tree.map(lambda s, t: a**k * np.asarray(s) + (1 - a**k) * np.asarray(t),
                          start, target)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6),
               state.params, expected)
  # init copies: the start tree is untouched.
  np.testing.assert_array_equal(ema.init(start, {}).params["embed"], start["embed"])


# --- VAE ----------------------------------------------------------------------------

IMAGE = (8, 8, 1)
LATENT = 8


def _teacher():
  """A small fixed linear 'teacher' x -> logits (differentiable in x)."""
  w = jnp.asarray(np.random.default_rng(5).normal(size=(64, 3)) / 8, jnp.float32)
  return lambda x: x.reshape(x.shape[0], -1) @ w


@pytest.fixture(scope="module")
def vae_and_state():
  """A fresh 8x8 VAE (its Adam state does not depend on the learning rate)."""
  vae = models.get("vae", latent_dim=LATENT, image_shape=IMAGE)
  init = jax.jit(functools.partial(generative.init, vae, image_shape=IMAGE,
                                   learning_rate=1e-3))
  return vae, init(jax.random.PRNGKey(0))


def test_vae_loss_is_pre_dfkd_formula(vae_and_state):
  vae, state = vae_and_state
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, *IMAGE)), jnp.float32)
  teacher = _teacher()
  key = jax.random.PRNGKey(1)
  loss, (_, terms) = jax.jit(lambda s: generative.vae_loss(
      s.params, s.batch_stats, vae, x, teacher(x), teacher, key, kl_weight=0.5))(state)
  (rec, mean, logvar), _ = jax.jit(lambda s: vae.apply(
      {"params": s.params, "batch_stats": s.batch_stats}, x, key, train=True,
      mutable=["batch_stats"]))(state)
  rec, mean, logvar = map(np.asarray, (rec, mean, logvar))
  recon = np.mean(np.abs(rec - np.asarray(x)))
  logit = np.mean(np.abs(np.asarray(teacher(rec)) - np.asarray(teacher(x))))
  kl = np.mean(-0.5 * np.sum(1 + logvar - mean**2 - np.exp(logvar), -1))
  np.testing.assert_allclose([terms["reconstruction"], terms["logit_reconstruction"],
                              terms["kl"]], [recon, logit, kl], rtol=1e-5)
  np.testing.assert_allclose(loss, recon + logit + 0.5 * kl, rtol=1e-5)


@pytest.mark.slow
def test_vae_reconstruction_loss_decreases_on_a_fixed_batch(vae_and_state):
  vae, state = vae_and_state
  lr = 1e-2
  # Four smooth prototypes, standardised (the decoder ends in an affine-free BatchNorm).
  grid = np.linspace(-1, 1, 8)
  protos = np.stack([np.add.outer(grid, grid), np.subtract.outer(grid, grid),
                     np.multiply.outer(grid, grid), np.add.outer(grid**2, -grid**2)])
  x = np.repeat(protos, 4, axis=0)[..., None]
  x = jnp.asarray((x - x.mean()) / x.std(), jnp.float32)
  teacher = _teacher()
  step = jax.jit(lambda s, k: generative.train_step(s, vae, lr, x, teacher(x), teacher,
                                                    k))
  losses = []
  for i in range(25):
    state, terms = step(state, jax.random.PRNGKey(i))
    losses.append(float(terms["vae_reconstruction"]))
  assert int(state.num_updates) == 25
  assert np.mean(losses[-5:]) < 0.75 * losses[0], [round(l, 3) for l in losses]


def test_latent_refinement_is_one_fresh_adam_step(vae_and_state):
  """Adam's first step from a fresh state: z - lr * g / (|g| + eps) (eps = 1e-8)."""
  vae, state = vae_and_state
  teacher = _teacher()
  z = jax.random.normal(jax.random.PRNGKey(2), (6, LATENT))
  decode = lambda codes: generative.decode(state, vae, codes, train=False)
  lr = 0.05
  got = jax.jit(lambda z: generative.refine_latents(
      z, decode, teacher, lr, one_hot=1.0, entropy=5.0, entropy_log_base=10.0))(z)

  def loss(z):
    logits = teacher(decode(z))
    log_p = jax.nn.log_softmax(logits)
    p_bar = jnp.mean(jnp.exp(log_p), 0)
    var = jnp.var(z, 0, ddof=1)
    return (jnp.mean(-jnp.max(log_p, -1)) + 5.0 * jnp.sum(p_bar * jnp.log10(p_bar))
            + jnp.mean((var - 1) ** 2) + jnp.mean(jnp.mean(z, 0) ** 2))

  g = jax.jit(jax.grad(loss))(z)
  np.testing.assert_allclose(got, z - lr * g / (jnp.abs(g) + 1e-8), rtol=1e-4, atol=1e-6)
  # The refinement lowers its loss (a small step along the sign of -g).
  loss = jax.jit(loss)
  assert float(loss(got)) < float(loss(z))

"""Generative pseudo-replay with a VAE, as in PRE-DFKD (Binici et al., AAAI 2022).

PRE-DFKD replaces the memory buffer with a VAE (:class:`dfkd_jax.models.VAE`) trained
online on the stream of generated samples; its decoder is the *memory generator* whose
samples are replayed to the student. As in the official code (kuluhan/PRE-DFKD,
``distillation.py`` and ``main.py``):

* training (:func:`train_step`): during the first 4 student steps of every iteration,
  one Adam step (learning rate = the generator's / 40) on a batch mixing half of the
  student step's fresh samples with decoder samples, minimising

      L1(x_rec, x) + L1(T(x_rec), T(x)) + 1e-5 * KL(q(z|x) || N(0, I))

  (:func:`vae_loss`; the L1s are ``F.l1_loss`` means, the KL is summed over the latent
  and averaged over the batch);
* replay (:func:`sample`): ``z ~ N(0, I)`` refined by *one* Adam step (from a fresh
  optimiser) on ``delta L_EM + L_OH`` of the teacher's outputs on the decoded samples
  plus ``MSE(var(z), 1) + MSE(mean(z), 0)`` over the batch (:func:`refine_latents`,
  PRE-DFKD's latent refinement -- reproduced here), then decoded. For the student the
  decoder runs in eval mode (BatchNorm running statistics), for the VAE's own training
  mix in training mode, as in the official code.

The replayed batch feeds the trainer's joint (eq. 5: separate means of the fresh and
replayed losses, ``pre_dfkd``) or meta (eq. 6, ``lra_pre``) update; the official
PRE-DFKD code instead takes one L1 mean over the concatenation of both batches.

Differences from the official code, kept small on purpose: the running BatchNorm
statistics of the VAE are updated only by the training forward (PyTorch also updates
them in the train-mode refinement and sampling forwards), and the very first VAE step
already mixes in (untrained) decoder samples, where the official code uses the fresh
half alone on its very first call.

:class:`VAEState` is a pytree; all functions are pure and jit-able. With ``axis_name``
(inside ``shard_map``) every batch is sharded over that axis and every mean is global.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from dfkd_jax.math import losses
from dfkd_jax.math import optimizers

Array = chex.Array
TeacherFn = Callable[[Array], Array]


class VAEState(NamedTuple):
  """The VAE of the generative replay.

  Attributes:
    params: encoder and decoder parameters.
    batch_stats: their BatchNorm running statistics.
    opt_state: Adam state (one optimiser for encoder and decoder, as two Adams with the
      same learning rate are).
    num_updates: int32 count of :func:`train_step` calls; replay is valid once > 0.
  """

  params: Any
  batch_stats: Any
  opt_state: Any
  num_updates: Array


def optimizer(learning_rate: float) -> optax.GradientTransformation:
  """PRE-DFKD's VAE optimiser: Adam (PyTorch defaults) at ``learning_rate``."""
  return optax.adam(learning_rate)


def init(vae, rng: Array, image_shape, learning_rate: float) -> VAEState:
  """A fresh VAE (``vae`` is a :class:`dfkd_jax.models.VAE`)."""
  k_init, k_noise = jax.random.split(rng)
  x = jnp.zeros((2, *image_shape), jnp.float32)
  variables = vae.init(k_init, x, k_noise, train=False)
  params = variables["params"]
  return VAEState(params, variables.get("batch_stats", {}),
                  optimizer(learning_rate).init(params), jnp.zeros((), jnp.int32))


def vae_loss(params: Any, batch_stats: Any, vae, x: Array, teacher_logits: Array,
             teacher: TeacherFn, rng: Array, kl_weight: float = 1e-5,
             axis_name: str | None = None) -> tuple[Array, tuple[Any, dict[str, Array]]]:
  """PRE-DFKD's VAE loss on one batch (training-mode forward).

  Args:
    params, batch_stats: the VAE's variables.
    vae: the :class:`dfkd_jax.models.VAE` module.
    x: ``[N, H, W, C]`` samples to reconstruct.
    teacher_logits: ``[N, C]`` the teacher's logits on ``x`` (constants).
    teacher: the frozen teacher's forward ``x -> logits`` (differentiated w.r.t. ``x``).
    rng: reparameterisation noise key.
    kl_weight: weight of the KL term (1e-5 in PRE-DFKD).
    axis_name: mesh axis the batch is sharded over.

  Returns:
    ``(loss, (new_batch_stats, terms))`` with the unweighted terms ``reconstruction``,
    ``logit_reconstruction`` and ``kl``.
  """
  (rec, mean, logvar), updates = vae.apply(
      {"params": params, "batch_stats": batch_stats}, x, rng, train=True,
      mutable=["batch_stats"])
  per_example = lambda a, b: jnp.mean(jnp.abs(a - b).reshape(a.shape[0], -1), axis=-1)
  terms = {
      "reconstruction": losses.batch_mean(per_example(rec, x), axis_name),
      "logit_reconstruction": losses.batch_mean(
          losses.mae(teacher(rec), jax.lax.stop_gradient(teacher_logits)), axis_name),
      "kl": losses.batch_mean(
          -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar), axis=-1),
          axis_name)}
  loss = terms["reconstruction"] + terms["logit_reconstruction"] + kl_weight * terms["kl"]
  return loss, (updates["batch_stats"], terms)


def train_step(state: VAEState, vae, learning_rate: float, x: Array,
               teacher_logits: Array, teacher: TeacherFn, rng: Array,
               kl_weight: float = 1e-5,
               axis_name: str | None = None) -> tuple[VAEState, dict[str, Array]]:
  """One Adam step on :func:`vae_loss`; returns the new state and the loss terms."""
  (loss, (new_stats, terms)), grads = jax.value_and_grad(vae_loss, has_aux=True)(
      state.params, state.batch_stats, vae, jax.lax.stop_gradient(x), teacher_logits,
      teacher, rng, kl_weight, axis_name)
  params, opt_state = optimizers.apply(optimizer(learning_rate), grads, state.opt_state,
                                       state.params)
  new_state = VAEState(params, new_stats, opt_state, state.num_updates + 1)
  return new_state, {"vae_loss": loss, **{f"vae_{k}": v for k, v in terms.items()}}


def decode(state: VAEState, vae, z: Array, train: bool) -> Array:
  """The decoder (memory generator) on ``z``; running statistics are not updated."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if train:
    x, _ = vae.apply(variables, z, train=True, method=vae.decode,
                     mutable=["batch_stats"])
    return x
  return vae.apply(variables, z, train=False, method=vae.decode)


def _global_mean(a: Array, axis_name: str | None) -> Array:
  mean = jnp.mean(a, axis=0)
  return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def latent_prior_loss(z: Array, axis_name: str | None = None) -> Array:
  """PRE-DFKD's ``MSE(var(z), 1) + MSE(mean(z), 0)`` over the (global) batch.

  ``var`` is PyTorch's unbiased ``torch.var(z, dim=0)``; both MSEs average over the
  latent dimensions.
  """
  n = z.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  mean = _global_mean(z, axis_name)
  var = _global_mean(jnp.square(z - mean), axis_name) * (n / max(n - 1, 1))
  return jnp.mean(jnp.square(var - 1.0)) + jnp.mean(jnp.square(mean))


def refine_latents(z: Array, decode_fn: Callable[[Array], Array], teacher: TeacherFn,
                   learning_rate: float, one_hot: float = 1.0, entropy: float = 5.0,
                   entropy_log_base: float | None = 10.0,
                   axis_name: str | None = None) -> Array:
  """PRE-DFKD's latent refinement: one step of a fresh Adam on ``z``.

  Minimises ``entropy * L_EM + one_hot * L_OH`` of the teacher's outputs on
  ``decode_fn(z)`` (LRA eqs. 12 and 14; PRE-DFKD uses ``log10`` in the entropy) plus
  :func:`latent_prior_loss`. A fresh Adam's first step is ``-lr * g / (|g| + eps)``.

  Args:
    z: ``[N, latent_dim]`` latent codes (this device's rows under ``shard_map``).
    decode_fn: ``z -> x``, the decoder.
    teacher: ``x -> logits``, the frozen teacher.
    learning_rate: Adam's learning rate (PRE-DFKD: the generator's).
    one_hot, entropy, entropy_log_base: the prior weights (PRE-DFKD: oh, ie, log10).
    axis_name: mesh axis ``z`` is sharded over.

  Returns:
    The refined ``z`` (gradient-stopped).
  """

  def loss_fn(z):
    logits = teacher(decode_fn(z))
    return (one_hot * losses.batch_mean(losses.one_hot_loss(logits), axis_name)
            + entropy * losses.entropy_loss(logits, entropy_log_base, axis_name)
            + latent_prior_loss(z, axis_name))

  grad = jax.grad(loss_fn)(z)
  adam = optax.adam(learning_rate)
  updates, _ = adam.update(grad, adam.init(z), z)
  return jax.lax.stop_gradient(z + updates)


def sample(state: VAEState, vae, z: Array, teacher: TeacherFn, *, train: bool = False,
           refine: bool = True, refine_learning_rate: float = 1e-3,
           one_hot: float = 1.0, entropy: float = 5.0,
           entropy_log_base: float | None = 10.0,
           axis_name: str | None = None) -> Array:
  """Replay samples: the decoder on (refined) ``z ~ N(0, I)``, gradient-stopped.

  Args:
    state, vae: the VAE.
    z: ``[N, latent_dim]`` standard-normal codes.
    teacher: ``x -> logits``, for the refinement.
    train: decoder BatchNorm with batch statistics (True) or running ones (False).
    refine: apply :func:`refine_latents` first.
    refine_learning_rate, one_hot, entropy, entropy_log_base, axis_name: see
      :func:`refine_latents`.

  Returns:
    ``[N, H, W, C]`` samples.
  """
  decode_fn = lambda codes: decode(state, vae, codes, train)
  if refine:
    z = refine_latents(z, decode_fn, teacher, refine_learning_rate, one_hot, entropy,
                       entropy_log_base, axis_name)
  return jax.lax.stop_gradient(decode_fn(z))

"""A meta-learned initialisation: a few inner Adam steps from a shared start, and the
gradient that moves the start.

Fast DFKD (Fang et al., "Up to 100x Faster Data-free Knowledge Distillation", AAAI 2022,
Sec. "Fast Data Synthesis") synthesises every batch with a *copy* of a shared generator
``theta_0``, adapted together with fresh latent codes ``z`` for a few steps, and then
moves ``theta_0`` -- the meta-learned initialisation, or "common features" -- so that a
few steps reach a good batch the next time (MAML, Finn et al., ICML 2017; its first-order
form and Reptile, Nichol et al., 2018).

:func:`inner_loop`: from ``(theta_0, z_0)``, ``g`` steps

    (theta_{k+1}, z_{k+1}) = Adam((theta_k, z_k), grad L_k(theta_k, z_k)),  k < g,

with Adam as PyTorch computes it (bias-corrected, ``eps`` outside the square root), a
fresh state every round, the parameters at ``learning_rate`` and ``z`` at
``z_learning_rate`` (the official code: one ``torch.optim.Adam`` with two parameter
groups, ``datafree/synthesis/fast_meta.py`` L123-126). Each step's loss ``L_k`` gets its
own key (the augmentation differs per step).

The meta-gradient of ``theta_0`` (:data:`META_GRADIENTS`, :func:`meta_gradient`):

* ``first_order``: ``sum_{k<g} grad_theta L_k(theta_k, z_k)``, what the official code
  accumulates into the meta generator's ``.grad`` at every inner step (``fomaml_grad``,
  L23-27, called at L160-163). It is the gradient of ``sum_k L_k`` with every Jacobian
  ``d theta_k / d theta_0`` replaced by the identity (first-order MAML).
* ``reptile``: ``s (theta_0 - theta_g)`` with ``s = 67`` (``reptile_grad``, L16-20): the
  direction from the adapted copy back to the start; a descent step on it moves
  ``theta_0`` towards ``theta_g``.
* ``exact``: ``jax.grad`` of a meta-objective through the ``g`` Adam steps (second
  order, the Hessian-vector terms included): ``"final"``, ``L(theta_g, z_g)``, the loss
  of the adapted copy (MAML's objective), or ``"sum"``, ``sum_{k<g} L_k(theta_k, z_k)``,
  the objective whose first-order approximation is ``first_order``.
* ``keep``: no meta-learning: the generator *is* the adapted copy, ``theta_0 <-
  theta_g``, trained on round after round with a fresh Adam state each (NAYER, Tran et
  al., CVPR 2024, ``datafree/synthesis/nayer.py``: one generator, a new
  ``torch.optim.Adam`` per round). Its gradient is zero and the caller keeps
  :attr:`InnerResult.params` instead (the trait :attr:`MetaGradient.keeps_adapted`).

The caller applies the meta-gradient with its meta optimiser (the official code: Adam at
``g x`` the inner learning rate, betas ``(0.5, 0.999)``, L87-90). Everything here is a
pure function of pytrees; ``z`` and the step loss may be per-device inside
``shard_map`` (the loss then reduces over the mesh itself).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dfkd_jax.core import registry

Array = chex.Array
Params = Any
#: ``(params, z, state, key) -> (loss, (new_state, outputs))``: one inner step's loss
#: with what it carries forward undifferentiated (``state``, e.g. BatchNorm running
#: statistics) and what the caller keeps of each step (``outputs``, stacked).
StepLoss = Callable[..., tuple[Array, tuple[Any, Any]]]

#: The official Reptile scale (``reptile_grad``'s ``alpha=67``). Adam divides it out up
#: to ``eps``; it is kept so that the meta optimiser sees the official numbers.
REPTILE_SCALE = 67.0
EXACT_OBJECTIVES = ("final", "sum")


class AdamState(NamedTuple):
  """Adam's state for one parameter group: steps done, first and second moments."""

  count: Array
  mu: Any
  nu: Any


def adam_init(params: Params) -> AdamState:
  """A fresh Adam state (zero moments) for ``params``."""
  zeros = jax.tree.map(jnp.zeros_like, params)
  return AdamState(jnp.zeros((), jnp.int32), zeros, zeros)


def _sqrt(x: Array) -> Array:
  """``sqrt(x)`` with derivative 0 (not infinity) at ``x = 0``.

  A parameter whose gradient is 0 keeps ``nu = 0``; its exact meta-gradient would
  otherwise be ``inf * 0 = NaN``. The value is PyTorch's.
  """
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def adam_update(grads: Params, state: AdamState, params: Params, learning_rate,
                b1: float, b2: float, eps: float) -> tuple[Params, AdamState]:
  """One Adam step as ``torch.optim.Adam`` takes it (no weight decay, no amsgrad).

  ``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` with
  ``m <- b1 m + (1 - b1) g`` and ``v <- b2 v + (1 - b2) g^2``. Differentiable in every
  argument (second-order meta-gradients go through it).

  Returns:
    ``(new_params, new_state)``.
  """
  count = state.count + 1
  t = count.astype(jnp.result_type(float))  # float64 under jax_enable_x64.
  mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
  nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
  step_size = learning_rate / (1 - b1 ** t)
  root_c2 = jnp.sqrt(1 - b2 ** t)
  params = jax.tree.map(lambda p, m, v: p - step_size * m / (_sqrt(v) / root_c2 + eps),
                        params, mu, nu)
  return params, AdamState(count, mu, nu)


class InnerOptions(NamedTuple):
  """The inner loop: ``steps`` Adam steps (``g`` of Fast-g), its learning rates
  (parameters, latent codes), betas and ``eps``."""

  steps: int
  learning_rate: float
  z_learning_rate: float
  b1: float = 0.5
  b2: float = 0.999
  eps: float = 1e-8


class InnerResult(NamedTuple):
  """What an inner loop returns.

  Attributes:
    params: ``theta_g``, the adapted copy.
    z: ``z_g``, the adapted latent codes.
    state: the undifferentiated carry after the ``g`` steps.
    losses: ``[g]``, ``L_k(theta_k, z_k)`` (the loss each step differentiated).
    outputs: the step loss's outputs, stacked on a leading ``[g]`` axis.
    grad_sum: ``sum_k grad_theta L_k(theta_k, z_k)`` (constant: no gradient flows
      through it).
  """

  params: Params
  z: Array
  state: Any
  losses: Array
  outputs: Any
  grad_sum: Params


def _constant_step(old: Array, new: Array) -> Array:
  """``new``'s value with the derivative of ``old`` (identity): ``new - old`` is a
  constant. Exactly ``new`` in floating point (``old - old`` is 0)."""
  return jax.lax.stop_gradient(new) + (old - jax.lax.stop_gradient(old))


def inner_loop(step_loss: StepLoss, params: Params, z: Array, state: Any, keys: Array,
               options: InnerOptions, *, first_order: bool = False,
               unroll: bool = False) -> InnerResult:
  """``options.steps`` Adam steps on ``(params, z)`` from fresh optimiser states.

  Args:
    step_loss: the inner loss (:data:`StepLoss`).
    params: ``theta_0``.
    z: ``z_0``.
    state: the undifferentiated carry's start.
    keys: ``[g]`` keys, one per step (``keys[k]`` goes to ``L_k``).
    options: the steps, learning rates, betas, ``eps``.
    first_order: take every step's update as a constant (``stop_gradient``), so that a
      gradient of a function of the loop's results w.r.t. ``params`` sees
      ``d theta_k / d theta_0 = I`` and ``d z_k / d theta_0 = 0`` (first-order MAML);
      the loop computes the same values either way.
    unroll: trace the steps out instead of ``lax.scan``.

  Returns:
    :class:`InnerResult`.
  """
  o = options

  def body(carry, key):
    params, z, state, p_opt, z_opt, grad_sum = carry
    (loss, (new_state, out)), (g_params, g_z) = jax.value_and_grad(
        step_loss, argnums=(0, 1), has_aux=True)(params, z, state, key)
    new_params, p_opt = adam_update(g_params, p_opt, params, o.learning_rate, o.b1,
                                    o.b2, o.eps)
    new_z, z_opt = adam_update(g_z, z_opt, z, o.z_learning_rate, o.b1, o.b2, o.eps)
    if first_order:  # theta_{k+1} = theta_k + constant: the Jacobians are identities.
      new_params = jax.tree.map(_constant_step, params, new_params)
      new_z = _constant_step(z, new_z)
    grad_sum = jax.tree.map(lambda s, g: s + jax.lax.stop_gradient(g), grad_sum,
                            g_params)
    carry = (new_params, new_z, jax.lax.stop_gradient(new_state), p_opt, z_opt,
             grad_sum)
    return carry, (loss, out)

  carry = (params, z, state, adam_init(params), adam_init(z),
           jax.tree.map(jnp.zeros_like, params))
  if unroll:
    outs = []
    for k in range(o.steps):
      carry, out = body(carry, keys[k])
      outs.append(out)
    losses, outputs = jax.tree.map(lambda *ys: jnp.stack(ys), *outs)
  else:
    carry, (losses, outputs) = jax.lax.scan(body, carry, keys[:o.steps])
  params, z, state, _, _, grad_sum = carry
  return InnerResult(params, z, state, losses, outputs, grad_sum)


def reptile_gradient(params0: Params, adapted: Params,
                     scale: float = REPTILE_SCALE) -> Params:
  """``scale * (theta_0 - theta_g)`` (official ``reptile_grad``): a gradient-descent
  step of size ``lr`` on it is ``theta_0 += lr * scale * (theta_g - theta_0)``."""
  return jax.tree.map(lambda p, q: scale * (p - jax.lax.stop_gradient(q)), params0,
                      adapted)


def meta_objective(params0: Params, z0: Array, state0: Any, keys: Array,
                   final_key: Array, step_loss: StepLoss, options: InnerOptions, *,
                   objective: str = "final", first_order: bool = False,
                   unroll: bool = False) -> tuple[Array, tuple[InnerResult, Array]]:
  """The scalar meta-objective of ``theta_0`` through the inner loop.

  ``"final"``: ``L(theta_g, z_g)``, one more evaluation of ``step_loss`` (key
  ``final_key``) after the ``g`` steps; ``"sum"``: ``sum_{k<g} L_k(theta_k, z_k)``.
  ``jax.grad`` of it is the exact (second-order) meta-gradient; with ``first_order``
  it is the first-order one (for ``"sum"``: :attr:`InnerResult.grad_sum`).

  Returns:
    ``(objective, (inner_result, final_loss))``; ``final_loss`` is the ``"final"``
    value, or NaN for ``"sum"`` (no extra evaluation).
  """
  if objective not in EXACT_OBJECTIVES:
    raise ValueError(f"objective={objective!r}; valid: {', '.join(EXACT_OBJECTIVES)}")
  result = inner_loop(step_loss, params0, z0, state0, keys, options,
                      first_order=first_order, unroll=unroll)
  if objective == "final":
    final, _ = step_loss(result.params, result.z, result.state, final_key)
    return final, (result, jax.lax.stop_gradient(final))
  return jnp.sum(result.losses), (result, jnp.full((), jnp.nan, result.losses.dtype))


class MetaGradient(NamedTuple):
  """A registered meta-gradient and its traits.

  Attributes:
    second_order: it differentiates through the inner steps (``jax.grad`` of the
      meta-objective; about twice the inner loop's memory and time).
    description: one line.
    from_inner: ``(theta_0, inner_result) -> grads`` of a first-order kind (``None``
      for the second-order one, computed by :func:`meta_objective`).
    keeps_adapted: the start is replaced by the adapted copy ``theta_g`` (no meta
      optimiser step).
  """

  second_order: bool
  description: str
  from_inner: Callable[[Params, InnerResult], Params] | None = None
  keeps_adapted: bool = False


#: The meta-gradients of the initialisation (a Fast method's ``meta_gradient``).
META_GRADIENTS: registry.Registry[MetaGradient] = registry.Registry("meta gradient")
META_GRADIENTS.register("first_order", MetaGradient(
    False, "sum of the inner steps' gradients (first-order MAML, the official fomaml)",
    lambda params0, result: result.grad_sum))
META_GRADIENTS.register("reptile", MetaGradient(
    False, "67 (theta_0 - theta_g), the official Reptile",
    lambda params0, result: reptile_gradient(params0, result.params)))
META_GRADIENTS.register("exact", MetaGradient(
    True, "jax.grad of the meta-objective through the inner Adam steps"))
META_GRADIENTS.register("keep", MetaGradient(
    False, "none: the generator keeps the adapted copy (NAYER)",
    lambda params0, result: jax.tree.map(jnp.zeros_like, params0), keeps_adapted=True))


def meta_gradient(kind: str, step_loss: StepLoss, params0: Params, z0: Array,
                  state0: Any, keys: Array, final_key: Array, options: InnerOptions, *,
                  objective: str = "final", unroll: bool = False
                  ) -> tuple[Params, InnerResult, Array]:
  """Runs the inner loop and returns the meta-gradient ``kind`` of ``theta_0``.

  Args:
    kind: a name of :data:`META_GRADIENTS`.
    step_loss, params0, z0, state0, keys, options, unroll: as in :func:`inner_loop`.
    final_key: the key of the extra evaluation of the ``"final"`` objective (exact).
    objective: the exact meta-objective, ``"final"`` or ``"sum"``.

  Returns:
    ``(grads, inner_result, final_loss)``; ``final_loss`` is NaN but for ``exact``
    with ``"final"``.
  """
  entry = META_GRADIENTS.get(kind)
  if entry.second_order:
    grads, (result, final) = jax.grad(meta_objective, has_aux=True)(
        params0, z0, state0, keys, final_key, step_loss, options, objective=objective,
        unroll=unroll)
    return grads, result, final
  result = inner_loop(step_loss, params0, z0, state0, keys, options, unroll=unroll)
  return (entry.from_inner(params0, result), result,
          jnp.full((), jnp.nan, result.losses.dtype))

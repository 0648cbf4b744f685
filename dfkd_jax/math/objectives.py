"""Student update objectives of adversarial DFKD, as pure functions of pytrees.

Equation numbers refer to Patel et al., "Learning to Retain while Acquiring" (LRA),
CVPR 2023 (``../shared/papers/learning_to_retain_while_acquiring_cvpr2023.txt``).

Three objectives over the student parameters ``theta``:

* :func:`acquire` -- knowledge acquisition only, ``L_acq(theta)`` (eq. 3);
* :func:`joint` -- acquisition + retention, ``L_acq(theta) + L_ret(theta)`` (eq. 5),
  the MB-DFKD / PRE-DFKD update;
* :func:`meta` -- the LRA meta-objective (eq. 6)

      L_acq(theta) + L_ret(theta'),   theta' = theta - alpha * grad L_acq(theta),

  differentiated *exactly* (second order) with ``jax.grad``: the gradient contains the
  Hessian-vector term ``-alpha * H_acq(theta) grad L_ret(theta')``. The official PyTorch
  code builds ``theta'`` with ``higher.innerloop_ctx(..., copy_initial_weights=True)``
  (the default), so the retention gradient lands on throw-away copies of the weights and
  never reaches the student; here it does. ``first_order=True`` gives the first-order
  approximation (inner gradient treated as a constant), which drops exactly that term.

The student is given as an :data:`ApplyFn` ``(params, batch_stats, x) -> (logits,
new_batch_stats)`` that runs the network in *training* mode: BatchNorm normalises with
the statistics of the batch it is given and returns updated running statistics.
:func:`flax_apply_fn` makes one from a Flax Linen module.

BatchNorm. Every forward normalises with its own batch's statistics: ``L_acq(theta)`` on
the fresh batch, ``L_ret(theta)`` and ``L_ret(theta')`` on the replayed batch, each a
separate forward, so the loss of one batch never depends on the other batch through
BatchNorm. The running statistics kept after the step are those of the acquisition
forward at ``theta``: ``theta`` is the parameter that persists (``theta'`` is a
throw-away point), and the fresh samples are the current distribution, the one the
student is being moved towards. The retention forwards' running statistics are dropped.

Every objective returns an :class:`ObjectiveOutput`: the loss, its gradient, the new
running statistics and :class:`Diagnostics` -- ``L_acq(theta)``, ``L_ret(theta)``,
``L_ret(theta')`` and the alignment (dot product and cosine) between ``grad L_acq`` and
``grad L_ret`` at ``theta``, which Section 3.4 (eq. 8) predicts the meta-objective
increases.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dfkd_jax.core import registry
from dfkd_jax.math import losses

Array = chex.Array
Params = Any
BatchStats = Any
ApplyFn = Callable[[Params, BatchStats, Array], tuple[Array, BatchStats]]
KDLoss = Callable[[Array, Array], Array]


class KDBatch(NamedTuple):
  """Samples and the frozen teacher's logits on them."""

  x: Array
  teacher_logits: Array


class InnerStep(enum.Enum):
  """How ``theta'`` is formed from ``theta`` in the meta-objective (eq. 6).

  SGD: ``theta' = theta - alpha * g`` (eq. 6 as written).
  SGD_WEIGHT_DECAY: ``theta' = theta - alpha * (g + wd * theta)``, the first step of the
    official code's inner optimiser (``SGD(lr=alpha, momentum=0.9, weight_decay=wd)``,
    recreated at every step, so its momentum buffer is empty and the first step is
    plain SGD on the weight-decayed gradient).
  """

  SGD = "sgd"
  SGD_WEIGHT_DECAY = "sgd_weight_decay"


class Diagnostics(NamedTuple):
  """Per-step scalars. Entries an objective does not compute are NaN."""

  loss_acq: Array            # L_acq(theta)
  loss_ret: Array            # L_ret(theta)
  loss_ret_adapted: Array    # L_ret(theta'), meta only
  grad_dot: Array            # <grad L_acq(theta), grad L_ret(theta)>
  grad_cosine: Array         # the same, normalised


class ObjectiveOutput(NamedTuple):
  loss: Array
  grads: Params
  batch_stats: BatchStats
  diagnostics: Diagnostics


_NAN = float("nan")


def flax_apply_fn(module) -> ApplyFn:
  """Training-mode :data:`ApplyFn` of a Flax Linen classifier.

  The module must take ``(x, train=...)`` and keep its BatchNorm statistics in the
  ``batch_stats`` collection (an empty dict if it has none).
  """

  def apply_fn(params, batch_stats, x):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits, updates["batch_stats"]
    return module.apply(variables, x, train=True), batch_stats

  return apply_fn


def kd_loss_value(params: Params, batch_stats: BatchStats, apply_fn: ApplyFn,
                  batch: KDBatch, kd_loss: KDLoss = losses.mae,
                  axis_name: str | None = None) -> tuple[Array, BatchStats]:
  """``E_x[L(T(x), S_theta(x))]`` on one batch (eqs. 3 and 4) and the new BN stats.

  With ``axis_name`` the batch is sharded over that mesh axis (inside ``shard_map``) and
  the mean is the global one; gradients of replicated parameters are then the global
  batch's (``shard_map`` sums them over the axis), with no ``pmean`` of gradients.
  """
  logits, new_stats = apply_fn(params, batch_stats, batch.x)
  return losses.batch_mean(kd_loss(logits, batch.teacher_logits), axis_name), new_stats


def _alignment(g_acq: Params, g_ret: Params) -> tuple[Array, Array]:
  dot = _tree_vdot(g_acq, g_ret)
  norms = jnp.sqrt(_tree_vdot(g_acq, g_acq) * _tree_vdot(g_ret, g_ret))
  cosine = jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)
  return dot, cosine


def _tree_vdot(a: Params, b: Params) -> Array:
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
  return sum(leaves, jnp.zeros((), jnp.result_type(*leaves)))


def alignment(params: Params, batch_stats: BatchStats, apply_fn: ApplyFn,
              acq: KDBatch, ret: KDBatch, *, kd_loss: KDLoss = losses.mae,
              axis_name: str | None = None) -> tuple[Array, Array, Array]:
  """The gradient alignment of Sec. 3.4 at ``params``: ``L_ret(theta)``,
  ``<grad L_acq, grad L_ret>`` and their cosine (0 when a gradient is 0).

  What :func:`meta` computes ``with_alignment``, as a first-order computation of its
  own (two forward/backward passes), so that the training loop can take it once per
  iteration outside its loop of meta steps.

  Returns:
    ``(loss_ret, dot, cosine)``.
  """
  grad_fn = jax.value_and_grad(kd_loss_value, has_aux=True)
  _, g_acq = grad_fn(params, batch_stats, apply_fn, acq, kd_loss, axis_name)
  (loss_ret, _), g_ret = grad_fn(params, batch_stats, apply_fn, ret, kd_loss, axis_name)
  return (loss_ret, *_alignment(g_acq, g_ret))


def acquire(params: Params, batch_stats: BatchStats, apply_fn: ApplyFn,
            acq: KDBatch, *, kd_loss: KDLoss = losses.mae,
            axis_name: str | None = None) -> ObjectiveOutput:
  """Knowledge acquisition, ``min L_acq(theta)`` (eq. 3).

  Args:
    params: student parameters ``theta``.
    batch_stats: student BatchNorm running statistics.
    apply_fn: training-mode forward, see :data:`ApplyFn`.
    acq: fresh samples ``x = G(z)`` with the teacher's logits.
    kd_loss: per-example student loss (MAE, eq. 2, by default).
    axis_name: mesh axis the batches are sharded over, see :func:`kd_loss_value`.

  Returns:
    :class:`ObjectiveOutput`; only ``loss_acq`` is set in the diagnostics.
  """
  (loss, new_stats), grads = jax.value_and_grad(kd_loss_value, has_aux=True)(
      params, batch_stats, apply_fn, acq, kd_loss, axis_name)
  nan = jnp.full((), _NAN, loss.dtype)
  return ObjectiveOutput(loss, grads, new_stats,
                         Diagnostics(loss, nan, nan, nan, nan))


def joint(params: Params, batch_stats: BatchStats, apply_fn: ApplyFn,
          acq: KDBatch, ret: KDBatch, *, kd_loss: KDLoss = losses.mae,
          retention_weight: float | Array = 1.0,
          axis_name: str | None = None) -> ObjectiveOutput:
  """Acquisition + retention, ``min L_acq(theta) + w * L_ret(theta)`` (eq. 5, w = 1).

  The two gradients are computed separately (each batch in its own forward), which
  gives their alignment for free.

  Args:
    params, batch_stats, apply_fn, acq, kd_loss, axis_name: as in :func:`acquire`.
    ret: replayed samples ``x_m ~ M`` with the teacher's logits.
    retention_weight: ``w``; a traced 0 turns the step into :func:`acquire` without
      recompiling (used while the replay memory is still empty).

  Returns:
    :class:`ObjectiveOutput` with ``loss_acq``, ``loss_ret`` and the alignment.
  """
  grad_fn = jax.value_and_grad(kd_loss_value, has_aux=True)
  (loss_acq, new_stats), g_acq = grad_fn(params, batch_stats, apply_fn, acq, kd_loss, axis_name)
  (loss_ret, _), g_ret = grad_fn(params, batch_stats, apply_fn, ret, kd_loss, axis_name)
  grads = jax.tree.map(lambda a, r: a + retention_weight * r, g_acq, g_ret)
  dot, cosine = _alignment(g_acq, g_ret)
  nan = jnp.full((), _NAN, loss_acq.dtype)
  return ObjectiveOutput(loss_acq + retention_weight * loss_ret, grads, new_stats,
                         Diagnostics(loss_acq, loss_ret, nan, dot, cosine))


def inner_update(params: Params, grads: Params, alpha: float | Array,
                 inner_step: InnerStep = InnerStep.SGD,
                 weight_decay: float = 0.0) -> Params:
  """``theta' = theta - alpha * g`` or ``theta - alpha * (g + wd * theta)``."""
  inner_step = InnerStep(inner_step)
  if inner_step is InnerStep.SGD:
    return jax.tree.map(lambda p, g: p - alpha * g, params, grads)
  return jax.tree.map(lambda p, g: p - alpha * (g + weight_decay * p), params, grads)


def meta_objective(params: Params, batch_stats: BatchStats, apply_fn: ApplyFn,
                   acq: KDBatch, ret: KDBatch, *, alpha: float | Array,
                   inner_step: InnerStep = InnerStep.SGD, weight_decay: float = 0.0,
                   first_order: bool = False, kd_loss: KDLoss = losses.mae,
                   retention_weight: float | Array = 1.0,
                   axis_name: str | None = None):
  """The scalar LRA meta-objective ``L_acq(theta) + w * L_ret(theta')`` (eq. 6).

  A plain function of ``params``: ``jax.grad`` of it is the exact second-order
  meta-gradient (with ``first_order=False``).

  Returns:
    ``(loss, (new_batch_stats, loss_acq, loss_ret_adapted, grad_acq))`` where
    ``grad_acq = grad L_acq(theta)`` (stopped) for diagnostics.
  """
  grad_fn = jax.value_and_grad(kd_loss_value, has_aux=True)
  (loss_acq, new_stats), g_acq = grad_fn(params, batch_stats, apply_fn, acq, kd_loss, axis_name)
  g_inner = jax.lax.stop_gradient(g_acq) if first_order else g_acq
  adapted = inner_update(params, g_inner, alpha, inner_step, weight_decay)
  loss_ret_adapted, _ = kd_loss_value(adapted, batch_stats, apply_fn, ret, kd_loss,
                                      axis_name)
  loss = loss_acq + retention_weight * loss_ret_adapted
  aux = (new_stats, loss_acq, loss_ret_adapted, jax.lax.stop_gradient(g_acq))
  return loss, aux


def meta(params: Params, batch_stats: BatchStats, apply_fn: ApplyFn,
         acq: KDBatch, ret: KDBatch, *, alpha: float | Array,
         inner_step: InnerStep = InnerStep.SGD, weight_decay: float = 0.0,
         first_order: bool = False, kd_loss: KDLoss = losses.mae,
         retention_weight: float | Array = 1.0,
         with_alignment: bool = True,
         axis_name: str | None = None) -> ObjectiveOutput:
  """LRA meta update: gradient of ``L_acq(theta) + L_ret(theta - alpha grad L_acq)``.

  Args:
    params, batch_stats, apply_fn, acq, ret, kd_loss, axis_name: as in :func:`joint`.
    alpha: inner step size ``alpha > 0``.
    inner_step: form of the inner step, see :class:`InnerStep`.
    weight_decay: ``wd`` for :attr:`InnerStep.SGD_WEIGHT_DECAY`.
    first_order: stop the gradient through the inner gradient (first-order MAML-style
      approximation); the default is the exact second-order gradient.
    retention_weight: weight of the meta-test term; a traced 0 makes this
      :func:`acquire` without recompiling.
    with_alignment: also compute ``grad L_ret(theta)`` (one more forward/backward on
      the small replayed batch) for ``loss_ret`` and the alignment diagnostics.

  Returns:
    :class:`ObjectiveOutput`.
  """
  (loss, aux), grads = jax.value_and_grad(meta_objective, has_aux=True)(
      params, batch_stats, apply_fn, acq, ret, alpha=alpha, inner_step=inner_step,
      weight_decay=weight_decay, first_order=first_order, kd_loss=kd_loss,
      retention_weight=retention_weight, axis_name=axis_name)
  new_stats, loss_acq, loss_ret_adapted, g_acq = aux
  nan = jnp.full((), _NAN, loss.dtype)
  if with_alignment:
    (loss_ret, _), g_ret = jax.value_and_grad(kd_loss_value, has_aux=True)(
        params, batch_stats, apply_fn, ret, kd_loss, axis_name)
    dot, cosine = _alignment(g_acq, g_ret)
  else:
    loss_ret = dot = cosine = nan
  return ObjectiveOutput(loss, grads, new_stats,
                         Diagnostics(loss_acq, loss_ret, loss_ret_adapted, dot, cosine))


# ---------------------------------------------------------------------------
# The registry of student updates, one signature.
# ---------------------------------------------------------------------------


class MetaOptions(NamedTuple):
  """The inner step of the meta update (eq. 6): ``alpha``, its form and weight decay."""

  alpha: float
  inner_step: InnerStep = InnerStep.SGD
  weight_decay: float = 0.0


# ``(params, batch_stats, apply_fn, acq, ret, *, retention_weight, with_alignment,
# kd_loss, axis_name, alpha_scale=1.0) -> ObjectiveOutput``; ``ret`` is ``None`` for
# ``acquire``; the meta rules take ``alpha * alpha_scale`` as the inner step size.
StudentUpdate = Callable[..., ObjectiveOutput]


class UpdateRule(NamedTuple):
  """A registered student update rule and its traits.

  Attributes:
    make: ``meta_options -> StudentUpdate`` (``meta_options`` is ignored by the rules
      that are not meta rules).
    needs_retention: whether it takes a retention batch (all but ``acquire``).
    is_meta: whether it is a meta rule (eq. 6): it reads ``config.meta`` and can log
      the gradient alignment of Section 3.4.
  """

  make: Callable[["MetaOptions | None"], StudentUpdate]
  needs_retention: bool
  is_meta: bool


def _acquire_rule(meta_options):
  del meta_options

  def update(params, batch_stats, apply_fn, acq, ret, *, retention_weight,
             with_alignment, kd_loss, axis_name, alpha_scale=1.0):
    del ret, retention_weight, with_alignment, alpha_scale
    return acquire(params, batch_stats, apply_fn, acq, kd_loss=kd_loss,
                   axis_name=axis_name)

  return update


def _joint_rule(meta_options):
  del meta_options

  def update(params, batch_stats, apply_fn, acq, ret, *, retention_weight,
             with_alignment, kd_loss, axis_name, alpha_scale=1.0):
    del with_alignment, alpha_scale
    return joint(params, batch_stats, apply_fn, acq, ret,
                 retention_weight=retention_weight, kd_loss=kd_loss,
                 axis_name=axis_name)

  return update


def _meta_rule(first_order: bool):
  """The meta update (eq. 6), exact or first-order, with its inner step."""

  def make(meta_options):
    def update(params, batch_stats, apply_fn, acq, ret, *, retention_weight,
               with_alignment, kd_loss, axis_name, alpha_scale=1.0):
      return meta(params, batch_stats, apply_fn, acq, ret,
                  alpha=meta_options.alpha * alpha_scale,
                  inner_step=meta_options.inner_step,
                  weight_decay=meta_options.weight_decay, first_order=first_order,
                  retention_weight=retention_weight, with_alignment=with_alignment,
                  kd_loss=kd_loss, axis_name=axis_name)

    return update

  return make


#: The student update rules (``config.student_update``, a method's ``student_update``).
UPDATE_RULES: registry.Registry[UpdateRule] = registry.Registry("student update")
UPDATE_RULES.register("acquire", UpdateRule(_acquire_rule, False, False))
UPDATE_RULES.register("joint", UpdateRule(_joint_rule, True, False))
UPDATE_RULES.register("meta", UpdateRule(_meta_rule(first_order=False), True, True))
UPDATE_RULES.register("meta_first_order",
                      UpdateRule(_meta_rule(first_order=True), True, True))


def get(name: str, meta_options: MetaOptions | None = None) -> StudentUpdate:
  """The student update ``name`` with the signature of :data:`StudentUpdate`.

  Args:
    name: ``acquire`` (eq. 3), ``joint`` (eq. 5), ``meta`` (eq. 6, exact) or
      ``meta_first_order``.
    meta_options: the inner step of the meta updates (required for them).

  Raises:
    ValueError: an unknown name, or a meta update without ``meta_options``.
  """
  rule = UPDATE_RULES.get(name)
  if rule.is_meta and meta_options is None:
    raise ValueError(f"the {name!r} update needs MetaOptions (alpha, inner step)")
  return rule.make(meta_options)

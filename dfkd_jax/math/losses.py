"""Pure losses of adversarial data-free knowledge distillation.

Equation numbers refer to

* LRA: Patel et al., "Learning to Retain while Acquiring", CVPR 2023
  (``../shared/papers/learning_to_retain_while_acquiring_cvpr2023.txt``);
* MAD: Do et al., "Momentum Adversarial Distillation", NeurIPS 2022
  (``../shared/papers/momentum_adversarial_distillation_neurips2022.txt``).

Conventions (as in ``optax.losses``):

* Every function is pure, jit-able and differentiable everywhere it is defined.
* Per-example losses are returned *unreduced*, with the batch shape of the input
  (``logits[..., C]`` -> ``loss[...]``); the caller takes ``jnp.mean``. Losses that are
  defined on a whole batch (the entropy loss eq. 14, BatchNorm moment matching eq. 9)
  return a scalar and say so.
* Probabilities are handled in log space (``jax.nn.log_softmax``); no clamp ever cuts
  a gradient unless a function is explicitly a reproduction of a peer's clamped
  formula (:func:`lra_reference_js_loss`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp

from dfkd_jax.core import registry

Array = chex.Array


def batch_mean(per_example: Array, axis_name: str | None = None) -> Array:
  """Mean over a batch that may be sharded over the mesh axis ``axis_name``.

  Inside ``jax.shard_map`` with equal local batch sizes, ``pmean`` of the local means
  is the global mean; with ``axis_name=None`` this is ``jnp.mean``.
  """
  mean = jnp.mean(per_example)
  return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


# ---------------------------------------------------------------------------
# Student losses (teacher -> student discrepancy).
# ---------------------------------------------------------------------------


def mae(student_logits: Array, teacher_logits: Array) -> Array:
  """Mean absolute error between logits, LRA eq. 2 (as in DFAD).

  ``||t - s||_1`` divided by the number of classes, so that ``jnp.mean`` of the result
  equals PyTorch's ``F.l1_loss(s, t)`` used by the official LRA, DFAD and PRE-DFKD code.

  Args:
    student_logits: ``[..., C]`` student logits.
    teacher_logits: ``[..., C]`` teacher logits (treated as constants by the caller).

  Returns:
    ``[...]`` per-example loss (mean over classes).
  """
  chex.assert_equal_shape((student_logits, teacher_logits))
  return jnp.mean(jnp.abs(teacher_logits - student_logits), axis=-1)


def kl_divergence(student_logits: Array, teacher_logits: Array,
                  temperature: float = 1.0) -> Array:
  """KL(softmax(t/T) || softmax(s/T)) * T^2, MAD eq. 3 / ZSKT (ABM).

  The ``T^2`` factor keeps gradient magnitudes independent of the temperature
  (Hinton et al.); at ``T = 1`` this is exactly MAD eq. 3.

  Args:
    student_logits: ``[..., C]``.
    teacher_logits: ``[..., C]``.
    temperature: softmax temperature ``T > 0``.

  Returns:
    ``[...]`` per-example divergence (sum over classes), >= 0.
  """
  chex.assert_equal_shape((student_logits, teacher_logits))
  log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return kl * temperature**2


# ---------------------------------------------------------------------------
# Generator losses.
# ---------------------------------------------------------------------------


def js_divergence(logits_a: Array, logits_b: Array,
                  temperature: float = 1.0) -> Array:
  """Jensen-Shannon divergence between ``softmax(a/T)`` and ``softmax(b/T)``, LRA eq. 10.

  ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, computed in log
  space (``log m = logaddexp(log p, log q) - log 2``), so it is finite with finite
  gradients for any finite logits, symmetric, zero iff ``p == q`` and at most ``ln 2``.

  Args:
    logits_a: ``[..., C]``.
    logits_b: ``[..., C]``.
    temperature: softmax temperature ``T > 0`` (the official LRA code uses 3).

  Returns:
    ``[...]`` per-example divergence in nats, in ``[0, ln 2]``.
  """
  chex.assert_equal_shape((logits_a, logits_b))
  log_p = jax.nn.log_softmax(logits_a / temperature, axis=-1)
  log_q = jax.nn.log_softmax(logits_b / temperature, axis=-1)
  log_m = jnp.logaddexp(log_p, log_q) - math.log(2.0)
  kl_pm = jnp.sum(jnp.exp(log_p) * (log_p - log_m), axis=-1)
  kl_qm = jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=-1)
  return 0.5 * (kl_pm + kl_qm)


def lra_reference_js_loss(student_logits: Array, teacher_logits: Array,
                          temperature: float = 3.0) -> Array:
  """The official LRA code's clamped "JS" disagreement loss, for reproductions only.

  Opt-in peer compatibility. The official code (``JS_divergence`` in
  ``graphs/losses/kd_losses.py``) clamps the softmaxes to ``[0.01, 0.99]``, uses
  ``nn.KLDivLoss()`` (reduction "mean" over batch *and* classes, and ``KL(m || p)``
  rather than ``KL(p || m)``) and returns ``1 - clip(js, 0, 1)``. The clamps zero the
  gradient wherever a probability leaves ``[0.01, 0.99]``, which is why
  :func:`js_divergence` is the default.

  Args:
    student_logits: ``[N, C]``.
    teacher_logits: ``[N, C]``.
    temperature: the official code's temperature (3).

  Returns:
    Scalar loss to *minimise* (``1 - clipped JS``), reduced as the official code does.
  """
  chex.assert_equal_shape((student_logits, teacher_logits))
  p = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  q = jax.nn.softmax(student_logits / temperature, axis=-1)
  m = jnp.clip(0.5 * (p + q), 0.01, 0.99)
  p = jnp.clip(p, 0.01, 0.99)
  q = jnp.clip(q, 0.01, 0.99)
  # nn.KLDivLoss()(log x, m) = mean(m * (log m - log x)) over all elements.
  kl_m_p = jnp.mean(m * (jnp.log(m) - jnp.log(p)))
  kl_m_q = jnp.mean(m * (jnp.log(m) - jnp.log(q)))
  return 1.0 - jnp.clip(0.5 * kl_m_p + 0.5 * kl_m_q, 0.0, 1.0)


def one_hot_loss(teacher_logits: Array) -> Array:
  """One-hot loss, LRA eq. 12 (DAFL): cross-entropy with the teacher's own argmax.

  Args:
    teacher_logits: ``[..., C]``.

  Returns:
    ``[...]`` per-example ``-log softmax(t)[argmax t]``.
  """
  log_p = jax.nn.log_softmax(teacher_logits, axis=-1)
  return -jnp.max(log_p, axis=-1)


def activation_loss(features: Array) -> Array:
  """Activation loss, LRA eq. 13 (DAFL): minus the mean absolute activation.

  As in the DAFL and official LRA code (``-features.abs().mean()``) the activations are
  the teacher's penultimate features (``L = 1`` layer) and the L1 norm is divided by
  the feature size, i.e. eq. 13 with a per-element mean.

  Args:
    features: ``[N, ...]`` activations of the teacher.

  Returns:
    ``[N]`` per-example ``-mean |a|``.
  """
  return -jnp.mean(jnp.abs(features.reshape(features.shape[0], -1)), axis=-1)


def entropy_loss(teacher_logits: Array, log_base: float | None = None,
                 axis_name: str | None = None) -> Array:
  """Information-entropy loss, LRA eq. 14: ``p_bar^T log p_bar`` (a batch loss).

  ``p_bar`` is the teacher's softmax averaged over the batch; the loss is minus the
  entropy of ``p_bar``, minimal (``-log C``) when the batch covers the classes
  uniformly.

  Args:
    teacher_logits: ``[N, C]``.
    log_base: ``None`` for natural log (eq. 14). The official LRA and DAFL code use
      ``log10``; ``log_base=10`` reproduces it (the same loss scaled by ``1/ln 10``).
    axis_name: mesh axis the batch is sharded over (``p_bar`` is the global mean).

  Returns:
    Scalar.
  """
  log_p = jax.nn.log_softmax(teacher_logits, axis=-1)
  # log of the batch-mean probability, in log space: logsumexp over the batch - log N.
  log_p_bar = jax.nn.logsumexp(log_p, axis=0) - math.log(teacher_logits.shape[0])
  if axis_name is not None:
    log_p_bar = jnp.log(jax.lax.pmean(jnp.exp(log_p_bar), axis_name))
  neg_entropy = jnp.sum(jnp.exp(log_p_bar) * log_p_bar)
  if log_base is not None:
    neg_entropy = neg_entropy / math.log(log_base)
  return neg_entropy


class BNMoments(NamedTuple):
  """Per-BatchNorm-layer statistics for moment matching (MAD eq. 9 / DFQ).

  ``batch_*`` are the statistics of the layer's input on the generated batch (mean and
  biased variance over all axes but channels); ``running_*`` the teacher's stored ones.
  """

  batch_mean: Array
  batch_var: Array
  running_mean: Array
  running_var: Array


def bn_moment_loss(moments: Sequence[BNMoments], squared: bool = True) -> Array:
  """BatchNorm moment matching, MAD eq. 9 (DFQ, DeepInversion). A batch loss.

  ``sum_l ||mu_l - mu_bar_l||^2 + ||var_l - var_bar_l||^2`` (eq. 9). With
  ``squared=False`` the unsquared L2 norms of DeepInversion/DFQ/CMI are used instead.

  Args:
    moments: one :class:`BNMoments` per BatchNorm layer of the teacher.
    squared: squared (eq. 9) or plain L2 norms.

  Returns:
    Scalar.
  """
  if not moments:
    raise ValueError("bn_moment_loss needs at least one BatchNorm layer; the teacher "
                     "has none, so set the BN-moment weight to 0.")

  def dist(a, b):
    sq = jnp.sum(jnp.square(a - b))
    return sq if squared else _safe_norm(sq)

  return sum(dist(m.batch_mean, m.running_mean) + dist(m.batch_var, m.running_var)
             for m in moments)


def _safe_norm(squared_norm: Array) -> Array:
  """sqrt with a finite gradient at 0 (where it returns 0)."""
  positive = squared_norm > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared_norm, 1.0)), 0.0)


class PriorWeights(NamedTuple):
  """Weights of LRA eq. 11 (prior loss) and 15. Defaults are the official code's."""

  one_hot: float = 1.0     # weight of L_OH (eq. 12); eq. 11 fixes it to 1.
  activation: float = 0.1  # gamma in eq. 11.
  entropy: float = 5.0     # delta in eq. 11.


def prior_loss(teacher_logits: Array, teacher_features: Array,
               weights: PriorWeights = PriorWeights(),
               entropy_log_base: float | None = None,
               axis_name: str | None = None) -> Array:
  """Prior loss ``L_P = L_OH + gamma L_A + delta L_EM``, LRA eq. 11. A batch loss.

  Args:
    teacher_logits: ``[N, C]`` teacher logits on the generated batch.
    teacher_features: ``[N, ...]`` teacher penultimate features on the same batch.
    weights: the coefficients.
    entropy_log_base: see :func:`entropy_loss`.
    axis_name: mesh axis the batch is sharded over, see :func:`batch_mean`.

  Returns:
    Scalar.
  """
  return (weights.one_hot * batch_mean(one_hot_loss(teacher_logits), axis_name)
          + weights.activation * batch_mean(activation_loss(teacher_features), axis_name)
          + weights.entropy * entropy_loss(teacher_logits, entropy_log_base, axis_name))


def generator_loss(student_logits: Array, teacher_logits: Array,
                   teacher_features: Array,
                   weights: PriorWeights = PriorWeights(),
                   js_temperature: float = 1.0,
                   adversarial_weight: float = 1.0,
                   entropy_log_base: float | None = None,
                   axis_name: str | None = None) -> Array:
  """Generator objective ``L_G = -D(T(x), S(x)) + L_P(x)``, LRA eq. 15. A batch loss.

  ``D`` is the JS divergence of eq. 10; the generator *maximises* it, hence the minus
  sign. Gradients flow into both logits; pass a stopped teacher only if the teacher is
  not a function of the generator (it always is here: both see ``x = G(z)``).

  Args:
    student_logits: ``[N, C]`` student logits on ``x = G(z)``.
    teacher_logits: ``[N, C]`` teacher logits on the same ``x``.
    teacher_features: ``[N, ...]`` teacher penultimate features on ``x``.
    weights: prior-loss coefficients (eq. 11).
    js_temperature: temperature of the JS divergence.
    adversarial_weight: weight of ``-D``; 0 gives DAFL's non-adversarial objective.
    entropy_log_base: see :func:`entropy_loss`.
    axis_name: mesh axis the batch is sharded over, see :func:`batch_mean`.

  Returns:
    Scalar.
  """
  disagreement = batch_mean(
      js_divergence(teacher_logits, student_logits, js_temperature), axis_name)
  return (-adversarial_weight * disagreement
          + prior_loss(teacher_logits, teacher_features, weights, entropy_log_base,
                       axis_name))


# ---------------------------------------------------------------------------
# MAD (class-conditional generator, bounds).
# ---------------------------------------------------------------------------


def class_nll(teacher_logits: Array, labels: Array) -> Array:
  """Class negative log-likelihood ``-log Tp(x)[y]``, MAD eq. 7.

  Args:
    teacher_logits: ``[..., C]`` teacher logits on ``x = G(z + e_y)``.
    labels: ``[...]`` integer class ``y`` the sample was conditioned on.

  Returns:
    ``[...]`` per-example NLL.
  """
  log_p = jax.nn.log_softmax(teacher_logits, axis=-1)
  return -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def embedding_norm_regularizer(embeddings: Array, gamma: float = 1.1) -> Array:
  """Norm regulariser ``max(||e_y||_2 - gamma sqrt(d_e), 0)``, MAD eq. 8.

  Args:
    embeddings: ``[..., d_e]`` class embeddings ``e_y`` used in the batch.
    gamma: scaling ``gamma >= 1`` (MAD uses 1.1).

  Returns:
    ``[...]`` per-example penalty.
  """
  d_e = embeddings.shape[-1]
  norm = _safe_norm(jnp.sum(jnp.square(embeddings), axis=-1))
  return jnp.maximum(norm - gamma * math.sqrt(d_e), 0.0)


def bound_penalty(values: Array, bound: float) -> Array:
  """Hinge penalty ``max(|v| - bound, 0)`` averaged per example, MAD eqs. 10-11.

  Used for the student logits (``zeta_0``, eq. 10), the teacher logits (``zeta_1``) and
  the generator's pre-sigmoid output (``zeta_2``, eq. 11).

  Args:
    values: ``[N, ...]``.
    bound: ``delta`` or ``nu``.

  Returns:
    ``[N]`` mean penalty over all non-batch axes.
  """
  hinge = jnp.maximum(jnp.abs(values) - bound, 0.0)
  return jnp.mean(hinge.reshape(hinge.shape[0], -1), axis=-1)


#: The student's per-example KD losses (a method's ``student_loss``): ``mae`` (LRA
#: eq. 2) and ``kl`` (MAD eq. 3).
STUDENT_LOSSES: registry.Registry[Callable[[Array, Array], Array]] = registry.Registry(
    "student loss")
STUDENT_LOSSES.register("mae", mae)
STUDENT_LOSSES.register("kl", kl_divergence)

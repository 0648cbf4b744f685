"""Generator objectives of the DFKD methods, as pure functions of one generated batch.

Each method's generator minimises one of a small set of named losses (its *kind*, see
:mod:`dfkd_jax.methods.presets`), all built from the pure losses of :mod:`dfkd_jax.math.losses`:

========  ==============================================================================
kind      loss (minimised by the generator)
========  ==============================================================================
``lra``   ``-a D_JS(T, S) + L_OH + gamma L_A + delta L_EM`` -- LRA eq. 15 (eqs. 10-14);
          also DFKD*, MB-DFKD, PRE-DFKD (their official code uses the same loss).
``dafl``  ``L_OH + gamma L_A + delta L_EM`` -- DAFL's priors (LRA eq. 11), no
          adversarial term.
``dfad``  ``-a MAE(T, S)`` -- DFAD (LRA eq. 2, maximised).
``zskt``  ``-a KL(T || S)`` -- ZSKT / ABM (MAD eq. 2).
``dfq``   ``-a KL(T || S) + b L_BN + L_OH + delta L_EM`` -- DFQ (Choi et al., CVPRW
          2020) as in CMI's ``DFQSynthesizer``: BN moments with *unsquared* L2 norms
          (DeepInversion), one-hot and class-balance (entropy) terms.
``mad``   ``-a KL(T || S) + b L_BNmm`` (MAD eq. 9, squared norms) ``+ lambda_3 L_NLL +
          lambda_4 L_NormReg`` (eqs. 6-8, class-conditional generator only) ``+ zeta_1
          max(|T(x)| - delta, 0) + zeta_2 max(|u| - nu, 0)`` (Appendix A.3, eq. 11).
``fast``  ``b L_BN + o CE(T(x), y) - a E[m KL(T || S)]`` -- Fast DFKD's synthesis loss
          (DeepInversion's unsquared BN moments, as ``dfq``'s; cross-entropy to the
          random targets ``y``; the adversarial KL masked to the samples where student
          and teacher agree, ``m = [argmax S = argmax T]``).
========  ==============================================================================

The BatchNorm-moment term of ``dfq``, ``mad`` and ``fast`` is used only when the teacher has
BatchNorm layers (MAD Sec. 3.2: "in case the teacher T has BatchNorm layers"); with a
BatchNorm-free teacher (LeNet-5) it is dropped. The coefficients come from
:class:`GeneratorLossWeights` (``config.generator_loss`` in the trainer); each kind
reads only the fields it names above.

Every function takes the batch's quantities in a :class:`GeneratorBatch` (computed on
``x = G(z)`` or ``G(z + e_y)``) and returns ``(loss, terms)``: the scalar loss and a dict
of its unweighted terms for logging; ``terms["disagreement"]`` is the teacher-student
discrepancy the kind maximises (for ``dafl``, which maximises none, the JS divergence is
reported). With ``axis_name`` the batch is sharded over that mesh axis and every batch
mean is global (:func:`dfkd_jax.math.losses.batch_mean`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dfkd_jax.core import registry
from dfkd_jax.math import losses
from dfkd_jax.models.layers import ClassifierFeatures

Array = chex.Array
JS_FORMS = ("exact", "lra_reference")  # GeneratorLossWeights.js_form.


class GeneratorBatch(NamedTuple):
  """What a generator loss sees of one generated batch.

  Attributes:
    teacher_logits: ``[N, C]`` teacher logits on ``x``.
    student_logits: ``[N, C]`` student logits on ``x``.
    teacher_features: the teacher's :class:`ClassifierFeatures` on ``x`` (penultimate
      features and BatchNorm moments).
    labels: ``[N]`` classes ``y`` of a class-conditional generator, else ``None``.
    embeddings: ``[N, d_e]`` the class embeddings ``e_y`` used, else ``None``.
    output_logits: ``[N, H, W, C]`` the generator's pre-sigmoid output ``u``, or
      ``None`` when it has none (or the bound is off).
  """

  teacher_logits: Array
  student_logits: Array
  teacher_features: ClassifierFeatures
  labels: Array | None = None
  embeddings: Array | None = None
  output_logits: Array | None = None


class GeneratorLossWeights(NamedTuple):
  """Coefficients of the generator losses.

  No defaults here: ``config.generator_loss`` (:func:`dfkd_jax.run.run_config.default_config`)
  holds the one default of every field, the official LRA code's and MAD's values.

  Attributes:
    adversarial: ``a``, weight of the maximised disagreement (MAD's ``lambda_2``).
    js_temperature: temperature of the JS divergence (``lra``).
    js_form: ``"exact"`` (LRA eq. 10) or ``"lra_reference"`` (the official clamped code).
    one_hot: weight of the one-hot loss (eq. 12).
    activation: ``gamma``, weight of the activation loss (eq. 13).
    entropy: ``delta``, weight of the information-entropy loss (eq. 14).
    entropy_log_base: ``None`` (natural log) or 10 (the official code).
    bn_moments: ``b``, weight of BatchNorm moment matching (MAD's ``lambda_5``) in
      ``dfq`` and ``mad``.
    bn_prior: weight of BatchNorm moment matching (unsquared, DeepInversion) added to
      the priors of ``lra`` and ``dafl``; not in LRA or DAFL (0 = the papers).
    class_nll: ``lambda_3`` (MAD eq. 7); conditional generators only.
    embedding_norm: ``lambda_4`` (MAD eq. 8); conditional generators only.
    embedding_gamma: ``gamma`` of MAD eq. 8.
    teacher_logit_bound: ``zeta_1`` (MAD eq. 11).
    logit_bound: ``delta``, the logit bound of MAD eqs. 10-11.
    output_bound: ``zeta_2`` (MAD eq. 11), needs the generator's pre-sigmoid output.
    output_bound_value: ``nu`` of MAD eq. 11.
  """

  adversarial: float
  js_temperature: float
  js_form: str
  one_hot: float
  activation: float
  entropy: float
  entropy_log_base: float | None
  bn_moments: float
  bn_prior: float
  class_nll: float
  embedding_norm: float
  embedding_gamma: float
  teacher_logit_bound: float
  logit_bound: float
  output_bound: float
  output_bound_value: float


Terms = dict[str, Array]
GeneratorLoss = Callable[[GeneratorBatch, GeneratorLossWeights, str | None],
                         tuple[Array, Terms]]


def _js(batch, w, axis_name):
  if w.js_form == "lra_reference":
    # The official code's loss is 1 - JS (minimising it maximises JS); report its JS.
    ref = losses.lra_reference_js_loss(batch.student_logits, batch.teacher_logits,
                                       w.js_temperature)
    return 1.0 - (ref if axis_name is None else jax.lax.pmean(ref, axis_name))
  return losses.batch_mean(losses.js_divergence(batch.teacher_logits,
                                                batch.student_logits,
                                                w.js_temperature), axis_name)


def _kl(batch, axis_name):
  return losses.batch_mean(losses.kl_divergence(batch.student_logits,
                                                batch.teacher_logits), axis_name)


def _priors(batch, w, axis_name, activation=True) -> Terms:
  terms = {
      "one_hot": losses.batch_mean(losses.one_hot_loss(batch.teacher_logits), axis_name),
      "entropy": losses.entropy_loss(batch.teacher_logits, w.entropy_log_base,
                                     axis_name)}
  if activation:
    terms["activation"] = losses.batch_mean(
        losses.activation_loss(batch.teacher_features.penultimate), axis_name)
  return terms


def _prior_sum(terms, w):
  total = w.one_hot * terms["one_hot"] + w.entropy * terms["entropy"]
  if "activation" in terms:
    total = total + w.activation * terms["activation"]
  if "bn_prior" in terms:
    total = total + w.bn_prior * terms["bn_prior"]
  return total


def _bn_terms(batch, squared) -> Terms:
  moments = batch.teacher_features.bn_moments
  if not moments:  # BatchNorm-free teacher: no moments to match.
    return {}
  return {"bn_moments": losses.bn_moment_loss(moments, squared=squared)}


def _bn_prior_terms(batch, w) -> Terms:
  """The optional BatchNorm prior of ``lra``/``dafl`` (``w.bn_prior > 0``)."""
  if not w.bn_prior:
    return {}
  terms = _bn_terms(batch, squared=False)
  if not terms:
    raise ValueError("bn_prior > 0 needs a teacher with BatchNorm layers; set it to 0")
  return {"bn_prior": terms["bn_moments"]}


def lra(batch: GeneratorBatch, w: GeneratorLossWeights,
        axis_name: str | None = None) -> tuple[Array, Terms]:
  """``-a D_JS + L_P``, LRA eq. 15 (eq. 11 priors with eqs. 12-14)."""
  terms = {"disagreement": _js(batch, w, axis_name), **_priors(batch, w, axis_name),
           **_bn_prior_terms(batch, w)}
  return -w.adversarial * terms["disagreement"] + _prior_sum(terms, w), terms


def dafl(batch: GeneratorBatch, w: GeneratorLossWeights,
         axis_name: str | None = None) -> tuple[Array, Terms]:
  """DAFL: the priors ``L_OH + gamma L_A + delta L_EM`` only (LRA eq. 11)."""
  terms = {**_priors(batch, w, axis_name), **_bn_prior_terms(batch, w)}
  loss = _prior_sum(terms, w)
  terms["disagreement"] = _js(batch, w, axis_name)  # Logged, not optimised.
  return loss, terms


def dfad(batch: GeneratorBatch, w: GeneratorLossWeights,
         axis_name: str | None = None) -> tuple[Array, Terms]:
  """DFAD: ``-a MAE(T(x), S(x))`` (the generator maximises LRA eq. 2)."""
  mae = losses.batch_mean(losses.mae(batch.student_logits, batch.teacher_logits),
                          axis_name)
  return -w.adversarial * mae, {"disagreement": mae}


def zskt(batch: GeneratorBatch, w: GeneratorLossWeights,
         axis_name: str | None = None) -> tuple[Array, Terms]:
  """ZSKT / ABM: ``-a KL(T(x) || S(x))`` (MAD eqs. 2-3)."""
  kl = _kl(batch, axis_name)
  return -w.adversarial * kl, {"disagreement": kl}


def dfq(batch: GeneratorBatch, w: GeneratorLossWeights,
        axis_name: str | None = None) -> tuple[Array, Terms]:
  """DFQ: ``-a KL + b L_BN (unsquared) + L_OH + delta L_EM``."""
  terms = {"disagreement": _kl(batch, axis_name),
           **_priors(batch, w, axis_name, activation=False),
           **_bn_terms(batch, squared=False)}
  loss = -w.adversarial * terms["disagreement"] + _prior_sum(terms, w)
  if "bn_moments" in terms:
    loss = loss + w.bn_moments * terms["bn_moments"]
  return loss, terms


def mad(batch: GeneratorBatch, w: GeneratorLossWeights,
        axis_name: str | None = None) -> tuple[Array, Terms]:
  """MAD: eq. 6 with the BNmm term (eq. 9) and the bounds of Appendix A.3 (eq. 11).

  The class NLL (eq. 7) and the embedding-norm regulariser (eq. 8) need a
  class-conditional batch (``labels`` and ``embeddings``); the output bound needs
  ``output_logits``; a term whose weight is 0 is neither computed nor logged.
  """
  terms = {"disagreement": _kl(batch, axis_name), **_bn_terms(batch, squared=True)}
  loss = -w.adversarial * terms["disagreement"]
  if "bn_moments" in terms:
    loss = loss + w.bn_moments * terms["bn_moments"]
  if batch.labels is not None:
    if w.class_nll:
      terms["class_nll"] = losses.batch_mean(
          losses.class_nll(batch.teacher_logits, batch.labels), axis_name)
      loss = loss + w.class_nll * terms["class_nll"]
    if w.embedding_norm:
      terms["embedding_norm"] = losses.batch_mean(
          losses.embedding_norm_regularizer(batch.embeddings, w.embedding_gamma),
          axis_name)
      loss = loss + w.embedding_norm * terms["embedding_norm"]
  if w.teacher_logit_bound:
    terms["teacher_logit_bound"] = losses.batch_mean(
        losses.bound_penalty(batch.teacher_logits, w.logit_bound), axis_name)
    loss = loss + w.teacher_logit_bound * terms["teacher_logit_bound"]
  if w.output_bound and batch.output_logits is not None:
    terms["output_bound"] = losses.batch_mean(
        losses.bound_penalty(batch.output_logits, w.output_bound_value), axis_name)
    loss = loss + w.output_bound * terms["output_bound"]
  return loss, terms


def fast(batch: GeneratorBatch, w: GeneratorLossWeights,
         axis_name: str | None = None) -> tuple[Array, Terms]:
  """Fast DFKD's inner synthesis loss (``datafree/synthesis/fast_meta.py`` L142-150).

  ``w.bn_moments * L_BN + w.one_hot * CE(T(x), y) + w.adversarial * L_adv`` with
  ``L_BN`` DeepInversion's unsquared moment distances summed over the teacher's
  BatchNorm layers (the term of ``dfq`` and of the ``bn_prior``; dropped for a teacher
  without BatchNorm), ``CE`` the cross-entropy
  of the teacher's logits to the round's random targets ``y = batch.labels``, and
  ``L_adv = -mean_i(m_i KL(T(x_i) || S(x_i)))``, ``m_i = [argmax S(x_i) = argmax
  T(x_i)]``: the generator seeks samples where the student still agrees with the
  teacher in its decision but not in its distribution (the mean is over the whole
  batch, masked samples counting 0). ``terms["disagreement"]`` is the masked mean KL;
  ``terms["agreement"]`` the fraction of samples in the mask.
  """
  if batch.labels is None:
    raise ValueError("the fast loss needs the round's target classes (batch.labels)")
  kl = losses.kl_divergence(batch.student_logits, batch.teacher_logits)
  mask = (jnp.argmax(batch.student_logits, -1)
          == jnp.argmax(batch.teacher_logits, -1)).astype(kl.dtype)
  terms = {"disagreement": losses.batch_mean(kl * mask, axis_name),
           "agreement": losses.batch_mean(mask, axis_name),
           "one_hot": losses.batch_mean(
               losses.class_nll(batch.teacher_logits, batch.labels), axis_name)}
  terms.update(_bn_terms(batch, squared=False))
  loss = -w.adversarial * terms["disagreement"] + w.one_hot * terms["one_hot"]
  if "bn_moments" in terms:
    loss = loss + w.bn_moments * terms["bn_moments"]
  return loss, terms


class GeneratorLossEntry(NamedTuple):
  """A registered generator loss and its traits.

  Attributes:
    loss: the :data:`GeneratorLoss`.
    uses_batchnorm_moments: it has a BatchNorm-moment term (used when the teacher has
      BatchNorm).
  """

  loss: GeneratorLoss
  uses_batchnorm_moments: bool = False


#: The generator losses (a method's ``generator_loss``).
GENERATOR_LOSSES: registry.Registry[GeneratorLossEntry] = registry.Registry(
    "generator loss")
GENERATOR_LOSSES.register("lra", GeneratorLossEntry(lra))
GENERATOR_LOSSES.register("dafl", GeneratorLossEntry(dafl))
GENERATOR_LOSSES.register("dfad", GeneratorLossEntry(dfad))
GENERATOR_LOSSES.register("zskt", GeneratorLossEntry(zskt))
GENERATOR_LOSSES.register("dfq", GeneratorLossEntry(dfq, uses_batchnorm_moments=True))
GENERATOR_LOSSES.register("mad", GeneratorLossEntry(mad, uses_batchnorm_moments=True))
GENERATOR_LOSSES.register("fast", GeneratorLossEntry(fast, uses_batchnorm_moments=True))
KINDS = GENERATOR_LOSSES.names()


def get(kind: str) -> GeneratorLoss:
  """The generator loss named ``kind`` (``ValueError`` listing the valid ones)."""
  return GENERATOR_LOSSES.get(kind).loss

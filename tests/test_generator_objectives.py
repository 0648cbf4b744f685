"""Each generator-loss kind against its formula written out directly in NumPy."""

import math

import numpy as np
import pytest

from dfkd_jax.math.losses import BNMoments
from dfkd_jax.methods import generator_objectives as go
from dfkd_jax.models.layers import ClassifierFeatures

N, C, D = 6, 4, 5


def _batch(seed=0, with_bn=True, conditional=False):
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(N, C)).astype(np.float32) * 3
  s = rng.normal(size=(N, C)).astype(np.float32) * 3
  feats = rng.normal(size=(N, D)).astype(np.float32)
  moments = tuple(BNMoments(*(rng.normal(size=(k,)).astype(np.float32) ** p
                              for p in (1, 2, 1, 2))) for k in (3, 2)) if with_bn else ()
  labels = embeddings = output = None
  if conditional:
    labels = rng.integers(0, C, size=(N,))
    embeddings = rng.normal(size=(N, 3)).astype(np.float32) * 3
    output = rng.normal(size=(N, 2, 2, 1)).astype(np.float32) * 30
  return go.GeneratorBatch(t, s, ClassifierFeatures(feats, moments), labels, embeddings,
                           output)


def _softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl(t, s):  # mean over the batch of KL(softmax t || softmax s)
  p, q = _softmax(t.astype(np.float64)), _softmax(s.astype(np.float64))
  return np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))


def _js(t, s):
  p, q = _softmax(t.astype(np.float64)), _softmax(s.astype(np.float64))
  m = (p + q) / 2
  return np.mean(0.5 * np.sum(p * np.log(p / m), -1) + 0.5 * np.sum(q * np.log(q / m), -1))


def _one_hot(t):
  return np.mean(-np.log(_softmax(t.astype(np.float64)).max(-1)))


def _entropy(t):
  p_bar = _softmax(t.astype(np.float64)).mean(0)
  return np.sum(p_bar * np.log(p_bar))


def _activation(f):
  return -np.mean(np.abs(f))


def _bn(moments, squared):
  dist = (lambda a, b: np.sum((a - b) ** 2)) if squared else (
      lambda a, b: np.sqrt(np.sum((a - b) ** 2)))
  return sum(dist(m.batch_mean, m.running_mean) + dist(m.batch_var, m.running_var)
             for m in moments)


W = go.GeneratorLossWeights(adversarial=1.3, js_temperature=1.0, js_form="exact",
                            entropy_log_base=None, bn_prior=0.0, one_hot=0.7, activation=0.2, entropy=3.0,
                            bn_moments=0.5, class_nll=0.4, embedding_norm=0.6,
                            embedding_gamma=1.1, teacher_logit_bound=0.3, logit_bound=2.0,
                            output_bound=0.2, output_bound_value=20.0)


def _expected(kind, b, w):
  t, s, f = b.teacher_logits, b.student_logits, b.teacher_features
  priors = w.one_hot * _one_hot(t) + w.entropy * _entropy(t)
  if kind == "lra":
    return -w.adversarial * _js(t, s) + priors + w.activation * _activation(f.penultimate)
  if kind == "dafl":
    return priors + w.activation * _activation(f.penultimate)
  if kind == "dfad":
    return -w.adversarial * np.mean(np.abs(t - s))
  if kind == "zskt":
    return -w.adversarial * _kl(t, s)
  if kind == "dfq":
    bn = _bn(f.bn_moments, squared=False) if f.bn_moments else 0.0
    return -w.adversarial * _kl(t, s) + w.bn_moments * bn + priors
  if kind == "fast":  # Fast DFKD: BN + CE to the targets - the agreement-masked KL.
    p, q = _softmax(t.astype(np.float64)), _softmax(s.astype(np.float64))
    kl = np.sum(p * (np.log(p) - np.log(q)), -1)
    mask = np.argmax(s, -1) == np.argmax(t, -1)
    bn = _bn(f.bn_moments, squared=False) if f.bn_moments else 0.0
    return (w.bn_moments * bn + w.one_hot * np.mean(-np.log(p[np.arange(N), b.labels]))
            - w.adversarial * np.mean(kl * mask))
  assert kind == "mad"
  value = -w.adversarial * _kl(t, s)
  if f.bn_moments:
    value += w.bn_moments * _bn(f.bn_moments, squared=True)
  value += w.teacher_logit_bound * np.mean(np.maximum(np.abs(t) - w.logit_bound, 0))
  if b.labels is not None:
    log_p = np.log(_softmax(t.astype(np.float64)))
    value += w.class_nll * np.mean(-log_p[np.arange(N), b.labels])
    norms = np.linalg.norm(b.embeddings.astype(np.float64), axis=-1)
    value += w.embedding_norm * np.mean(np.maximum(norms - 1.1 * math.sqrt(3), 0))
    value += w.output_bound * np.mean(np.maximum(np.abs(b.output_logits) - 20.0, 0))
  return value


@pytest.mark.parametrize("kind", go.KINDS)
@pytest.mark.parametrize("with_bn, conditional", [(True, False), (False, False),
                                                  (True, True)])
def test_generator_loss_matches_its_formula(kind, with_bn, conditional):
  b = _batch(with_bn=with_bn, conditional=conditional)
  if kind == "fast":  # Its random targets are labels, whatever the generator.
    b = b._replace(labels=np.random.default_rng(1).integers(0, C, size=(N,)))
    # Student and teacher agree on some samples: the mask is mixed.
    b = b._replace(student_logits=np.where(np.arange(N)[:, None] < 3, b.teacher_logits,
                                           b.student_logits))
  loss, terms = go.get(kind)(b, W)
  np.testing.assert_allclose(float(loss), _expected(kind, b, W), rtol=1e-5, atol=1e-5)
  assert np.isfinite(float(terms["disagreement"]))
  uses_bn = go.GENERATOR_LOSSES.get(kind).uses_batchnorm_moments
  assert ("bn_moments" in terms) == (with_bn and uses_bn)


def test_mad_terms_are_active():
  """The conditional batch exercises every MAD term (none is zero by accident)."""
  b = _batch(conditional=True)
  _, terms = go.mad(b, W)
  for name in ("class_nll", "embedding_norm", "teacher_logit_bound", "output_bound",
               "bn_moments"):
    assert float(terms[name]) > 0, name


def test_lra_reference_form_reports_the_clamped_js():
  b = _batch()
  w = W._replace(js_form="lra_reference", js_temperature=3.0)
  loss, terms = go.lra(b, w)
  exact, _ = go.lra(b, W._replace(js_temperature=3.0))
  assert float(terms["disagreement"]) != pytest.approx(_js(b.teacher_logits / 3,
                                                           b.student_logits / 3))
  # Only the disagreement term differs between the two forms.
  diff = float(exact - loss)
  js3 = _js(b.teacher_logits / 3, b.student_logits / 3)
  np.testing.assert_allclose(diff, -w.adversarial * (js3 - float(terms["disagreement"])),
                             rtol=1e-5)


def test_unknown_kind_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown generator loss 'gan'; valid: lra, dafl"):
    go.get("gan")


@pytest.mark.parametrize("kind", ["lra", "dafl"])
def test_bn_prior_adds_unsquared_moment_matching_to_the_priors(kind):
  b = _batch()
  w = W._replace(bn_prior=0.8)
  loss, terms = go.get(kind)(b, w)
  expected = _expected(kind, b, W) + 0.8 * _bn(b.teacher_features.bn_moments, False)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
  assert "bn_prior" in terms


def test_bn_prior_without_teacher_batchnorm_is_a_clear_error():
  with pytest.raises(ValueError, match="bn_prior > 0 needs a teacher with BatchNorm"):
    go.lra(_batch(with_bn=False), W._replace(bn_prior=1.0))

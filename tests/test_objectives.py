"""Tests of the student objectives, above all the exact LRA meta-gradient (eq. 6).

The second-order checks run in float64 on a small CNN with BatchNorm and a smooth
activation (tanh), where finite differences are meaningful.
"""

import chex
import flax.linen as nn
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax.math import losses
from dfkd_jax.math import objectives
from dfkd_jax.math.objectives import InnerStep, KDBatch

KD_LOSSES = {"mae": losses.mae, "kl": lambda s, t: losses.kl_divergence(s, t, 2.0)}
INNER_STEPS = (InnerStep.SGD, InnerStep.SGD_WEIGHT_DECAY)
WEIGHT_DECAY = 5e-2
_STATIC = ("apply_fn", "inner_step", "first_order", "kd_loss", "with_alignment")
# Jitted entry points (eager op-by-op dispatch of second-order code is slow).
META = jax.jit(objectives.meta, static_argnames=_STATIC)
JOINT = jax.jit(objectives.joint, static_argnames=("apply_fn", "kd_loss"))
ACQUIRE = jax.jit(objectives.acquire, static_argnames=("apply_fn", "kd_loss"))

parametrize_kd_losses = pytest.mark.parametrize("kd", sorted(KD_LOSSES))
parametrize_inner_steps = pytest.mark.parametrize("inner_step", INNER_STEPS,
                                                  ids=lambda step: step.value)
in_float64 = pytest.mark.usefixtures("x64")


@pytest.fixture
def x64():
  """Runs the test with float64 enabled (finite differences, tight tolerances)."""
  with jax.enable_x64(True):
    yield


def eager(fn):
  """The eager counterpart of ``jax.jit``: ``fn`` itself, run op by op."""
  return fn


class SmoothCNN(nn.Module):
  """Conv -> BatchNorm -> tanh -> mean pool -> Dense: smooth, with batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = jnp.tanh(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3)(x)


def make_problem(seed=0, dtype=jnp.float64):
  """Student variables, apply_fn and acquisition/retention batches."""
  model = SmoothCNN()
  k_init, k_x, k_t, k_xm, k_tm = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k_x, (6, 5, 5, 2), dtype)
  variables = model.init(k_init, x[:1])
  variables = jax.tree.map(lambda v: v.astype(dtype), variables)
  acq = KDBatch(x, 2.0 * jax.random.normal(k_t, (6, 3), dtype))
  ret = KDBatch(jax.random.normal(k_xm, (4, 5, 5, 2), dtype) + 0.5,
                2.0 * jax.random.normal(k_tm, (4, 3), dtype))
  # Non-trivial running statistics, to see which forward's update is kept.
  stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])
  return variables["params"], stats, objectives.flax_apply_fn(model), acq, ret


def flatten(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def loss_fn(apply_fn, stats, batch, kd_loss):
  return lambda p: objectives.kd_loss_value(p, stats, apply_fn, batch, kd_loss)[0]


# ------------------------------- meta-gradient -------------------------------


@in_float64
@parametrize_kd_losses
@parametrize_inner_steps
def test_meta_gradient_equals_central_finite_differences(kd, inner_step):
  params, stats, apply_fn, acq, ret = make_problem(0)
  kw = dict(alpha=0.3, inner_step=inner_step, weight_decay=WEIGHT_DECAY,
            kd_loss=KD_LOSSES[kd])
  grads = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, **kw).grads
  flat, unravel = ravel_pytree(params)

  @jax.jit
  def objective(flat_params):
    return objectives.meta_objective(unravel(flat_params), stats, apply_fn, acq, ret,
                                     **kw)[0]

  eps = 1e-5
  basis = jnp.eye(flat.size, dtype=flat.dtype) * eps
  fd = jax.vmap(lambda d: (objective(flat + d) - objective(flat - d)) / (2 * eps))(basis)
  g = flatten(grads)
  rel = float(jnp.linalg.norm(fd - g) / jnp.linalg.norm(g))
  assert rel <= 1e-6, f"relative error {rel:.2e}"


@in_float64
@parametrize_kd_losses
@parametrize_inner_steps
@pytest.mark.parametrize("alpha", (0.05, 0.9))
def test_meta_gradient_equals_hvp_assembly(kd, inner_step, alpha):
  """grad = g_acq + c * v - alpha * H_acq v, v = grad L_ret(theta'), via jvp/linearize."""
  params, stats, apply_fn, acq, ret = make_problem(1)
  kd_loss = KD_LOSSES[kd]
  l_acq = loss_fn(apply_fn, stats, acq, kd_loss)
  l_ret = loss_fn(apply_fn, stats, ret, kd_loss)
  g_acq, hvp = jax.linearize(jax.grad(l_acq), params)
  wd = WEIGHT_DECAY if inner_step is InnerStep.SGD_WEIGHT_DECAY else 0.0
  adapted = jax.tree.map(lambda p, g: p - alpha * (g + wd * p), params, g_acq)
  v = jax.grad(l_ret)(adapted)
  h_v = hvp(v)
  # The same Hessian-vector product by forward-over-reverse jvp, independently.
  _, h_v_jvp = jax.jvp(jax.grad(l_acq), (params,), (v,))
  np.testing.assert_allclose(flatten(h_v), flatten(h_v_jvp), rtol=1e-10, atol=1e-14)
  expected = jax.tree.map(lambda g, vv, hv: g + (1 - alpha * wd) * vv - alpha * hv,
                          g_acq, v, h_v)

  out = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=alpha,
             inner_step=inner_step, weight_decay=WEIGHT_DECAY, kd_loss=kd_loss)
  np.testing.assert_allclose(flatten(out.grads), flatten(expected), rtol=1e-9, atol=1e-12)
  # And the Hessian term is not negligible: the check would catch its absence.
  assert (float(alpha * jnp.linalg.norm(flatten(h_v)))
          > 1e-4 * float(jnp.linalg.norm(flatten(expected))))


@in_float64
def test_first_order_variant_differs_by_exactly_the_hessian_term():
  params, stats, apply_fn, acq, ret = make_problem(2)
  alpha = 0.4
  exact = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=alpha)
  first = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=alpha,
               first_order=True)
  l_acq = loss_fn(apply_fn, stats, acq, losses.mae)
  l_ret = loss_fn(apply_fn, stats, ret, losses.mae)
  g_acq = jax.grad(l_acq)(params)
  v = jax.grad(l_ret)(jax.tree.map(lambda p, g: p - alpha * g, params, g_acq))
  _, h_v = jax.jvp(jax.grad(l_acq), (params,), (v,))
  np.testing.assert_allclose(flatten(exact.grads) - flatten(first.grads),
                             -alpha * flatten(h_v), rtol=1e-9, atol=1e-12)
  # First order: exactly g_acq + v.
  np.testing.assert_allclose(flatten(first.grads), flatten(g_acq) + flatten(v),
                             rtol=1e-10, atol=1e-13)
  # Same loss value either way.
  np.testing.assert_allclose(exact.loss, first.loss, rtol=1e-12)


@in_float64
def test_small_alpha_retention_gradient_matches_eq8_to_second_order():
  """d L_ret(theta')/d theta = grad L_ret - alpha grad(<grad L_ret, grad L_acq>) + O(a^2)."""
  params, stats, apply_fn, acq, ret = make_problem(3)
  kd_loss = KD_LOSSES["kl"]
  l_acq = loss_fn(apply_fn, stats, acq, kd_loss)
  l_ret = loss_fn(apply_fn, stats, ret, kd_loss)
  alignment = lambda p: objectives._tree_vdot(jax.grad(l_ret)(p), jax.grad(l_acq)(p))
  g_ret = flatten(jax.grad(l_ret)(params))
  g_align = flatten(jax.grad(alignment)(params))

  def retention_gradient(alpha):
    out = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=alpha, kd_loss=kd_loss)
    return flatten(out.grads) - flatten(jax.grad(l_acq)(params))

  errors = []
  for alpha in (4e-2, 2e-2, 1e-2, 5e-3):
    eq8 = g_ret - alpha * g_align
    errors.append(float(jnp.linalg.norm(retention_gradient(alpha) - eq8)))
    # The first-order (alpha) term itself is much larger than the remainder.
    assert errors[-1] < 0.2 * float(jnp.linalg.norm(alpha * g_align))
  ratios = np.array(errors[:-1]) / np.array(errors[1:])
  np.testing.assert_allclose(ratios, 4.0, rtol=0.15, err_msg=f"errors {errors}")


# ----------------------------- objective semantics ---------------------------


@in_float64
def test_meta_term_reaches_the_student():
  """The bug of the official code: the retention term must change the update."""
  params, stats, apply_fn, acq, ret = make_problem(4)
  acquire = ACQUIRE(params, stats, apply_fn=apply_fn, acq=acq)
  meta = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=0.9)
  retention_part = flatten(meta.grads) - flatten(acquire.grads)
  g_ret = flatten(jax.grad(loss_fn(apply_fn, stats, ret, losses.mae))(params))
  assert float(jnp.linalg.norm(retention_part)) > 0.1 * float(jnp.linalg.norm(g_ret))


@in_float64
@pytest.mark.parametrize("name", ("joint", "meta"))
def test_zero_retention_weight_is_acquire(name):
  params, stats, apply_fn, acq, ret = make_problem(5)
  kw = dict(alpha=0.5) if name == "meta" else {}
  fn = META if name == "meta" else JOINT
  out = fn(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, retention_weight=0.0, **kw)
  ref = ACQUIRE(params, stats, apply_fn=apply_fn, acq=acq)
  np.testing.assert_allclose(flatten(out.grads), flatten(ref.grads), rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-12)


@in_float64
def test_joint_is_eq5_with_alignment_diagnostics():
  params, stats, apply_fn, acq, ret = make_problem(6)
  out = JOINT(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, retention_weight=0.7)
  l_acq = loss_fn(apply_fn, stats, acq, losses.mae)
  l_ret = loss_fn(apply_fn, stats, ret, losses.mae)
  g_a, g_r = flatten(jax.grad(l_acq)(params)), flatten(jax.grad(l_ret)(params))
  np.testing.assert_allclose(flatten(out.grads), g_a + 0.7 * g_r, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(out.loss, l_acq(params) + 0.7 * l_ret(params), rtol=1e-12)
  d = out.diagnostics
  np.testing.assert_allclose(d.loss_acq, l_acq(params), rtol=1e-12)
  np.testing.assert_allclose(d.loss_ret, l_ret(params), rtol=1e-12)
  np.testing.assert_allclose(d.grad_dot, g_a @ g_r, rtol=1e-10)
  np.testing.assert_allclose(
      d.grad_cosine, g_a @ g_r / np.linalg.norm(g_a) / np.linalg.norm(g_r), rtol=1e-10)
  assert np.isnan(d.loss_ret_adapted)


@in_float64
def test_meta_diagnostics():
  params, stats, apply_fn, acq, ret = make_problem(7)
  alpha = 0.5
  out = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=alpha)
  l_acq = loss_fn(apply_fn, stats, acq, losses.mae)
  l_ret = loss_fn(apply_fn, stats, ret, losses.mae)
  g_a, g_r = jax.grad(l_acq)(params), jax.grad(l_ret)(params)
  adapted = jax.tree.map(lambda p, g: p - alpha * g, params, g_a)
  d = out.diagnostics
  np.testing.assert_allclose(d.loss_acq, l_acq(params), rtol=1e-12)
  np.testing.assert_allclose(d.loss_ret, l_ret(params), rtol=1e-12)
  np.testing.assert_allclose(d.loss_ret_adapted, l_ret(adapted), rtol=1e-12)
  np.testing.assert_allclose(out.loss, l_acq(params) + l_ret(adapted), rtol=1e-12)
  np.testing.assert_allclose(d.grad_dot, flatten(g_a) @ flatten(g_r), rtol=1e-10)
  no_align = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=alpha,
                  with_alignment=False)
  np.testing.assert_allclose(flatten(no_align.grads), flatten(out.grads), rtol=1e-12,
                             atol=1e-15)
  assert np.isnan(no_align.diagnostics.grad_cosine)


@in_float64
def test_alignment_on_its_own_is_the_meta_updates_alignment():
  """objectives.alignment (taken once per iteration, after the loop of meta steps)
  gives what meta(with_alignment=True) reports at the same parameters."""
  params, stats, apply_fn, acq, ret = make_problem(11)
  d = META(params, stats, apply_fn=apply_fn, acq=acq, ret=ret, alpha=0.5).diagnostics
  loss_ret, dot, cosine = objectives.alignment(params, stats, apply_fn, acq, ret)
  np.testing.assert_allclose([loss_ret, dot, cosine],
                             [d.loss_ret, d.grad_dot, d.grad_cosine], rtol=1e-12)
  assert -1 <= cosine <= 1 and cosine != 0


@in_float64
@pytest.mark.parametrize("name", ("acquire", "joint", "meta"))
def test_running_stats_come_from_the_acquisition_forward(name):
  params, stats, apply_fn, acq, ret = make_problem(8)
  fn = {"acquire": ACQUIRE, "joint": JOINT, "meta": META}[name]
  kw = dict(alpha=0.5) if name == "meta" else {}
  if name != "acquire":
    kw["ret"] = ret
  out = fn(params, stats, apply_fn=apply_fn, acq=acq, **kw)
  _, expected = apply_fn(params, stats, acq.x)
  _, from_ret = apply_fn(params, stats, ret.x)
  chex.assert_trees_all_close(out.batch_stats, expected, rtol=1e-12, atol=1e-15)
  assert not np.allclose(flatten(expected), flatten(from_ret))


@in_float64
def test_inner_update_forms():
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.5, 0.5])}
  np.testing.assert_allclose(objectives.inner_update(p, g, 0.1)["w"], [0.95, -2.05])
  np.testing.assert_allclose(
      objectives.inner_update(p, g, 0.1, "sgd_weight_decay", 0.5)["w"],
      [1.0 - 0.1 * (0.5 + 0.5), -2.0 - 0.1 * (0.5 - 1.0)])


# ------------------------------------ jit ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transform", (jax.jit, eager), ids=("jit", "eager"))
def test_jit_and_eager_agree(transform):
  params, stats, apply_fn, acq, ret = make_problem(9, jnp.float32)

  @transform
  def step(params, stats, acq, ret):
    return objectives.meta(params, stats, apply_fn, acq, ret, alpha=0.5,
                           inner_step=InnerStep.SGD_WEIGHT_DECAY, weight_decay=5e-4)

  out = step(params, stats, acq, ret)
  ref = objectives.meta(params, stats, apply_fn, acq, ret, alpha=0.5,
                        inner_step=InnerStep.SGD_WEIGHT_DECAY, weight_decay=5e-4)
  chex.assert_trees_all_close(out, ref, rtol=1e-4, atol=1e-6)


def test_traces_once_per_shape():
  params, stats, apply_fn, acq, ret = make_problem(10, jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, stats, acq, ret, alpha, weight):
    return objectives.meta(params, stats, apply_fn, acq, ret, alpha=alpha,
                           retention_weight=weight).grads

  try:
    for i in range(3):
      shifted = KDBatch(acq.x + i, acq.teacher_logits)
      step(params, stats, shifted, ret, 0.1 * (i + 1), float(i % 2))
  finally:
    chex.clear_trace_counter()

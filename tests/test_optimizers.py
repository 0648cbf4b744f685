"""The shared optimisers (dfkd_jax.math.optimizers)."""

import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax.math import optimizers


def _learning_rates(optimizer, steps):
  """The learning rate of each step, read off SGD updates of a unit gradient."""
  params = {"w": jnp.zeros(())}
  state = optimizer.init(params)
  rates = []
  for _ in range(steps):
    updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
    rates.append(-float(updates["w"]))
  return np.array(rates)


def test_student_cosine_is_stepped_once_per_epoch_like_cosine_annealing_lr():
  opt = optimizers.student(learning_rate=0.1, momentum=0.0, weight_decay=0.0,
                           schedule="cosine", num_epochs=4, steps_per_epoch=3)
  epochs = np.repeat(np.arange(4), 3)
  expected = 0.1 * (1 + np.cos(np.pi * epochs / 4)) / 2  # CosineAnnealingLR(T_max=4).
  np.testing.assert_allclose(_learning_rates(opt, 12), expected, rtol=1e-6)


def test_student_weight_decay_is_added_to_the_gradient():
  opt = optimizers.student(learning_rate=0.5, momentum=0.0, weight_decay=0.1,
                           schedule="constant", num_epochs=1, steps_per_epoch=1)
  params = {"w": jnp.full((), 2.0)}
  updates, _ = opt.update({"w": jnp.ones(())}, opt.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * (1 + 0.1 * 2.0), rtol=1e-6)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.1] * 4),
    ("step", [0.1, 0.1, 0.01, 0.01]),
])
def test_classifier_schedules(schedule, expected):
  opt = optimizers.classifier(optimizer="sgd", learning_rate=0.1, schedule=schedule,
                              num_epochs=2, steps_per_epoch=2, decay_epochs=(1,))
  np.testing.assert_allclose(_learning_rates(opt, 4), expected, rtol=1e-6)


@pytest.mark.parametrize("schedule, expected", [
    # 1 epoch (2 steps) of linear warm-up from 0, then the schedule over the rest.
    ("cosine", [0.0, 0.05, 0.1, 0.05]),
    ("constant", [0.0, 0.05, 0.1, 0.1]),
])
def test_classifier_warmup_then_schedule(schedule, expected):
  opt = optimizers.classifier(optimizer="sgd", learning_rate=0.1, schedule=schedule,
                              num_epochs=2, steps_per_epoch=2, warmup_epochs=1)
  np.testing.assert_allclose(_learning_rates(opt, 4), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("warmup", [-1, 2, 3])
def test_classifier_warmup_must_leave_steps_for_the_schedule(warmup):
  with pytest.raises(ValueError, match=rf"warmup_epochs={warmup} must be in \[0, "
                     r"num_epochs=2\)"):
    optimizers.classifier(optimizer="sgd", learning_rate=0.1, schedule="cosine",
                          num_epochs=2, steps_per_epoch=2, warmup_epochs=warmup)


@pytest.mark.parametrize("kwargs, words", [
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; valid: sgd, adam"),
    ({"optimizer": "sgd", "schedule": "linear"}, "unknown lr_schedule 'linear'"),
])
def test_classifier_unknown_names_are_clear_errors(kwargs, words):
  with pytest.raises(ValueError, match=words):
    optimizers.classifier(learning_rate=0.1, **kwargs)


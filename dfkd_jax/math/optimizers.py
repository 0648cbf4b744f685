"""The optimisers of the student, the generator and the teacher, as optax transformations.

One place for the three trainers' optimisers, built from plain values (the configs are
resolved by :mod:`dfkd_jax.run.experiment` and :mod:`dfkd_jax.train_teacher`):

* :func:`student`: SGD with momentum and coupled weight decay (PyTorch ``SGD``, the
  peers' student optimiser), with the learning rate of a per-epoch cosine schedule
  (PyTorch ``CosineAnnealingLR(T_max=num_epochs)`` stepped once per epoch) or constant;
* :func:`generator`: Adam (the peers' generator optimiser);
* :func:`classifier`: the teacher's SGD or Adam with a per-step constant, cosine or step
  schedule;
* :func:`apply`: one update of parameters with any of them (every trainer's step).

Weight decay is added to the gradient before the update, as PyTorch's optimisers do
(``optax.add_decayed_weights`` first in the chain).
"""

from __future__ import annotations

from typing import Any, Sequence

import optax

STUDENT_SCHEDULES = ("cosine", "constant")
CLASSIFIER_SCHEDULES = ("constant", "cosine", "step")
CLASSIFIER_OPTIMIZERS = ("sgd", "adam")


def apply(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any,
          params: Any) -> tuple[Any, Any]:
  """One optimiser step: ``(new_params, new_opt_state)`` from ``grads`` at ``params``."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _with_weight_decay(base: optax.GradientTransformation,
                       weight_decay: float) -> optax.GradientTransformation:
  if not weight_decay:
    return base
  return optax.chain(optax.add_decayed_weights(weight_decay), base)


def student(*, learning_rate: float, momentum: float, weight_decay: float,
            schedule: str, num_epochs: int, steps_per_epoch: int,
            min_learning_rate: float = 0.0) -> optax.GradientTransformation:
  """The student's SGD (LRA Sec. 4.1: lr 0.1, momentum 0.9, weight decay 5e-4).

  Args:
    learning_rate: the initial learning rate.
    momentum: SGD momentum (0 = none).
    weight_decay: coupled weight decay.
    schedule: ``cosine`` (per epoch, ``eta + (lr - eta) * (1 + cos(pi * epoch /
      num_epochs)) / 2``, PyTorch's ``CosineAnnealingLR(T_max=num_epochs,
      eta_min=eta)``) or ``constant``.
    num_epochs: epochs of the cosine period (the run's, less any epochs without
      student steps: the count advances only with them).
    steps_per_epoch: student updates per epoch (iterations x student steps).
    min_learning_rate: ``eta``, the cosine's floor (0: LRA's; Fast DFKD's 2e-4).

  Returns:
    The transformation; its update count advances once per student step.
  """
  factor = student_lr_factor(schedule, num_epochs)

  def lr(count):  # Stepped once per epoch, as CosineAnnealingLR in the peers' code.
    # eta + (lr - eta) * factor: exactly lr * factor when eta is 0.
    return (min_learning_rate
            + (learning_rate - min_learning_rate) * factor(count // steps_per_epoch))

  if schedule == "constant":  # A float: no schedule count in the optimiser's state.
    lr = learning_rate
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr, momentum=momentum or None))


def student_lr_factor(schedule: str, num_epochs: int):
  """The student's learning rate over its initial one, as a function of the epoch.

  ``cosine``: ``(1 + cos(pi * epoch / num_epochs)) / 2``; ``constant``: 1. The meta
  step of ``meta.alpha_schedule="student"`` follows it too.

  Raises:
    ValueError: an unknown schedule, listing the valid ones.
  """
  if schedule == "cosine":
    return optax.cosine_decay_schedule(1.0, num_epochs)
  if schedule == "constant":
    return lambda epoch: 1.0
  raise ValueError(f"student schedule={schedule!r}; valid: "
                   f"{', '.join(STUDENT_SCHEDULES)}")


def generator(*, learning_rate: float, b1: float, b2: float
              ) -> optax.GradientTransformation:
  """The generator's Adam (LRA Sec. 4.1: lr 1e-3, betas (0.9, 0.999))."""
  return optax.adam(learning_rate, b1=b1, b2=b2)


def classifier(*, optimizer: str, learning_rate: float, momentum: float = 0.0,
               nesterov: bool = False, weight_decay: float = 0.0,
               schedule: str = "constant", num_epochs: int = 1, steps_per_epoch: int = 1,
               decay_epochs: Sequence[int] = (), decay_factor: float = 0.1,
               warmup_epochs: float = 0.0) -> optax.GradientTransformation:
  """A teacher's optimiser: ``sgd`` or ``adam``, with a per-step schedule.

  Args:
    optimizer: ``sgd`` or ``adam``.
    learning_rate: the initial learning rate.
    momentum, nesterov: SGD's (momentum 0 = none).
    weight_decay: coupled weight decay (0 = none).
    schedule: ``constant``, ``cosine`` (per step, to 0 at the end) or ``step``
      (multiplied by ``decay_factor`` at each of ``decay_epochs``).
    num_epochs, steps_per_epoch: the length of the run.
    decay_epochs, decay_factor: the step schedule's.
    warmup_epochs: epochs of linear warm-up from 0 to ``learning_rate`` (the fast
      CIFAR recipes' one-cycle start); the cosine then decays over the remaining steps,
      the other schedules start after it.

  Raises:
    ValueError: an unknown optimiser or schedule, listing the valid ones.
  """
  total_steps = num_epochs * steps_per_epoch
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  if not 0 <= warmup_steps < max(total_steps, 1):
    raise ValueError(f"warmup_epochs={warmup_epochs} must be in [0, num_epochs="
                     f"{num_epochs})")
  if schedule == "constant":
    lr = optax.constant_schedule(learning_rate)
  elif schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
  elif schedule == "step":
    lr = optax.piecewise_constant_schedule(
        learning_rate, {int(epoch) * steps_per_epoch: decay_factor
                        for epoch in decay_epochs})
  else:
    raise ValueError(f"unknown lr_schedule {schedule!r}; valid: "
                     f"{', '.join(CLASSIFIER_SCHEDULES)}")
  if warmup_steps:
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps), lr], [warmup_steps])
  if optimizer == "sgd":
    base = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
  elif optimizer == "adam":
    base = optax.adam(lr)
  else:
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: "
                     f"{', '.join(CLASSIFIER_OPTIMIZERS)}")
  return _with_weight_decay(base, weight_decay)

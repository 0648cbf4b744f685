"""The EMA generator of MAD (Do et al., NeurIPS 2022, Sec. 3.1) as a replay source.

MAD keeps an exponential moving average ``G~`` of the generator ``G``,

    theta_G~ <- a * theta_G~ + (1 - a) * theta_G        (MAD eq. 5, a = 0.95),

updated once after every generator stage, and trains the student on ``G~(z')`` besides
``G(z)`` (eq. 4): the EMA generator is an ensemble of the generator's past versions, so
its samples replay the distributions the student has already seen.

:class:`EMAState` is a pytree and :func:`init`, :func:`update` and :func:`sample` are
pure and jit-able. Only the parameters are averaged; the generator's ``batch_stats``
collection (BatchNorm running statistics and spectral-norm power-iteration vectors) is
copied from ``G`` at each update, as a buffer rather than a learned weight. The EMA
generator is run in training mode like ``G`` (BatchNorm with the batch's statistics), so
its running statistics never enter its samples except through spectral normalisation's
vectors. At initialisation ``G~ = G``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import optax

Array = chex.Array


class EMAState(NamedTuple):
  """The EMA generator.

  Attributes:
    params: ``theta_G~``, the moving average of the generator's parameters.
    batch_stats: the generator's ``batch_stats`` at the last update.
  """

  params: Any
  batch_stats: Any


def init(params: Any, batch_stats: Any) -> EMAState:
  """``G~ = G``: a copy of the generator's variables."""
  copy = lambda tree: jax.tree.map(lambda a: a.copy(), tree)
  return EMAState(copy(params), copy(batch_stats))


def update(state: EMAState, params: Any, batch_stats: Any,
           decay: float | Array = 0.95) -> EMAState:
  """MAD eq. 5: ``theta_G~ <- decay * theta_G~ + (1 - decay) * theta_G``.

  Args:
    state: the EMA generator.
    params: the generator's current parameters ``theta_G``.
    batch_stats: the generator's current ``batch_stats`` (copied).
    decay: the momentum ``a`` in ``(0, 1)``.

  Returns:
    The new EMA state.
  """
  new_params = optax.incremental_update(params, state.params, step_size=1.0 - decay)
  return EMAState(new_params, batch_stats)


def sample(state: EMAState, generate: Callable[..., Array], *inputs: Array) -> Array:
  """``G~(z)`` (or ``G~(z + e_y)``) as constants.

  Args:
    state: the EMA generator.
    generate: ``generate(params, batch_stats, *inputs) -> x``, the generator's forward.
    *inputs: its inputs, e.g. ``z`` or ``(z, y)``.

  Returns:
    The samples, gradient-stopped.
  """
  return jax.lax.stop_gradient(generate(state.params, state.batch_stats, *inputs))

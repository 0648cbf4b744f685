"""dfkd_jax: adversarial data-free knowledge distillation in JAX/Flax.

The library is a set of pure functions over pytrees:

* :mod:`dfkd_jax.losses` -- student and generator losses (LRA eqs. 2, 10-15; MAD eqs. 3, 7-11).
* :mod:`dfkd_jax.objectives` -- student update objectives: acquisition (LRA eq. 3), joint
  acquisition + retention (eq. 5) and the exact second-order meta-objective (eq. 6).
"""

__version__ = "0.1.0"

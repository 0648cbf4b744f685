"""dfkd_jax: adversarial data-free knowledge distillation in JAX/Flax.

The library is a set of pure functions over pytrees:

* :mod:`dfkd_jax.math.losses` -- student and generator losses (LRA eqs. 2, 10-15; MAD eqs. 3, 7-11).
* :mod:`dfkd_jax.math.objectives` -- student update objectives: acquisition (LRA eq. 3), joint
  acquisition + retention (eq. 5) and the exact second-order meta-objective (eq. 6).
* :func:`load_student` -- the predict function of a student exported with
  ``python -m dfkd_jax.export --format=flax`` (:mod:`dfkd_jax.models.student_card`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  # Imported on first use: `import dfkd_jax` stays light for the command-line tools.
  if name == "load_student":
    from dfkd_jax.models.student_card import load_student  # pylint: disable=g-import-not-at-top
    return load_student
  raise AttributeError(f"module 'dfkd_jax' has no attribute {name!r}")

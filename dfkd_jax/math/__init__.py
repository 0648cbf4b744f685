"""The math of adversarial DFKD as pure functions: the losses (:mod:`~dfkd_jax.math.losses`),
the student's update objectives (:mod:`~dfkd_jax.math.objectives`) and the optimisers
(:mod:`~dfkd_jax.math.optimizers`)."""

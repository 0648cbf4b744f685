"""The DFKD methods: the presets of one trainer (:mod:`~dfkd_jax.methods.presets`) and the
generator's objectives (:mod:`~dfkd_jax.methods.generator_objectives`)."""

"""What a run records and a study reads: the learning-curve metrics
(:mod:`~dfkd_jax.metrics.curves`), data-free model selection
(:mod:`~dfkd_jax.metrics.selection`) and the ``summary.json`` contract
(:mod:`~dfkd_jax.metrics.summary`)."""

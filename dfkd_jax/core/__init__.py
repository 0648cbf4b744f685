"""The conventions every layer shares: named registries (:mod:`~dfkd_jax.core.registry`), checks
of config values (:mod:`~dfkd_jax.core.config_checks`) and the rules of a run directory
and of what may be overwritten (:mod:`~dfkd_jax.core.workdir`). Imports nothing of the package."""

"""One distillation run: its config (:mod:`~dfkd_jax.run.run_config`), the assembly
(:mod:`~dfkd_jax.run.experiment`) into a :class:`~dfkd_jax.run.run_setup.Setup`, the jitted iteration
(:mod:`~dfkd_jax.run.iteration`), the host loop (:mod:`~dfkd_jax.run.trainer`), its outputs,
checkpoints, probe, progress and evaluation; and the training of a teacher
(:mod:`~dfkd_jax.run.train_teacher`)."""

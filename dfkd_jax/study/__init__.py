"""Many runs at once: their ``summary.json`` files (:mod:`~dfkd_jax.study.study_runs`), Table 1
(:mod:`~dfkd_jax.study.report`), paired statistics (:mod:`~dfkd_jax.study.paired_stats`), the
selection table (:mod:`~dfkd_jax.study.selection_report`) and the figures
(:mod:`~dfkd_jax.study.figures`)."""

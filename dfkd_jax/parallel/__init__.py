"""Many devices and many hosts: the ``('data',)`` mesh and ``jax.shard_map`` over it
(:mod:`~dfkd_jax.parallel.mesh`), and multi-process start-up
(:mod:`~dfkd_jax.parallel.distributed`)."""

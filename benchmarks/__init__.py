"""Speed, memory and FLOP-utilisation benchmarks of dfkd_jax (each prints JSON)."""

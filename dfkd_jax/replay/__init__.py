"""Replay memories for knowledge retention (LRA Sec. 3.3, eq. 4)."""

from dfkd_jax.replay import memory
from dfkd_jax.replay.memory import MemoryState

__all__ = ["memory", "MemoryState"]

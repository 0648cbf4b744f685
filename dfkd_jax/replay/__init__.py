"""Replay sources for knowledge retention (LRA Sec. 3.3, eq. 4): one interface
(:mod:`dfkd_jax.replay.sources`) over the memory buffer, the VAE of generative replay
and the EMA generator."""

from dfkd_jax.replay import ema
from dfkd_jax.replay import generative
from dfkd_jax.replay import memory
from dfkd_jax.replay import sources
from dfkd_jax.replay.ema import EMAState
from dfkd_jax.replay.generative import VAEState
from dfkd_jax.replay.memory import MemoryState

__all__ = ["EMAState", "MemoryState", "VAEState", "ema", "generative", "memory",
           "sources"]

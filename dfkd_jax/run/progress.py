"""What a run says while it works: compile notices, a heartbeat, rate-limited progress.

A first run of a config compiles the whole training iteration, which takes minutes on
CPU; :class:`Heartbeat` says so at a steady interval so that no minute passes in
silence, and :class:`Throughput` measures iterations per second after the compile, so
that the ETA leaves the compile out. :func:`compile_cache_hits` counts JAX's own
persistent-cache hits (``jax.monitoring``), so a run can say that it compiled nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import jax

_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_cache_hits = 0


def _count_cache_hits(event: str, **kwargs) -> None:
  del kwargs
  global _cache_hits
  if event == _CACHE_HIT_EVENT:
    _cache_hits += 1


jax.monitoring.register_event_listener(_count_cache_hits)


def compile_cache_hits() -> int:
  """Programs this process loaded from the persistent compilation cache so far."""
  return _cache_hits


class Heartbeat:
  """``with Heartbeat(log, "compiling ...", every=10):`` logs every ``every`` seconds.

  The first line is logged at once; then ``"  ... still <what> (N s)"`` until the block
  ends. ``every <= 0`` logs only the first line.
  """

  def __init__(self, log: Callable[[str], None], what: str, first_line: str,
               every: float):
    self.log, self.what, self.first_line, self.every = log, what, first_line, every
    self._done = threading.Event()
    self._thread = None
    self.start = 0.0

  def __enter__(self) -> "Heartbeat":
    self.start = time.time()
    self.log(self.first_line)
    if self.every > 0:
      self._thread = threading.Thread(target=self._beat, daemon=True)
      self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._done.wait(self.every):
      self.log(f"  ... still {self.what} ({time.time() - self.start:.0f} s)")

  def __exit__(self, *exc) -> None:
    self._done.set()
    if self._thread is not None:
      self._thread.join()

  @property
  def seconds(self) -> float:
    return time.time() - self.start


class Throughput:
  """Iterations per second after the first (compiling) call, and the ETA from it."""

  def __init__(self):
    self.seconds, self.iterations = 0.0, 0

  def add(self, seconds: float) -> None:
    self.seconds += seconds
    self.iterations += 1

  @property
  def per_second(self) -> float | None:
    return self.iterations / self.seconds if self.iterations and self.seconds else None

  def eta(self, remaining: int) -> str:
    rate = self.per_second
    if rate is None:
      return "ETA after the next iteration"
    minutes = remaining / rate / 60
    return f"ETA {minutes:.1f} min"


class RateLimited:
  """Calls ``log`` at most once per ``every`` seconds (``every <= 0``: never)."""

  def __init__(self, log: Callable[[str], None], every: float):
    self.log, self.every = log, every
    self._last = time.time()

  def __call__(self, make_line: Callable[[], str]) -> None:
    if self.every > 0 and time.time() - self._last >= self.every:
      self._last = time.time()
      self.log(make_line())

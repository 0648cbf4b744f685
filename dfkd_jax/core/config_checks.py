"""Checks of config values against rules, with errors that name the value and the fix.

A rule is a predicate and the words that say what it wants; :func:`check` applies a table
of ``(field, rule)`` rows to a ``ConfigDict`` and raises ``ValueError`` at the first value
that breaks its rule::

  config_checks.check(config, [("batch_size", config_checks.POSITIVE_INT),
                               ("meta.alpha", config_checks.POSITIVE)])
  # ValueError: config.meta.alpha=inf must be a finite number > 0; set
  # --config.meta.alpha to one

Numbers must be finite real numbers (``bool`` is not a number here, ``inf`` and NaN are
never accepted); integer rules accept only ``int``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence


class Rule(NamedTuple):
  """A predicate on a value, and what it wants in words (``"a finite number > 0"``)."""

  holds: Callable[[Any], bool]
  wants: str


def _number(v) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def _integer(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


POSITIVE = Rule(lambda v: _number(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Rule(lambda v: _number(v) and v >= 0, "a finite number >= 0")
POSITIVE_INT = Rule(lambda v: _integer(v) and v > 0, "an integer > 0")
NON_NEGATIVE_INT = Rule(lambda v: _integer(v) and v >= 0, "an integer >= 0")
INTEGER = Rule(_integer, "an integer")
# Momentum and Adam's betas: 0 <= v < 1 (1 would never forget a gradient).
UNIT_INTERVAL = Rule(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
CLOSED_UNIT_INTERVAL = Rule(lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")


def one_of(choices: Sequence[Any]) -> Rule:
  """A rule that the value is one of ``choices``."""
  choices = tuple(choices)
  return Rule(lambda v: v in choices, f"one of: {', '.join(map(str, choices))}")


def value(config, name: str) -> Any:
  """The value of the dotted field ``name`` (``"meta.alpha"``) of ``config``."""
  for part in name.split("."):
    config = config[part]
  return config


def check(config, rows: Sequence[tuple[str, Rule]]) -> None:
  """Raises ``ValueError`` for the first field of ``rows`` whose value breaks its rule."""
  for name, rule in rows:
    v = value(config, name)
    if not rule.holds(v):
      raise ValueError(f"config.{name}={v!r} must be {rule.wants}; set "
                       f"--config.{name} to one")


def check_finite(config, prefix: str = "") -> None:
  """Raises ``ValueError`` for the first float anywhere in ``config`` that is NaN or
  infinite, used by the run or not (it would reach the workdir's record and the
  summary, whose JSON has no NaN)."""
  for key, v in config.items():
    name = f"{prefix}{key}"
    if hasattr(v, "items"):
      check_finite(v, f"{name}.")
    elif isinstance(v, float) and not math.isfinite(v):
      raise ValueError(f"config.{name}={v!r} must be a finite number; set "
                       f"--config.{name} to one")

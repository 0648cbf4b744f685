"""DFKD methods as presets of one trainer.

A method fixes four choices: the student update (LRA eqs. 3, 5, 6), the replay source,
the student's KD loss and the generator's loss. Select one with
``--config=configs/cifar10.py:method=NAME``; ``config.student_update`` may override the
update of a preset (e.g. ``meta_first_order``).

| method   | student update | replay | student loss | generator loss          |
|----------|----------------|--------|--------------|-------------------------|
| dfkd     | acquire        | none   | MAE          | -JS + LRA priors (eq. 15)|
| mb_dfkd  | joint          | memory | MAE          | -JS + LRA priors        |
| lra_mb   | meta           | memory | MAE          | -JS + LRA priors        |

``dfkd`` is the paper's DFKD* (no replay), ``mb_dfkd`` MB-DFKD (Binici et al., WACV
2022) and ``lra_mb`` the paper's Ours-1 (Memory Bank).
"""

from __future__ import annotations

import dataclasses

STUDENT_UPDATES = ("acquire", "joint", "meta", "meta_first_order")
REPLAYS = ("none", "memory")
STUDENT_LOSSES = ("mae", "kl")
GENERATOR_LOSSES = ("lra",)


@dataclasses.dataclass(frozen=True)
class Method:
  """One preset.

  Attributes:
    student_update: ``acquire`` (eq. 3), ``joint`` (eq. 5), ``meta`` (eq. 6, exact) or
      ``meta_first_order``.
    replay: where retention samples come from: ``none`` or ``memory``.
    student_loss: the KD loss of the student steps: ``mae`` (LRA eq. 2) or ``kl``.
    generator_loss: ``lra``: ``-JS + L_P`` (LRA eq. 15).
    description: one line for listings.
  """

  student_update: str
  replay: str
  student_loss: str
  generator_loss: str
  description: str


METHODS: dict[str, Method] = {
    "dfkd": Method("acquire", "none", "mae", "lra",
                   "DFKD*: adversarial DFKD without replay (LRA Table 1)"),
    "mb_dfkd": Method("joint", "memory", "mae", "lra",
                      "MB-DFKD: joint acquisition + memory-buffer retention (eq. 5)"),
    "lra_mb": Method("meta", "memory", "mae", "lra",
                     "LRA Ours-1: exact meta update with a memory buffer (eq. 6)"),
}


def get(name: str) -> Method:
  """The preset ``name``.

  Raises:
    ValueError: unknown name, listing the valid ones.
  """
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
  return METHODS[name]


def resolve(name: str, student_update: str = "") -> Method:
  """The preset with an optional student-update override, validated."""
  method = get(name)
  if student_update:
    if student_update not in STUDENT_UPDATES:
      raise ValueError(f"unknown student_update {student_update!r}; valid: "
                       f"{', '.join(STUDENT_UPDATES)}")
    if student_update != "acquire" and method.replay == "none":
      raise ValueError(f"student_update={student_update!r} needs retention samples, but "
                       f"method {name!r} has no replay; use a method with replay "
                       "(e.g. mb_dfkd, lra_mb)")
    method = dataclasses.replace(method, student_update=student_update)
  return method

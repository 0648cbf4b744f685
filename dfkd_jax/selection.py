"""Data-free model selection: which epoch's student to keep, chosen without labels.

A user of data-free distillation has no labelled set to pick the best epoch with, and
adversarial DFKD curves are not monotone. Every epoch's end records data-free
*criteria* (computed on the device, :mod:`dfkd_jax.probe`); the criterion in force
(``config.selection.criterion``) chooses the epoch whose student is kept
(:func:`select_epoch`), exported and reported. The test accuracy of that epoch is
recorded for evaluation only (``selected_accuracy``); the choice never reads it.

Criteria (:data:`CRITERIA`, the package's registry style; each entry carries its
traits):

* ``last``: the last epoch, the baseline every criterion must beat (no probe needed).
* ``agreement``: top-1 agreement (fraction in [0, 1]) between student and teacher on
  the probe set, generated samples the student never trains on, labelled by the teacher
  (:mod:`dfkd_jax.probe`). Higher is better.
* ``js``: the mean Jensen-Shannon divergence (nats, in [0, ln 2]) between the teacher's
  and the student's softmax on the probe set. Lower is better.
* ``replay_agreement``, ``replay_js``: the same on one batch of the replay source's
  samples (memory slot, EMA generator, VAE decoder); methods with replay only.

A run whose ``agreement`` stays no better than chance (below :data:`CHANCE_FACTOR` /
``num_classes``) for ``collapse_epochs`` consecutive epochs is *collapsed*
(:func:`collapse`): its epoch lines and its summary say so.

Everything here is plain Python and NumPy on recorded per-epoch values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from dfkd_jax import registry

#: Agreement below CHANCE_FACTOR / num_classes is "no better than chance": a student
#: that predicts one class agrees on about 1 / num_classes of class-balanced samples.
CHANCE_FACTOR = 1.5


@dataclasses.dataclass(frozen=True)
class Criterion:
  """A data-free selection criterion.

  Attributes:
    needs_probe: computed on the probe set (``config.selection.probe_size > 0``).
    needs_replay: computed on the replay source's samples (methods with replay).
    higher_is_better: the epoch with the largest value is chosen (else the smallest).
    description: one line for listings.
  """

  needs_probe: bool
  needs_replay: bool
  higher_is_better: bool
  description: str


CRITERIA: registry.Registry[Criterion] = registry.Registry(
    "selection criterion", valid="valid criteria")
CRITERIA.register("last", Criterion(False, False, True, "the last epoch (baseline)"))
CRITERIA.register("agreement", Criterion(
    True, False, True, "top-1 student-teacher agreement on the probe set"))
CRITERIA.register("js", Criterion(
    True, False, False, "mean JS divergence teacher-student on the probe set"))
CRITERIA.register("replay_agreement", Criterion(
    False, True, True, "top-1 agreement on a batch of the replay source's samples"))
CRITERIA.register("replay_js", Criterion(
    False, True, False, "mean JS divergence on a batch of the replay source's samples"))


def measured(probe: bool, replay: bool) -> tuple[str, ...]:
  """The criteria a run records per epoch (``last`` has no values): those of the probe
  when it is on, those of the replay source when the method has one."""
  return tuple(name for name, c in CRITERIA.items()
               if (c.needs_probe and probe) or (c.needs_replay and replay))


def check(options: Mapping[str, Any], has_replay: bool, batch_size: int,
          num_devices: int) -> None:
  """Checks ``config.selection`` against the run; one line per error.

  Args:
    options: the section's values (``criterion``, ``probe_size``, ``probe_epochs``,
      ``collapse_epochs``).
    has_replay: the method has a replay source.
    batch_size: the run's global batch.
    num_devices: the mesh's device count.

  Raises:
    ValueError: an unknown criterion, a criterion that needs the probe (or replay) on a
      run without it, or a probe that does not fit the batch or the devices.
  """
  name = options["criterion"]
  if name not in CRITERIA:
    raise ValueError(f"config.selection.criterion={name!r} is unknown; valid criteria: "
                     f"{', '.join(CRITERIA.names())}")
  criterion = CRITERIA.get(name)
  size, slots = options["probe_size"], options["probe_epochs"]
  if criterion.needs_replay and not has_replay:
    raise ValueError(f"config.selection.criterion={name!r} needs a replay source, but "
                     "the method has none; use agreement, js or last, or a method with "
                     "replay (e.g. mb_dfkd, lra_ema)")
  if criterion.needs_probe and not size:
    raise ValueError(f"config.selection.criterion={name!r} needs the probe set, but "
                     "config.selection.probe_size=0; set a probe size or use last")
  if not size:
    return
  per_epoch = size // slots
  if size % slots or per_epoch > batch_size or per_epoch % num_devices:
    raise ValueError(
        f"config.selection.probe_size={size} does not fit: it must be "
        f"config.selection.probe_epochs={slots} slots of at most config.batch_size="
        f"{batch_size} samples each, a multiple of the device count ({num_devices}); "
        f"e.g. probe_size={slots * (min(batch_size, 32) // num_devices * num_devices)}")


def select_epoch(values: Sequence[float | None], higher_is_better: bool = True
                 ) -> int | None:
  """The 0-based epoch whose value is best (the latest of ties; ``None`` values and
  non-finite ones are skipped), or ``None`` when no epoch has a value."""
  best, chosen = None, None
  for epoch, value in enumerate(values):
    if value is None or not math.isfinite(value):
      continue
    score = value if higher_is_better else -value
    if best is None or score >= best:
      best, chosen = score, epoch
  return chosen


def selected_epoch(name: str, criteria: Mapping[str, Sequence[float | None]],
                   num_epochs: int) -> int | None:
  """The 0-based epoch that criterion ``name`` chooses among ``num_epochs`` evaluated
  epochs; the last one for ``last`` and when the criterion has no value yet (a run
  resumed from a checkpoint made before criteria existed has none for its early
  epochs, which are then never chosen)."""
  if num_epochs == 0:
    return None
  criterion = CRITERIA.get(name)
  values = list(criteria.get(name, ()))[:num_epochs] if name != "last" else []
  chosen = select_epoch(values, criterion.higher_is_better)
  return num_epochs - 1 if chosen is None else chosen


def collapse(agreement: Sequence[float | None], num_classes: int,
             epochs: int) -> str | None:
  """Why a run is collapsed, or ``None``: the first ``epochs`` consecutive epochs
  whose probe agreement is below ``CHANCE_FACTOR / num_classes`` (``epochs`` 0: off)."""
  if epochs <= 0:
    return None
  threshold = CHANCE_FACTOR / num_classes
  run = 0
  for epoch, value in enumerate(agreement):
    run = run + 1 if value is not None and value < threshold else 0
    if run == epochs:
      first = epoch + 2 - epochs
      return (f"collapsed: the student agrees with the teacher no better than chance "
              f"(probe agreement < {threshold:.3f} = {CHANCE_FACTOR:g}/{num_classes}) "
              f"in epochs {first}-{epoch + 1}")
  return None


def rank_correlation(values: Sequence[float | None], accuracy: Sequence[float],
                     higher_is_better: bool = True) -> float | None:
  """Spearman's rank correlation over the epochs between a criterion (signed so that
  +1 means "the better the criterion, the higher the accuracy") and the test accuracy;
  ``None`` under 3 epochs with values or when either side is constant."""
  pairs = [(v, a) for v, a in zip(values, accuracy)
           if v is not None and math.isfinite(v)]
  if len(pairs) < 3:
    return None
  v, a = (np.asarray(x, np.float64) for x in zip(*pairs))
  if np.ptp(v) == 0 or np.ptp(a) == 0:
    return None
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rho = float(stats.spearmanr(v if higher_is_better else -v, a).statistic)
  return rho if math.isfinite(rho) else None

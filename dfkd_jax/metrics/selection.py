"""Data-free model selection: which epoch's student to keep, chosen without labels.

A user of data-free distillation has no labelled set to pick the best epoch with, and
adversarial DFKD curves are not monotone. Every epoch's end records data-free
*criteria* (computed on the device, :mod:`dfkd_jax.run.probe`); the criterion in force
(``config.selection.criterion``) chooses the epoch whose student is kept
(:func:`select_epoch`), exported and reported. The test accuracy of that epoch is
recorded for evaluation only (``selected_accuracy``); the choice never reads it.

Criteria (:data:`CRITERIA`, the package's registry style; each entry carries its
traits):

* ``last``: the last epoch, the baseline every criterion must beat (no probe needed).
* ``agreement``: top-1 agreement (fraction in [0, 1]) between student and teacher on
  the probe set, generated samples the student never trains on, labelled by the teacher
  (:mod:`dfkd_jax.run.probe`). Higher is better.
* ``js``: the mean Jensen-Shannon divergence (nats, in [0, ln 2]) between the teacher's
  and the student's softmax on the probe set. Lower is better.
* ``replay_agreement``, ``replay_js``: the same on one batch of the replay source's
  samples (memory slot, EMA generator, VAE decoder); methods with replay only.

Beside the criteria each epoch records the probe's *health signals* (:data:`HEALTH`,
computed on the device with them, :func:`dfkd_jax.run.probe.health`): ``probe_diversity``
(the entropy of the teacher's label histogram on the probe over its maximum),
``balanced_agreement`` (agreement averaged over the teacher's classes),
``loss_ratio`` (the student's loss on the probe over a constant student's) and
``fault``, the epoch's :func:`fault_code`: 0 healthy, or why its student cannot be
trusted (:data:`FAULTS`): it diverged (loss ratio above :data:`DIVERGED_RATIO` or
non-finite), the probe is collapsed (diversity below :data:`MIN_DIVERSITY`: the
generator makes one or two classes, and agreement on it says nothing), or the
student agrees no better than chance (balanced agreement below :data:`CHANCE_FACTOR`
/ ``num_classes``). The probe and replay criteria skip faulty epochs while the run has
a healthy one (:func:`selected_epoch`); ``last`` keeps the last epoch. A run is
*collapsed* (:func:`collapse`) when a student diverged, when its latest
``collapse_epochs`` or more consecutive epochs are faulty (a healthy epoch after a
faulty streak is a recovery), or when the finished run keeps a faulty student: its
epoch lines, its summary and the report say so.

Everything here is plain Python and NumPy on recorded per-epoch values, but
:func:`fault_code`, which the device computes too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from dfkd_jax.core import registry

#: Agreement below CHANCE_FACTOR / num_classes is "no better than chance": a student
#: that predicts one class agrees on about 1 / num_classes of class-balanced samples.
CHANCE_FACTOR = 1.5
#: A probe whose teacher labels have less entropy than this fraction of ln(classes) is
#: collapsed: 0.65 of ln 10 is about 4.5 equally frequent classes of 10. Measured on
#: digits (issue 37): generators driven to collapse 0.16-0.53, healthy runs (their
#: first epoch included) and untrained students 0.80-0.99.
MIN_DIVERSITY = 0.65
#: A student whose loss on the probe exceeds this many times a constant (zero-logit)
#: student's has diverged.
DIVERGED_RATIO = 10.0
#: The probe's health signals recorded beside the criteria every epoch.
HEALTH = ("probe_diversity", "balanced_agreement", "loss_ratio", "fault")
#: What a nonzero ``fault`` code means (index = code).
FAULTS = ("healthy", "diverged", "probe collapsed", "chance agreement")


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
  epochs: the last one for ``last``; a probe or replay criterion skips the epochs whose
  recorded ``fault`` is nonzero while any epoch is healthy, and chooses the last
  (healthy) one when it has no value yet (a run resumed from a checkpoint made before
  criteria existed has none for its early epochs, which are then never chosen)."""
  if num_epochs == 0:
    return None
  if name == "last":
    return num_epochs - 1
  criterion = CRITERIA.get(name)
  faults = list(criteria.get("fault", ()))[:num_epochs]
  faulty = {e for e, code in enumerate(faults) if code}  # None: not measured.
  healthy = [e for e in range(num_epochs) if e not in faulty]
  if not healthy:  # Nothing better to keep: as if there were no faults.
    faulty, healthy = set(), list(range(num_epochs))
  values = [None if e in faulty else v
            for e, v in enumerate(list(criteria.get(name, ()))[:num_epochs])]
  chosen = select_epoch(values, criterion.higher_is_better)
  return healthy[-1] if chosen is None else chosen


def fault_code(diversity, balanced_agreement, loss_ratio, num_classes: int):
  """An epoch's fault code (index into :data:`FAULTS`) from its health signals, on
  NumPy or JAX values (the device computes it in :func:`dfkd_jax.run.probe.health`): 1 the
  student diverged (``loss_ratio`` above :data:`DIVERGED_RATIO`, or not finite), 2 the
  probe is collapsed (``diversity`` below :data:`MIN_DIVERSITY`), 3 chance agreement
  (``balanced_agreement`` below ``CHANCE_FACTOR / num_classes``), else 0."""
  diverged = jnp.logical_not(jnp.asarray(loss_ratio) <= DIVERGED_RATIO)  # NaN too.
  return jnp.where(diverged, 1, jnp.where(
      jnp.asarray(diversity) < MIN_DIVERSITY, 2,
      jnp.where(jnp.asarray(balanced_agreement) < CHANCE_FACTOR / num_classes, 3, 0)))


def _value(criteria: Mapping[str, Sequence[float | None]], name: str, epoch: int):
  values = criteria.get(name, ())
  return values[epoch] if epoch < len(values) else None


def epoch_faults(criteria: Mapping[str, Sequence[float | None]], num_classes: int,
                 num_epochs: int) -> list[str | None]:
  """Per epoch, why its student cannot be trusted (one clause), or ``None``: from its
  recorded ``fault`` code, or, for epochs recorded before health signals existed, from
  a plain probe ``agreement`` below ``CHANCE_FACTOR / num_classes``."""
  threshold = CHANCE_FACTOR / num_classes
  out = []
  for e in range(num_epochs):
    code, agreement = _value(criteria, "fault", e), _value(criteria, "agreement", e)
    if code is None:
      code = 3 if agreement is not None and agreement < threshold else 0
      balanced = agreement
    else:
      balanced = _value(criteria, "balanced_agreement", e)
    code = int(code)
    if code == 1:
      ratio = _value(criteria, "loss_ratio", e)
      out.append("the student diverged: its loss on the probe is "
                 + ("not finite" if ratio is None else f"{ratio:.3g}x")
                 + f" a constant student's (> {DIVERGED_RATIO:g}x)")
    elif code == 2:
      diversity = _value(criteria, "probe_diversity", e) or 0.0
      out.append(f"the generator collapsed: the teacher's labels on the probe cover "
                 f"{num_classes ** diversity:.1f} of {num_classes} classes (label "
                 f"entropy {diversity:.2f} of its maximum, < {MIN_DIVERSITY:g}), so "
                 "agreement on it says nothing")
    elif code == 3:
      shown = "?" if balanced is None else f"{balanced:.3f}"
      out.append(f"the student agrees with the teacher no better than chance "
                 f"(class-balanced probe agreement {shown} < {threshold:.3f} = "
                 f"{CHANCE_FACTOR:g}/{num_classes})")
    else:
      out.append(None)
  return out


def collapse(criteria: Mapping[str, Sequence[float | None]], num_classes: int,
             epochs: int, num_epochs: int | None = None, finished: bool = True,
             criterion: str = "last", untrained: int = 0) -> str | None:
  """Why a run is collapsed, or ``None`` (``epochs`` 0: never): the first epoch whose
  student diverged; else ``epochs`` or more consecutive faulty epochs
  (:func:`epoch_faults`) that end the run so far (a healthy epoch after them is a
  recovery: on CIFAR-10 a ``dfkd`` seed agreed at chance for its first 3 epochs and
  ended at 60.49%, its method's best); else, once the run is ``finished``, the epoch that
  ``criterion`` keeps among its ``num_epochs`` (default: as many as ``agreement`` or
  ``fault`` has) being faulty (a run still under way may yet get a healthy one). The
  first ``untrained`` epochs, whose student took no step yet (a Fast method's
  warm-up), count as healthy."""
  if epochs <= 0:
    return None
  if num_epochs is None:
    num_epochs = max(len(criteria.get("fault", ())), len(criteria.get("agreement", ())))
  faults = epoch_faults(criteria, num_classes, num_epochs)
  faults = [None if e < untrained else f for e, f in enumerate(faults)]
  for epoch, fault in enumerate(faults):
    if fault and fault.startswith("the student diverged"):
      return f"collapsed: in epoch {epoch + 1} {fault}"
  trailing = next((n for n, fault in enumerate(reversed(faults)) if not fault),
                  len(faults))
  if trailing >= epochs:  # A streak a later healthy epoch ended is a recovery.
    first, last = len(faults) - trailing + 1, len(faults) - trailing + epochs
    span = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    return f"collapsed: in {span} {faults[last - 1]}"
  kept = selected_epoch(criterion, criteria, num_epochs) if finished else None
  if kept is not None and faults[kept]:
    if all(faults):
      span = "epoch 1" if len(faults) == 1 else f"every epoch (1-{len(faults)})"
      return f"collapsed: in {span} {faults[kept]}; the kept student is one of them"
    return (f"collapsed: the kept student (epoch {kept + 1}, by {criterion}) is faulty: "
            f"{faults[kept]}")
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

"""DFKD methods as presets of one trainer.

A method fixes four choices: the student update (LRA eqs. 3, 5, 6), the replay source,
the student's KD loss and the generator's loss. Select one with
``--config=configs/cifar10.py:method=NAME``; ``config.student_update`` may override the
update of a preset (e.g. ``meta_first_order``).

| method   | update  | replay     | student loss | generator loss (kind)             |
|----------|---------|------------|--------------|-----------------------------------|
| dafl     | acquire | none       | KL           | OH + activation + entropy (dafl)  |
| dfad     | acquire | none       | MAE          | -MAE (dfad)                       |
| zskt     | acquire | none       | KL           | -KL (zskt)                        |
| dfq      | acquire | none       | KL           | -KL + BN + OH + entropy (dfq)     |
| dfkd     | acquire | none       | MAE          | -JS + LRA priors, eq. 15 (lra)    |
| mb_dfkd  | joint   | memory     | MAE          | -JS + LRA priors (lra)            |
| pre_dfkd | joint   | generative | MAE          | -JS + LRA priors (lra)            |
| lra_mb   | meta    | memory     | MAE          | -JS + LRA priors (lra)            |
| lra_pre  | meta    | generative | MAE          | -JS + LRA priors (lra)            |
| mad      | joint   | ema        | KL           | -KL + BN (+ NLL, norm reg.) (mad) |
| ema_dfkd | joint   | ema        | MAE          | -JS + LRA priors (lra)            |
| lra_ema  | meta    | ema        | MAE          | -JS + LRA priors (lra)            |
| fast     | acquire | bank       | KL (T)       | BN + CE(y) - masked KL (fast)     |
| fast_reptile | acquire | bank   | KL (T)       | BN + CE(y) - masked KL (fast)     |
| fast_exact | acquire | bank     | KL (T)       | BN + CE(y) - masked KL (fast)     |
| nayer    | acquire | bank       | KL (T)       | BN + CE(y) - masked KL (fast)     |

OH = one-hot, BN = BatchNorm-moment matching (when the teacher has BatchNorm), NLL and
norm reg. = MAD's class-conditional terms (with ``config.conditional_generator``).

``dfkd`` is the paper's DFKD* (no replay), ``mb_dfkd`` MB-DFKD (Binici et al., WACV
2022), ``pre_dfkd`` PRE-DFKD (Binici et al., AAAI 2022, VAE replay), ``lra_mb`` and
``lra_pre`` the paper's Ours-1 (memory bank) and Ours-2 (generative replay), ``mad`` MAD
(Do et al., NeurIPS 2022: EMA generator), and ``lra_ema`` the meta update with MAD's EMA
generator as the retention source (no published code has it). ``dafl``, ``dfad``,
``zskt`` and ``dfq`` are the classic baselines (DAFL, DFAD, ZSKT, DFQ). Replay sources
are in :mod:`dfkd_jax.replay.sources`, generator losses in
:mod:`dfkd_jax.methods.generator_objectives`.

The ``fast`` family is Fast DFKD (Fang et al., "Up to 100x Faster Data-free Knowledge
Distillation", AAAI 2022): no adversarial generator step, but a *synthesis round* per
iteration (:mod:`dfkd_jax.methods.fast`): a copy of a meta-learned generator and fresh
latent codes take a few Adam steps on the ``fast`` loss, the round's best batch joins a
data bank, and the meta-initialisation moves by its ``meta_gradient``
(:data:`dfkd_jax.math.meta_init.META_GRADIENTS`): ``fast`` the published first-order
MAML gradient, ``fast_reptile`` Reptile, ``fast_exact`` the exact second-order
gradient through the inner Adam steps. The student's steps (``acquire``) distil on
batches drawn from the whole bank, with the KL at temperature ``config.fast.temperature``.
``nayer`` is NAYER (Tran et al., CVPR 2024) in the same rounds: no meta-learning (the
generator keeps its adapted copy, the ``keep`` meta-gradient), and ``nayer_generator``,
whose input is a class code per row through a noisy layer re-drawn every round.
"""

from __future__ import annotations

import dataclasses

from dfkd_jax.core import registry
from dfkd_jax.math import objectives
from dfkd_jax.replay import sources as replay_sources


@dataclasses.dataclass(frozen=True)
class Method:
  """One preset.

  Each choice names an entry of its kind's registry.

  Attributes:
    student_update: an update rule of :data:`dfkd_jax.math.objectives.UPDATE_RULES`:
      ``acquire`` (eq. 3), ``joint`` (eq. 5), ``meta`` (eq. 6, exact) or
      ``meta_first_order``.
    replay: where retention samples come from, a kind of
      :data:`dfkd_jax.replay.sources.REPLAYS`: ``none``, ``memory`` (buffer),
      ``generative`` (VAE decoder) or ``ema`` (EMA generator).
    student_loss: the KD loss of the student steps, of
      :data:`dfkd_jax.math.losses.STUDENT_LOSSES`: ``mae`` (LRA eq. 2) or ``kl`` (MAD eq. 3).
    generator_loss: a loss of :data:`dfkd_jax.methods.generator_objectives.GENERATOR_LOSSES`
      (``lra`` = ``-JS + L_P``, LRA eq. 15).
    description: one line for listings.
    meta_gradient: ``""`` for the adversarial generator step, or a meta-gradient of
      :data:`dfkd_jax.math.meta_init.META_GRADIENTS` (``first_order``, ``reptile``,
      ``exact``, ``keep``): the method synthesises with Fast DFKD's meta-learned generator
      (:mod:`dfkd_jax.methods.fast`) instead.
    generator: the generator the method synthesises with whatever
      ``config.generator`` names (NAYER's ``nayer_generator``, whose input the rounds
      build); empty: ``config.generator``.
  """

  student_update: str
  replay: str
  student_loss: str
  generator_loss: str
  description: str
  meta_gradient: str = ""
  generator: str = ""

  @property
  def synthesis_rounds(self) -> bool:
    """Whether an iteration is a Fast DFKD synthesis round (a meta-learned generator,
    a data bank) rather than adversarial generator steps."""
    return bool(self.meta_gradient)


#: The presets (``config.method``).
METHODS: registry.Registry[Method] = registry.Registry("method", valid="valid methods")
for _name, _method in {
    "dafl": Method("acquire", "none", "kl", "dafl",
                   "DAFL: priors only (one-hot, activation, entropy), no adversarial term"),
    "dfad": Method("acquire", "none", "mae", "dfad",
                   "DFAD: adversarial MAE"),
    "zskt": Method("acquire", "none", "kl", "zskt",
                   "ZSKT: adversarial KL"),
    "dfq": Method("acquire", "none", "kl", "dfq",
                  "DFQ: adversarial KL + BN moments + one-hot + entropy"),
    "dfkd": Method("acquire", "none", "mae", "lra",
                   "DFKD*: adversarial DFKD without replay (LRA Table 1)"),
    "mb_dfkd": Method("joint", "memory", "mae", "lra",
                      "MB-DFKD: joint acquisition + memory-buffer retention (eq. 5)"),
    "pre_dfkd": Method("joint", "generative", "mae", "lra",
                       "PRE-DFKD: joint acquisition + VAE generative replay (eq. 5)"),
    "lra_mb": Method("meta", "memory", "mae", "lra",
                     "LRA Ours-1: exact meta update with a memory buffer (eq. 6)"),
    "lra_pre": Method("meta", "generative", "mae", "lra",
                      "LRA Ours-2: exact meta update with VAE generative replay (eq. 6)"),
    "mad": Method("joint", "ema", "kl", "mad",
                  "MAD: KL on G(z) and on the EMA generator's G~(z') (MAD eq. 4)"),
    "ema_dfkd": Method("joint", "ema", "mae", "lra",
                       "joint update (eq. 5) with the EMA generator as retention source: "
                       "lra_ema's control, as mb_dfkd is lra_mb's"),
    "lra_ema": Method("meta", "ema", "mae", "lra",
                      "meta update (eq. 6) with MAD's EMA generator as retention source"),
    "fast": Method("acquire", "bank", "kl", "fast",
                   "Fast DFKD: a meta-learned generator adapted for a few steps per "
                   "round, first-order MAML meta-gradient (as published), KD from the "
                   "data bank", meta_gradient="first_order"),
    "fast_reptile": Method("acquire", "bank", "kl", "fast",
                           "Fast DFKD with the Reptile meta-gradient (official is_maml=0)",
                           meta_gradient="reptile"),
    "fast_exact": Method("acquire", "bank", "kl", "fast",
                         "Fast DFKD with the exact second-order meta-gradient through "
                         "the inner Adam steps (jax.grad)", meta_gradient="exact"),
    "nayer": Method("acquire", "bank", "kl", "fast",
                    "NAYER: one generator trained on round after round (no meta-learning) "
                    "from class codes through a noisy layer re-drawn every round, KD from "
                    "the data bank", meta_gradient="keep", generator="nayer_generator"),
}.items():
  METHODS.register(_name, _method)
del _name, _method


def get(name: str) -> Method:
  """The preset ``name`` (``ValueError`` listing the valid ones)."""
  return METHODS.get(name)


def resolve(name: str, student_update: str = "") -> Method:
  """The preset with an optional student-update override, validated."""
  method = get(name)
  if method.synthesis_rounds and student_update not in ("", method.student_update):
    raise ValueError(f"student_update={student_update!r}: method {name!r} distils on "
                     f"its data bank only ({method.student_update!r}); leave "
                     "config.student_update empty")
  if student_update:
    rule = objectives.UPDATE_RULES.get(student_update)
    if (rule.needs_retention
        and not replay_sources.REPLAYS.get(method.replay).provides_retention):
      raise ValueError(f"student_update={student_update!r} needs retention samples, but "
                       f"method {name!r} has no replay; use a method with replay "
                       "(e.g. mb_dfkd, lra_mb)")
    method = dataclasses.replace(method, student_update=student_update)
  return method

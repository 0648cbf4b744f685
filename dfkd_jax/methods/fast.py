"""Fast DFKD's synthesis round, as pure functions of the networks (Fang et al., "Up to
100x Faster Data-free Knowledge Distillation", AAAI 2022; code zju-vipa/Fast-Datafree,
``datafree/synthesis/fast_meta.py``).

One round (:func:`synthesis_round`, one trainer iteration with the student's steps
after it, :mod:`dfkd_jax.run.iteration`):

1. fresh latent codes ``z ~ N(0, I)`` and random target classes ``y`` (L114-116);
2. a copy of the meta-learned generator ``theta_0`` and ``z`` take ``g`` Adam steps
   together (:func:`dfkd_jax.math.meta_init.inner_loop`) on :func:`synthesis_loss`: the
   images ``x = G(z)`` are augmented (random crop with padding and horizontal flip,
   L95-99, new randomness at every step), and the frozen teacher (and, for the
   adversarial term, the frozen student, both in eval mode) see the augmented images
   (L129-150);
3. the batch with the lowest loss among the ``g`` steps (the first of equals: L153-155),
   un-augmented, is the round's output for the data bank (L181);
4. ``theta_0`` moves by the method's meta-gradient (first-order MAML, Reptile or exact,
   :data:`dfkd_jax.math.meta_init.META_GRADIENTS`), applied by the caller's meta
   optimiser (L160-175);
5. the teacher's BatchNorm moments of the last step are averaged into the bank's
   running moments (``bn_mmt``, L167-169).

The loss (:func:`dfkd_jax.methods.generator_objectives.fast`) has its adversarial term
only from the round before the student's first distillation round on (the official
``self.ep >= self.ep_start`` with ``ep`` counted from 1 before the test, L105 and L144,
while distillation starts at ``epoch >= warmup``, ``datafree_kd.py`` L373). Its
BatchNorm term compares the teacher's running statistics with ``(1 - r) * batch + r *
history`` (``DeepInversionHook`` with ``mmt_rate = r``, ``datafree/hooks.py`` L96-102)
once the bank holds a history, the batch's own moments before.

NAYER (Tran et al., "NAYER: Noisy Layer Generation for Efficient Data-Free Knowledge
Distillation", CVPR 2024; code tmtuan1307/NAYER, ``datafree/synthesis/nayer.py``) is a
round of the same kind with three changes: no meta-learning (the ``keep``
meta-gradient: the generator is the adapted copy, trained on with a fresh Adam state
every round); its input is a fixed class code per row through a *noisy layer*
(:class:`dfkd_jax.models.generators.NoisyLayerGenerator`) whose weights are re-drawn
at the start of every round (:func:`redraw_noisy_layers`, its ``re_init_le``), with
balanced targets (:func:`balanced_targets`, its ``generate_ys``); and the whole
generator is created anew every ``generator_life_rounds`` (its ``g_life``).

Everything runs per device inside the trainer's ``shard_map`` (batch means and the
teacher's BatchNorm moments are global; augmentations and latent codes are drawn for
the global batch, each device taking its rows), so a sharded round computes what one
device computes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dfkd_jax.data import augment
from dfkd_jax.math import losses
from dfkd_jax.math import meta_init
from dfkd_jax.methods import generator_objectives
from dfkd_jax.models.layers import ClassifierFeatures

Array = chex.Array
#: The generator layers the official ``reset_l0`` re-initialises (``l1.0``, the linear
#: stem, and ``conv_blocks.0``, the BatchNorm after it, ``fast_meta.py`` L30-34), by
#: their names in the zoo's generators.
RESET_LAYERS = (("l1", ("kernel", "bias")), ("bn0", ("scale", "bias")))


class FastOptions(NamedTuple):
  """The resolved options of a Fast method (``config.fast``).

  Attributes:
    meta_gradient: a name of :data:`dfkd_jax.math.meta_init.META_GRADIENTS`.
    objective: the exact meta-objective, ``"final"`` or ``"sum"``.
    inner: the inner loop's steps, learning rates, betas and ``eps``.
    weights: the loss weights (``adversarial``, ``one_hot``, ``bn_moments`` are read).
    bn_momentum: ``r`` of the running BatchNorm moments (0: none).
    warmup_rounds: rounds of synthesis before the student's first steps.
    reset_round: the round at whose start the stem is re-initialised (-1: never).
    crop_padding: the augmentation's padding (0: no crop).
    flip: the augmentation's horizontal flips.
    augment_bank: the student's batches are augmented too (the dataset's training
      transform of the official code: CIFAR yes, MNIST no).
    pad_value: the padding's value per channel (the teacher's normalised black).
    class_codes: ``[classes, d]`` the class codes of a noisy-layer generator (NAYER),
      else ``None`` (latent codes ``z ~ N(0, I)``).
    generator_life_rounds: the generator is created anew every this many rounds (0:
      never; NAYER's ``g_life``).
  """

  meta_gradient: str
  objective: str
  inner: meta_init.InnerOptions
  weights: generator_objectives.GeneratorLossWeights
  bn_momentum: float
  warmup_rounds: int
  reset_round: int
  crop_padding: int
  flip: bool
  augment_bank: bool
  pad_value: tuple[float, ...]
  class_codes: np.ndarray | None = None
  generator_life_rounds: int = 0


class SynthesisNetworks(NamedTuple):
  """The networks of a round, per device.

  Attributes:
    generate: ``(params, batch_stats, z) -> (x, new_batch_stats)``, the generator in
      training mode, ``x`` in the teacher's normalised input space.
    teacher: ``x -> (logits, ClassifierFeatures)``, the frozen teacher (eval mode).
    student: ``x -> logits``, the frozen student in eval mode.
    augment: ``(key, x) -> x``, the round's augmentation of this device's rows.
  """

  generate: Callable[..., tuple[Array, Any]]
  teacher: Callable[[Array], tuple[Array, ClassifierFeatures]]
  student: Callable[[Array], Array]
  augment: Callable[[Array, Array], Array]


def augment_rows(key: Array, x: Array, *, global_batch: int, padding: int, flip: bool,
                 pad_value: Sequence[float], axis_name: str | None = None) -> Array:
  """:func:`dfkd_jax.data.augment.crop_and_flip` of this device's rows of a global batch.

  Every global row ``i`` draws its crop and flip from ``split(key, global_batch)[i]``,
  so the batch is augmented the same on any device count.
  """
  keys = jax.random.split(key, global_batch)
  if axis_name is not None:
    n = x.shape[0]
    keys = jax.lax.dynamic_slice_in_dim(keys, jax.lax.axis_index(axis_name) * n, n)

  def one(k, image):
    return augment.crop_and_flip(k, image[None], padding=padding, flip=flip,
                                 pad_value=pad_value)[0]

  return jax.vmap(one)(keys, x)


def blend_moments(moments: Sequence[losses.BNMoments], history_mean, history_var,
                  weight: Array) -> tuple[losses.BNMoments, ...]:
  """The moments the BatchNorm term compares with the teacher's running statistics:
  ``(1 - w) * batch + w * history`` (``w = 0``: the batch's own)."""
  return tuple(m._replace(batch_mean=(1 - weight) * m.batch_mean + weight * hm,
                          batch_var=(1 - weight) * m.batch_var + weight * hv)
               for m, hm, hv in zip(moments, history_mean, history_var))


class StepOutput(NamedTuple):
  """What one inner step keeps: its un-augmented images, its loss terms and the
  teacher's batch moments (mean, variance per BatchNorm layer) on its augmented images."""

  x: Array
  terms: dict[str, Array]
  bn_mean: tuple[Array, ...]
  bn_var: tuple[Array, ...]


def synthesis_loss(params, z: Array, batch_stats, key: Array, *,
                   nets: SynthesisNetworks, targets: Array,
                   weights: generator_objectives.GeneratorLossWeights,
                   adversarial_on: Array, history: tuple[Any, Any],
                   history_weight: Array, axis_name: str | None = None):
  """One inner step's loss, a :data:`dfkd_jax.math.meta_init.StepLoss`.

  Args:
    params, z: the generator copy's parameters and the latent codes (differentiated).
    batch_stats: the copy's BatchNorm statistics (carried, not differentiated).
    key: this step's augmentation key.
    nets: the round's networks.
    targets: ``[n]`` the round's target classes (this device's rows).
    weights: the loss weights.
    adversarial_on: 1.0 once the adversarial term is on, else 0.0.
    history: the bank's running BatchNorm moments ``(means, variances)``.
    history_weight: ``r`` once the bank has a history, else 0.

  Returns:
    ``(loss, (new_batch_stats, StepOutput))``.
  """
  x, new_stats = nets.generate(params, batch_stats, z)
  x_aug = nets.augment(key, x)
  t_logits, t_feats = nets.teacher(x_aug)
  s_logits = nets.student(x_aug)
  moments = t_feats.bn_moments
  feats = t_feats._replace(bn_moments=blend_moments(moments, *history, history_weight))
  batch = generator_objectives.GeneratorBatch(t_logits, s_logits, feats, labels=targets)
  w = weights._replace(adversarial=weights.adversarial * adversarial_on)
  loss, terms = generator_objectives.fast(batch, w, axis_name)
  out = StepOutput(jax.lax.stop_gradient(x), jax.lax.stop_gradient(terms),
                   tuple(jax.lax.stop_gradient(m.batch_mean) for m in moments),
                   tuple(jax.lax.stop_gradient(m.batch_var) for m in moments))
  return loss, (new_stats, out)


class RoundResult(NamedTuple):
  """What a synthesis round returns.

  Attributes:
    grads: the meta-gradient of ``theta_0``.
    adapted: ``theta_g``, the copy after the inner steps.
    batch_stats: the copy's BatchNorm (and spectral-norm) statistics after the round.
    best_x: this device's rows of the round's best batch (un-augmented).
    bn_mean, bn_var: the teacher's BatchNorm moments at the last inner step.
    metrics: the round's scalars.
  """

  grads: Any
  adapted: Any
  batch_stats: Any
  best_x: Array
  bn_mean: tuple[Array, ...]
  bn_var: tuple[Array, ...]
  metrics: dict[str, Array]


def synthesis_round(params0, batch_stats, z: Array, targets: Array, keys: Array,
                    final_key: Array, *, nets: SynthesisNetworks, options: FastOptions,
                    adversarial_on: Array, history: tuple[Any, Any],
                    history_weight: Array, axis_name: str | None = None,
                    unroll: bool = False) -> RoundResult:
  """Steps 2-5 of a round (module docstring) from ``theta_0 = params0``.

  Args:
    params0: the meta-learned initialisation.
    batch_stats: the generator's statistics the copy starts from.
    z: this device's rows of the round's latent codes.
    targets: this device's rows of the round's target classes.
    keys: ``[g]`` augmentation keys of the inner steps.
    final_key: the augmentation key of the exact ``"final"`` objective's evaluation.
    nets, options: the networks and the method's options.
    adversarial_on, history, history_weight: as in :func:`synthesis_loss`.
    axis_name: the mesh axis of the batch.
    unroll: trace the inner steps out instead of ``lax.scan``.
  """
  step_loss = lambda p, zz, s, k: synthesis_loss(  # pylint: disable=unnecessary-lambda-assignment
      p, zz, s, k, nets=nets, targets=targets, weights=options.weights,
      adversarial_on=adversarial_on, history=history, history_weight=history_weight,
      axis_name=axis_name)
  grads, result, final = meta_init.meta_gradient(
      options.meta_gradient, step_loss, params0, z, batch_stats, keys, final_key,
      options.inner, objective=options.objective, unroll=unroll)
  outputs: StepOutput = result.outputs
  best = jnp.argmin(result.losses)  # The first of equal losses, as the official `>`.
  best_x = jnp.take(outputs.x, best, axis=0)
  metrics = {"generator_loss": jnp.mean(result.losses),
             "generator_loss_first": result.losses[0],
             "generator_loss_last": result.losses[-1],
             "generator_loss_best": result.losses[best],
             "best_step": best.astype(jnp.float32),
             "meta_loss": final,
             "disagreement": jnp.mean(outputs.terms["disagreement"]),
             **{f"generator_{k}": jnp.mean(v) for k, v in outputs.terms.items()
                if k != "disagreement"}}
  return RoundResult(grads, result.params, result.state, best_x,
                     tuple(m[-1] for m in outputs.bn_mean),
                     tuple(v[-1] for v in outputs.bn_var), metrics)


def reset_stem(params, key: Array):
  """The official ``reset_l0`` (L30-34): the linear stem's weights and the following
  BatchNorm's scale drawn from ``N(0, 0.02^2)``, their biases zero."""
  params = dict(params)
  keys = iter(jax.random.split(key, len(RESET_LAYERS)))
  for layer, (weight, bias) in RESET_LAYERS:
    leaves = dict(params[layer])
    leaves[weight] = 0.02 * jax.random.normal(next(keys), leaves[weight].shape,
                                              leaves[weight].dtype)
    leaves[bias] = jnp.zeros_like(leaves[bias])
    params[layer] = leaves
  return params


def check_resettable(params) -> None:
  """Raises ``ValueError`` when ``params`` lack the layers :func:`reset_stem` resets."""
  for layer, names in RESET_LAYERS:
    if layer not in params or any(n not in params[layer] for n in names):
      raise ValueError(
          f"config.fast.reset_epoch re-initialises the generator's {RESET_LAYERS[0][0]!r}"
          f" and {RESET_LAYERS[1][0]!r} layers ({', '.join(names)}), which this "
          "generator does not have; set config.fast.reset_epoch=0")


# ---------------------------------------------------------------------------
# NAYER: class codes through a noisy layer.
# ---------------------------------------------------------------------------

#: The class codes a noisy-layer generator can take (``config.fast.class_codes``): NAYER
#: embeds each class name with CLIP's text encoder (512 numbers); no text encoder runs
#: offline here, so the default is the one-hot code, and ``npy:FILE`` takes any
#: ``[classes, d]`` table computed elsewhere (e.g. CLIP on the class names).
CLASS_CODES = ("one_hot", "npy:FILE")


def class_codes(spec: str, num_classes: int) -> np.ndarray:
  """The ``[num_classes, d]`` float32 class codes named by ``spec`` (:data:`CLASS_CODES`).

  Raises:
    ValueError: an unknown spec, an unreadable file or a table of the wrong shape.
  """
  if spec == "one_hot":
    return np.eye(num_classes, dtype=np.float32)
  if spec.startswith("npy:"):
    path = spec[len("npy:"):]
    try:
      table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"config.fast.class_codes={spec!r}: cannot read {path!r} as a .npy "
                       f"array ({e}); give a [classes, d] table saved with numpy.save")
    if table.ndim != 2 or table.shape[0] != num_classes or not table.shape[1]:
      raise ValueError(f"config.fast.class_codes={spec!r}: the table has shape "
                       f"{table.shape}, expected [{num_classes}, d] (one row per class)")
    if not np.all(np.isfinite(table)):
      raise ValueError(f"config.fast.class_codes={spec!r}: the table has non-finite values")
    return table.astype(np.float32)
  raise ValueError(f"config.fast.class_codes={spec!r}; valid: {', '.join(CLASS_CODES)}")


def num_noisy_layers(batch_size: int, num_classes: int) -> int:
  """NAYER's ``nle = ceil(batch / classes)``: one noisy layer per chunk of rows."""
  return -(-batch_size // num_classes)


def balanced_targets(key: Array, n: int, num_classes: int) -> Array:
  """``[n]`` targets as NAYER's ``generate_ys``: chunk ``j`` (rows ``j C .. j C + C -
  1``) holds every class once, in order; the rows past the last whole chunk draw
  theirs uniformly."""
  rows = jnp.arange(n)
  whole = (n // num_classes) * num_classes
  return jnp.where(rows < whole, rows % num_classes,
                   jax.random.randint(key, (n,), 0, num_classes))


def noisy_inputs(codes: np.ndarray, targets: Array, num_classes: int) -> Array:
  """The input of :class:`~dfkd_jax.models.generators.NoisyLayerGenerator` for a
  global batch: ``[codes[targets], one_hot(row // classes)]``."""
  n = targets.shape[0]
  which = jax.nn.one_hot(jnp.arange(n) // num_classes, num_noisy_layers(n, num_classes),
                         dtype=jnp.float32)
  return jnp.concatenate([jnp.asarray(codes)[targets], which], axis=-1)


def redraw_noisy_layers(params, key: Array):
  """NAYER's ``re_init_le``: the noisy layers' weights drawn from ``N(0, 1)``, their
  biases zero."""
  noisy = params["noisy"]
  return {**params, "noisy": {
      "kernel": jax.random.normal(key, noisy["kernel"].shape, noisy["kernel"].dtype),
      "bias": jnp.zeros_like(noisy["bias"])}}

"""The resolved values of a run: :class:`Setup`, the one thing below the config.

:func:`dfkd_jax.run.experiment.build` makes it from a validated config; the training
iteration (:mod:`dfkd_jax.run.iteration`) and the host loop (:mod:`dfkd_jax.run.trainer`) read
only it. This module imports nothing of the package at run time (the annotations name
the types), so both import it without importing the assembler.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TYPE_CHECKING

if TYPE_CHECKING:
  import jax
  import optax
  from dfkd_jax.math import objectives
  from dfkd_jax.methods import fast as fast_lib
  from dfkd_jax.methods import generator_objectives
  from dfkd_jax.methods import presets as methods
  from dfkd_jax.models import teacher as teacher_lib
  from dfkd_jax.replay import sources as replay_sources


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything fixed for a run, resolved from the config before any compilation.

  The training iteration (:mod:`dfkd_jax.run.iteration`) and the host loop
  (:mod:`dfkd_jax.run.trainer`) read only these values; ``record`` is the config as a plain
  dict, kept for the run's records (``summary.json``, the workdir's record).
  """

  record: dict[str, Any]               # config.to_dict(), as recorded.
  method: methods.Method
  mesh: Any
  # The frozen teacher and the two trained networks (flax modules).
  teacher: Any
  teacher_variables: Any
  teacher_meta: teacher_lib.TeacherMeta
  student: Any
  generator: Any
  input_shape: tuple[int, int, int]
  num_classes: int
  # Traits of the generator (the model registry's).
  generator_output_range: str          # "normalized" | "unit" (sigmoid image).
  conditional_generator: bool          # G(z + e_y), MAD Sec. 3.2.
  generator_output_logits: bool        # Also return the pre-sigmoid output (MAD nu).
  # Sizes of one iteration.
  batch_size: int                      # Global batch of every step.
  latent_dim: int                      # Width of the generator's input (z; NAYER: codes + one-hots).
  generator_steps: int
  student_steps: int
  iterations_per_epoch: int
  seed: int                            # The first replica's seed.
  # Replicas (config.num_seeds): their seeds; more than one = a leading replica axis on
  # every part of the state, the iteration vmapped over it (dfkd_jax.run.iteration).
  seeds: tuple[int, ...]
  # The updates.
  student_optimizer: optax.GradientTransformation
  generator_optimizer: optax.GradientTransformation
  generator_loss_weights: generator_objectives.GeneratorLossWeights
  student_update: objectives.StudentUpdate
  # The meta step's factor on meta.alpha as a function of the iteration index (traced);
  # None = 1 (meta.alpha_schedule="constant", and every rule that is not a meta rule).
  alpha_scale: Callable[[jax.Array], jax.Array] | None
  needs_retention: bool                # The update rule takes a retention batch.
  kd_loss: objectives.KDLoss           # Per-example student loss (+ MAD's logit bound).
  retention_weight: float
  meta_alignment: bool                 # Log cos(grad L_acq, grad L_ret) (meta updates).
  replay: replay_sources.Replay
  compute_dtype: Any                   # jnp dtype of activations.
  unroll: bool                         # Unrolled steps or lax.scan.
  map_replicas: bool                   # Replicas one after another (lax.map), or vmap.
  # The host loop (dfkd_jax.run.trainer).
  num_epochs: int
  eval_batch_size: int                 # Global batch of the test-set evaluation.
  # The test set the student is evaluated on: the teacher's recorded dataset id (its
  # variant, e.g. ``mnist:pad``, decides the preprocessing), or config.dataset itself
  # for a folder:/npz: dataset (dfkd_jax.data.datasets.evaluation_dataset).
  evaluation_dataset: str
  image_size: int                      # folder:/npz: images resized to SxS; 0 = native.
  data_dir: str | None                 # TFDS data dir; None = TFDS's default.
  checkpoints_to_keep: int
  tensorboard: bool                    # TensorBoard event files per iteration.
  progress_seconds: float              # Progress line at most this often; 0 = off.
  # Data-free model selection (dfkd_jax.metrics.selection, dfkd_jax.run.probe): the criterion that
  # chooses the kept epoch, the probe set (0 = none) in probe_epochs slots, and the
  # consecutive chance-level epochs that mark a run collapsed (0 = never).
  criterion: str = "last"
  probe_size: int = 0
  probe_epochs: int = 1
  collapse_epochs: int = 0
  # A Fast DFKD method (methods.Method.synthesis_rounds): its resolved options, and the
  # first epochs whose student never trained (its warm-up; not counted as collapsed).
  fast: fast_lib.FastOptions | None = None
  untrained_epochs: int = 0

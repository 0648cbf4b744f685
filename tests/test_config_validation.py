"""Every numeric and boolean field of a distillation config is checked (one table)."""

import math
import types

import numpy as np
import pytest

from dfkd_jax.run import experiment

FOUR_DEVICES = types.SimpleNamespace(devices=np.empty(4))

# (method, field, bad value, words of the error): each row fails validate() with a
# message naming the field and the value.
BAD = [
    ("lra_mb", "checkpoints_to_keep", 0, "an integer > 0"),
    ("lra_mb", "checkpoints_to_keep", -1, "an integer > 0"),
    ("lra_mb", "student_optimizer.learning_rate", math.inf, "a finite number > 0"),
    ("lra_mb", "student_optimizer.learning_rate", math.nan, "a finite number > 0"),
    ("lra_mb", "generator_optimizer.learning_rate", math.inf, "a finite number > 0"),
    ("lra_mb", "meta.alpha", math.inf, "a finite number > 0"),
    ("lra_mb", "meta.alpha", math.nan, "a finite number > 0"),
    ("lra_mb", "generator_loss.js_temperature", math.inf, "a finite number > 0"),
    ("lra_mb", "student_optimizer.momentum", -0.1, r"a number in \[0, 1\)"),
    ("lra_mb", "student_optimizer.momentum", 1.0, r"a number in \[0, 1\)"),
    ("lra_mb", "student_optimizer.weight_decay", -1e-4, "a finite number >= 0"),
    ("lra_mb", "meta.weight_decay", -1e-4, "a finite number >= 0"),
    ("lra_mb", "retention_weight", -1.0, "a finite number >= 0"),
    ("lra_mb", "retention_weight", math.inf, "a finite number >= 0"),
    ("lra_mb", "generator_optimizer.b1", 1.0, r"a number in \[0, 1\)"),
    ("lra_mb", "generator_optimizer.b2", -0.5, r"a number in \[0, 1\)"),
    ("lra_mb", "memory.dtype", "int8", "one of: float32, bfloat16, float16"),
    ("lra_mb", "num_epochs", 0, "an integer > 0"),
    ("lra_mb", "seed", -1, "an integer >= 0"),
    ("lra_mb", "student_logit_bound", -1.0, "a finite number >= 0"),
    ("lra_mb", "step_loop", "while", "one of: auto, scan, unroll"),
    ("lra_mb", "student_optimizer.schedule", "step", "one of: cosine, constant"),
    ("lra_pre", "vae.learning_rate", math.nan, "a finite number > 0"),
    ("lra_pre", "vae.kl_weight", -1.0, "a finite number >= 0"),
    ("mad", "ema.decay", math.nan, r"a number in \[0, 1\]"),
    # Sections the method does not use: still no NaN/Inf (it would reach the records).
    ("dfkd", "meta.alpha", math.nan, "a finite number;"),
    ("dfkd", "vae.learning_rate", math.inf, "a finite number;"),
    ("mb_dfkd", "ema.decay", math.nan, "a finite number;"),
]


def _config(method, field, value):
  config = experiment.load_config_file(f"configs/digits.py:{method}")
  config.batch_size = 32
  config.memory.samples_per_slot = 8
  *parents, leaf = field.split(".")
  target = config
  for p in parents:
    target = target[p]
  target[leaf] = value
  return config


@pytest.mark.parametrize("method, field, value, wants", BAD)
def test_bad_value_is_a_one_line_error_naming_the_field(method, field, value, wants):
  config = _config(method, field, value)
  with pytest.raises(ValueError, match=rf"config\.{field}=.* must be {wants}") as e:
    experiment.validate(config, FOUR_DEVICES)
  assert "\n" not in str(e.value) and f"--config.{field}" in str(e.value)


@pytest.mark.parametrize("method", ["lra_mb", "lra_pre", "mad", "dfkd"])
def test_the_shipped_values_pass(method):
  experiment.validate(_config(method, "seed", 0), FOUR_DEVICES)

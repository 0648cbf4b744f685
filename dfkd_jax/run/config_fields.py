r"""Every field of a distillation config, its default and its meaning, as Markdown.

The meanings are the comments written beside (or on the lines just above) each field in
the source of :func:`dfkd_jax.run.run_config.default_config`, read with :mod:`ast` and
:mod:`tokenize`, and the defaults are the values ``default_config()`` returns, so the
list cannot drift from the code. A field that has no comment there takes its meaning
from :data:`UNCOMMENTED` below; a test fails when a field has neither, or when a comment
appears for a field that :data:`UNCOMMENTED` still describes (delete it there then).

  python -m dfkd_jax.run.config_fields --out=docs/config_fields.md   # regenerate
  python -m dfkd_jax.run.config_fields --check=docs/config_fields.md # exit 1 if stale

``tests/test_config_fields.py`` checks that the committed ``docs/config_fields.md`` is
what this module produces now.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import pathlib
import sys
import textwrap
import tokenize
from typing import Any, Callable

import ml_collections

#: Meanings of the fields that ``default_config`` has no comment for (see the module
#: docstring). Values may be callables, evaluated when the list is written.
UNCOMMENTED: dict[str, Any] = {
    "method": lambda: ("The DFKD method, a preset of `dfkd_jax/methods/presets.py`: "
                       + ", ".join(_methods().METHODS)
                       + ". `--config=configs/NAME.py:METHOD` sets it."),
    "student": lambda: ("Student architecture, a classifier of `dfkd_jax.models`: "
                        + ", ".join(_classifiers()) + "; or your own Flax Linen "
                        "classifier as `package.module:Name` (a class or factory taking "
                        "`num_classes`, called as `model(x, train=..., features=...)`; "
                        "the contract, checked before anything compiles: "
                        "docs/contracts.md, \"Your models\")."),
    "generator": ("Generator architecture: `dafl_generator` (LRA/DAFL), `dfad_generator` "
                  "(DFAD's GeneratorA) or `mad_generator` (MAD); or your own Flax Linen "
                  "generator as `package.module:Name` (a class or factory taking "
                  "`latent_dim` and `image_shape`, called as `model(z, train=...)` "
                  "-> `[N, H, W, C]` normalised images; docs/contracts.md, \"Your "
                  "models\")."),
    "generator_options": ("Keyword options of the generator (`models.options(NAME)`); "
                          "those the chosen generator does not take are ignored, with a "
                          "note in the log."),
    "generator_options.spectral_norm": ("`dafl_generator`: spectral normalisation of "
                                        "its convolutions (LRA)."),
    "latent_dim": "Size of the generator's input z.",
    "num_epochs": ("Epochs of the run; one epoch = `iterations_per_epoch` iterations, "
                   "then an evaluation on the test set and a checkpoint."),
    "seed": "Seed of the run's random keys (initialisation and every z).",
    "student_optimizer": ("The student's SGD (PyTorch's: weight decay added to the "
                          "gradient)."),
    "student_optimizer.learning_rate": "Initial learning rate.",
    "student_optimizer.momentum": "SGD momentum (0 = none).",
    "student_optimizer.weight_decay": "Weight decay added to the gradient.",
    "student_optimizer.schedule": ('"cosine" (PyTorch\'s CosineAnnealingLR over '
                                   '`num_epochs`, stepped per epoch) | "constant".'),
    "generator_optimizer": "The generator's Adam.",
    "generator_optimizer.learning_rate": "Learning rate (constant).",
    "generator_optimizer.b1": "Adam beta1.",
    "generator_optimizer.b2": "Adam beta2.",
    "generator_loss": ("Weights and options of the generator's loss terms; which apply "
                       "depends on the method's kind (`dfkd_jax/methods/generator_objectives.py`)."),
    "generator_loss.js_temperature": "Softmax temperature of the JS divergence (`lra`).",
    "generator_loss.activation": ("eq. 11 weight of the activation prior (eq. 13; official "
                                  "code a = 0.1)."),
    "generator_loss.entropy": ("eq. 11 weight of the class-balance entropy prior (eq. 14; "
                               "official code ie = 5)."),
    "meta": "The meta update of `lra_mb`, `lra_pre`, `lra_ema` (LRA eq. 6).",
    "meta.weight_decay": ('Weight decay of the inner step when `inner_step` is '
                          '"sgd_weight_decay".'),
    "memory": "The memory buffer of `mb_dfkd` and `lra_mb`.",
    "memory.dtype": "dtype the buffer stores its samples in.",
    "vae.kl_weight": "Weight of the VAE's KL term (PRE-DFKD: 1e-5).",
    "eval_batch_size": ("Test images per evaluation step (a multiple of the device "
                        "count)."),
    "checkpoints_to_keep": "Orbax checkpoints kept in `WORKDIR/checkpoints` (the latest N).",
}

HEADER = """\
# Config fields

Every field of a distillation config (`python -m dfkd_jax.train --config=...`), its
default in `dfkd_jax.run.run_config.default_config()` and its meaning. Set any of them on the
command line with `--config.FIELD=VALUE`, e.g. `--config.num_epochs=3
--config.meta.alpha=0.1`. The files in `configs/` start from these defaults and change
some (their docstrings say which and why); `configs/recipes/` holds the peers' published
settings.

Generated by `python -m dfkd_jax.run.config_fields --out=docs/config_fields.md` from the
source of `default_config` (its comments are the meanings); do not edit by hand.
`tests/test_config_fields.py` fails when this file is stale.

Teacher configs (`python -m dfkd_jax.train_teacher`) have their own fields:
`dfkd_jax.run.train_teacher.default_config()`.

| field | default | meaning |
|---|---|---|
"""


def _methods():
  from dfkd_jax.methods import presets as methods  # pylint: disable=g-import-not-at-top
  return methods


def _classifiers() -> list[str]:
  from dfkd_jax import models  # pylint: disable=g-import-not-at-top
  return list(models.names("classifier"))


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
  """Trailing comments (code before them on the line) and whole-line comments, by line."""
  trailing, whole = {}, {}
  code_lines = set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      text = tok.string.lstrip("#").strip()
      line = tok.start[0]
      (trailing if line in code_lines else whole)[line] = text
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER):
      code_lines.update(range(tok.start[0], tok.end[0] + 1))
  return trailing, whole


def _block_above(line: int, whole: dict[int, str]) -> list[str]:
  """The whole-line comments directly above ``line`` (no blank line between)."""
  block = []
  while line - 1 in whole:
    line -= 1
    block.insert(0, whole[line])
  return block


def _attribute_path(node: ast.expr) -> list[str] | None:
  """``c.meta.alpha`` -> ``["meta", "alpha"]`` (the root variable dropped)."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.insert(0, node.attr)
    node = node.value
  return parts if isinstance(node, ast.Name) and parts else None


def _group_items(value: ast.expr) -> list[tuple[str, ast.expr]] | None:
  """The ``(key, value)`` nodes of ``ConfigDict(dict(k=v))``, ``ConfigDict({"k": v})``."""
  if isinstance(value, ast.Call) and value.args and not value.keywords:
    inner = value.args[0]
    if isinstance(inner, ast.Call) and getattr(inner.func, "id", "") == "dict":
      return [(k.arg, k.value) for k in inner.keywords if k.arg]
    if isinstance(inner, ast.Dict):
      return [(k.value, v) for k, v in zip(inner.keys, inner.values)
              if isinstance(k, ast.Constant) and isinstance(k.value, str)]
  return None


def field_comments(source: str) -> dict[str, str]:
  """Comments of each field a config-building function's ``source`` assigns.

  A field's comment is the whole-line comment block directly above its assignment (or
  above its key inside ``ConfigDict(dict(...))``) followed by the trailing comments on
  its lines; a group's own comment is the one on its ``ConfigDict(...`` line.

  Args:
    source: the source of a function such as ``default_config``.

  Returns:
    ``{"field": "comment", "group.field": "comment", ...}`` for fields with a comment.
  """
  source = textwrap.dedent(source)
  trailing, whole = _comments(source)
  found: dict[str, str] = {}

  def add(name, first_line, last_line, block_line=None):
    parts = _block_above(block_line or first_line, whole)
    parts += [trailing[i] for i in range(first_line, last_line + 1) if i in trailing]
    if parts:
      found[name] = " ".join(parts)

  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    path = _attribute_path(node.targets[0])
    if path is None:
      continue
    name = ".".join(path)
    items = _group_items(node.value)
    if items is None:
      add(name, node.lineno, node.end_lineno)
      continue
    add(name, node.lineno, node.lineno)  # The group's own (header-line) comment.
    for key, value in items:
      last = value.end_lineno
      # A trailing comment after the closing brackets belongs to the last key.
      if (key, value) == items[-1]:
        last = node.end_lineno
      add(f"{name}.{key}", value.lineno, last)
  return found


def _flatten(config: ml_collections.ConfigDict, prefix: str = ""):
  """``(name, value, is_group)`` for every field, groups before their fields."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield name, None, True
      yield from _flatten(value, f"{name}.")
    else:
      yield name, value, False


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
  return f"`{value!r}`"


def rows(default_config: Callable[[], ml_collections.ConfigDict]) -> list[
    tuple[str, str, str]]:
  """``(field, default, meaning)`` for every field of ``default_config()``.

  Raises:
    ValueError: a field has no comment in the source and no :data:`UNCOMMENTED` entry.
  """
  comments = field_comments(inspect.getsource(default_config))
  result, missing = [], []
  for name, value, is_group in _flatten(default_config()):
    meaning = comments.get(name) or UNCOMMENTED.get(name)
    if callable(meaning):
      meaning = meaning()
    if not meaning:
      missing.append(name)
      continue
    result.append((name, "" if is_group else _default(value), meaning))
  if missing:
    raise ValueError(f"config fields without a meaning: {', '.join(missing)}; write a "
                     "comment beside each in run_config.default_config")
  return result


def markdown() -> str:
  """``docs/config_fields.md``: the table of every distillation config field."""
  from dfkd_jax.run import run_config  # pylint: disable=g-import-not-at-top
  lines = [f"| `{name}` | {default} | {_cell(meaning)} |"
           for name, default, meaning in rows(run_config.default_config)]
  return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--out", help="write the Markdown here (default: print it)")
  group.add_argument("--check", help="exit 1 if this file differs from the output")
  args = parser.parse_args(argv)
  text = markdown()
  if args.check:
    if pathlib.Path(args.check).read_text() != text:
      print(f"{args.check} is stale; regenerate it with `python -m "
            f"dfkd_jax.run.config_fields --out={args.check}`", file=sys.stderr)
      return 1
    return 0
  if args.out:
    pathlib.Path(args.out).write_text(text)
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())

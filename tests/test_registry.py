"""The one registry style (dfkd_jax.core.registry) and the seams it closes.

Every kind a config names is a Registry whose lookup error lists that kind's names
only, whose entries carry their traits, and which refuses to replace an entry; below
the assembler, nothing reads the config and the iteration does not import it.
"""

import ast
import pathlib

import pytest

from dfkd_jax import models
from dfkd_jax.core import registry
from dfkd_jax.math import losses
from dfkd_jax.math import objectives
from dfkd_jax.methods import generator_objectives
from dfkd_jax.methods import presets as methods
from dfkd_jax.metrics import selection
from dfkd_jax.replay import sources

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dfkd_jax"
REGISTRIES = {
    "model": models.MODELS,
    "method": methods.METHODS,
    "student update": objectives.UPDATE_RULES,
    "student loss": losses.STUDENT_LOSSES,
    "generator loss": generator_objectives.GENERATOR_LOSSES,
    "replay": sources.REPLAYS,
    "selection criterion": selection.CRITERIA,
}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_an_unknown_name_lists_the_names_of_its_kind_only(kind):
  reg = REGISTRIES[kind]
  with pytest.raises(ValueError, match=r"(?i)unknown") as e:
    reg.get("no_such_entry")
  message = str(e.value)
  assert "\n" not in message and "'no_such_entry'" in message
  listed = message.split(": ", 1)[1].split(", ")
  assert listed == list(reg.names())


def test_a_taken_name_is_refused_and_a_new_entry_is_found():
  reg = registry.Registry("widget")
  reg.register("a", 1)
  with pytest.raises(ValueError, match="widget 'a' is already registered"):
    reg.register("a", 2)
  reg.register("b", 3)
  assert reg.get("a") == 1 and reg.get("b") == 3 and list(reg) == ["a", "b"]
  assert "b" in reg and "c" not in reg and len(reg) == 2


@pytest.mark.parametrize("name, needs_retention, is_meta", [
    ("acquire", False, False), ("joint", True, False), ("meta", True, True),
    ("meta_first_order", True, True)])
def test_update_rules_carry_their_traits(name, needs_retention, is_meta):
  rule = objectives.UPDATE_RULES.get(name)
  assert (rule.needs_retention, rule.is_meta) == (needs_retention, is_meta)


def test_generator_losses_say_whether_they_need_batchnorm_moments():
  uses = {n for n, e in generator_objectives.GENERATOR_LOSSES.items()
          if e.uses_batchnorm_moments}
  assert uses == {"dfq", "mad", "fast"}


def test_every_method_names_registered_entries_and_no_replay_is_an_object():
  for name, method in methods.METHODS.items():
    objectives.UPDATE_RULES.get(method.student_update)
    losses.STUDENT_LOSSES.get(method.student_loss)
    generator_objectives.GENERATOR_LOSSES.get(method.generator_loss)
    replay = sources.REPLAYS.get(method.replay)
    needs = objectives.UPDATE_RULES.get(method.student_update).needs_retention
    assert not needs or replay.provides_retention, name
  none = sources.REPLAYS.get("none")()
  assert none.init(None, None, (8, 8, 1), 10) is None
  assert none.after_generator(None, "state", None) == "state"
  assert none.after_student_step(None, "state", 0, None, None) == ("state", {})
  assert none.end_of_iteration(None, "state", 0, None) == "state"


def _config_reads(path: pathlib.Path) -> int:
  """Attribute reads on a name ``config`` (``config.x``) in a module."""
  return sum(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
             and n.value.id == "config" for n in ast.walk(ast.parse(path.read_text())))


def _imports(path: pathlib.Path) -> set[str]:
  """The package modules a module imports at run time (not under TYPE_CHECKING)."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      node.body = []
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dfkd_jax"):
      names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
  return names


@pytest.mark.parametrize("module", ["run/trainer.py", "run/run_outputs.py", "run/iteration.py",
                                    "run/train_state.py", "run/fast_rounds.py",
                                    "run/probe.py", "metrics/selection.py", "replay/sources.py",
                                    "replay/memory.py", "replay/generative.py",
                                    "replay/ema.py"])
def test_below_the_assembler_nothing_reads_the_config(module):
  assert _config_reads(PACKAGE / module) == 0


@pytest.mark.parametrize("module", ["run/iteration.py", "run/train_state.py",
                                    "run/fast_rounds.py"])
def test_the_iteration_imports_setup_not_the_assembler(module):
  imported = _imports(PACKAGE / module)
  assert "dfkd_jax.run.run_setup" in imported
  assert not {"dfkd_jax.run.experiment", "dfkd_jax.run.run_config"} & imported
  assert _imports(PACKAGE / "run/run_setup.py") == set()  # A leaf.

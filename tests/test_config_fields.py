"""dfkd_jax.run.config_fields: the field list is read from default_config and is current."""

import inspect
import pathlib

import ml_collections
import pytest

from dfkd_jax.run import config_fields
from dfkd_jax.run import experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "config_fields.md"


def test_committed_docs_config_fields_is_what_the_generator_produces_now():
  assert DOC.read_text() == config_fields.markdown(), (
      "docs/config_fields.md is stale; run `python -m dfkd_jax.run.config_fields "
      "--out=docs/config_fields.md`")


def example_config():
  c = ml_collections.ConfigDict()
  # Two lines of comment
  # above a field.
  c.first = 1
  c.second = "x"  # Beside it.
  c.plain = 0

  c.group = ml_collections.ConfigDict(dict(  # The group.
      a=1,                 # Key a.
      # Above key b.
      b=(1,
         2),               # Beside b's last line.
      c=3))
  c.literal = ml_collections.ConfigDict({"k": True})  # Literal group.
  c.nested = ml_collections.ConfigDict()
  c.nested.leaf = 2.0  # Set by attribute.
  return c


def test_field_comments_reads_comments_beside_and_above_each_field():
  comments = config_fields.field_comments(inspect.getsource(example_config))
  assert comments == {
      "first": "Two lines of comment above a field.",
      "second": "Beside it.",
      "group": "The group.",
      "group.a": "Key a.",
      "group.b": "Above key b. Beside b's last line.",
      "literal": "Literal group.",
      "literal.k": "Literal group.",
      "nested.leaf": "Set by attribute.",
  }


def test_every_field_of_default_config_has_a_row():
  rows = config_fields.rows(experiment.default_config)

  def leaves(config, prefix=""):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}"

  names = {name for name, default, _ in rows if default}
  assert names == set(leaves(experiment.default_config()))
  # The meaning of a commented field is its comment in the source, word for word.
  source = inspect.getsource(experiment.default_config)
  line = next(l for l in source.splitlines() if "c.batch_size =" in l)
  assert dict((n, m) for n, _, m in rows)["batch_size"] == line.split("#", 1)[1].strip()


def test_a_field_without_meaning_is_an_error_naming_it(monkeypatch):
  monkeypatch.delitem(config_fields.UNCOMMENTED, "seed")
  with pytest.raises(ValueError, match=r"without a meaning: seed;"):
    config_fields.rows(experiment.default_config)


def test_uncommented_only_describes_existing_fields_without_a_comment():
  comments = config_fields.field_comments(inspect.getsource(experiment.default_config))
  names = {name for name, _, _ in config_fields.rows(experiment.default_config)}
  shadowed = sorted(set(config_fields.UNCOMMENTED) & set(comments))
  assert not shadowed, (f"default_config now comments {shadowed}: delete them from "
                        "config_fields.UNCOMMENTED")
  assert set(config_fields.UNCOMMENTED) <= names


def test_check_flag_reports_a_stale_file(tmp_path, capsys):
  current = tmp_path / "current.md"
  assert config_fields.main([f"--out={current}"]) == 0
  assert config_fields.main([f"--check={current}"]) == 0
  stale = tmp_path / "stale.md"
  stale.write_text(current.read_text().replace("| `seed` |", "| `sead` |"))
  assert config_fields.main([f"--check={stale}"]) == 1
  assert "stale" in capsys.readouterr().err

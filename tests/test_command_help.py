"""What `python -m dfkd_jax.COMMAND --help` tells a new user (issue 40, item 6.2).

Every command that reads a dataset says that your own data is `folder:PATH` or
`npz:FILE`; `convert`'s `--dataset` flag says it in its own description.
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _help(module: str, cwd: pathlib.Path) -> str:
  out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=cwd,
                       capture_output=True, text=True, timeout=300, check=False,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
  assert "Traceback" not in out.stderr, out.stderr
  return out.stdout


def _flag_description(text: str, flag: str) -> str:
  """The description of ``--flag`` in absl's help, on one line."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(f"  --{flag}:"))
  end = next((i for i in range(start + 1, len(lines))
              if lines[i].startswith("  --") or not lines[i].startswith("    ")),
             len(lines))
  return " ".join(" ".join(lines[start:end]).split())


def test_convert_dataset_flag_lists_the_own_data_forms(tmp_path):
  description = _flag_description(_help("dfkd_jax.convert", tmp_path), "dataset")
  assert "cifar10" in description  # The built-in ids are still listed.
  assert "folder:PATH (ImageFolder layout, PATH/test/<class>/*.png)" in description
  assert "npz:FILE (arrays x_test, y_test)" in description
  assert "pass --mean and --std" in description


@pytest.mark.parametrize("module", ["dfkd_jax.train", "dfkd_jax.train_teacher",
                                    "dfkd_jax.export"])
def test_commands_reading_a_dataset_name_the_own_data_forms(module, tmp_path):
  text = " ".join(_help(module, tmp_path).split())
  assert "folder:PATH" in text and "npz:FILE" in text


@pytest.mark.parametrize("module", ["dfkd_jax.train", "dfkd_jax.train_teacher"])
def test_the_config_flag_says_it_works_from_any_folder(module, tmp_path):
  description = _flag_description(_help(module, tmp_path), "config")
  assert "a configs/ path not in the working directory is the repository's" in description

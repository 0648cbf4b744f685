"""The layers of dfkd_jax (docs/architecture.md): no module imports from a layer above.

Every module of the package belongs to one unit -- a subpackage, or one of the modules
at the top -- and every unit to one layer. A module may import from its own unit and
from units of lower layers, never from a unit of its own layer or above. The imports are
read with :mod:`ast` (all of them: top level, in functions, under ``TYPE_CHECKING``), so
a new module that does not belong to a unit fails here too: place it in ``LAYERS``.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent

# Bottom to top. A unit ending in "." is a subpackage (the package and every module in
# it); any other unit is exactly that module.
LAYERS = (
    ("dfkd_jax.core.",),
    ("dfkd_jax.parallel.", "dfkd_jax.data.", "dfkd_jax.math.", "dfkd_jax.metrics."),
    ("dfkd_jax.models.",),
    ("dfkd_jax.replay.",),
    ("dfkd_jax.methods.",),
    ("dfkd_jax.run.",),
    ("dfkd_jax.interop.", "dfkd_jax.study."),
    ("dfkd_jax", "dfkd_jax.train", "dfkd_jax.train_teacher", "dfkd_jax.convert",
     "dfkd_jax.export", "dfkd_jax.report"),
)


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> tuple[int, str] | None:
  """(layer, unit) of ``module``, or None where no unit holds it."""
  for layer, units in enumerate(LAYERS):
    for unit in units:
      if (unit.endswith(".") and (module + ".").startswith(unit)) or module == unit:
        return layer, unit
  return None


def imported_modules(path: pathlib.Path, root: pathlib.Path) -> set[str]:
  """The package's modules that ``path`` imports (a ``from X import y`` of a submodule
  ``y`` names ``X.y``, of anything else ``X``)."""
  name = module_name(path, root)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      for alias in node.names:
        candidate = f"{base}.{alias.name}"
        as_path = root.joinpath(*candidate.split("."))
        is_module = as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file()
        out.add(candidate if is_module else base)
  return {m for m in out if m == "dfkd_jax" or m.startswith("dfkd_jax.")}


def violations(root: pathlib.Path) -> list[str]:
  """Every import of a module from its own layer or above, and every module no unit
  holds, under ``root/dfkd_jax``."""
  found = []
  for path in sorted((root / "dfkd_jax").rglob("*.py")):
    if "__pycache__" in path.parts:
      continue
    name = module_name(path, root)
    own = unit_of(name)
    if own is None:
      found.append(f"{name}: in no layer (add it to LAYERS and docs/architecture.md)")
      continue
    for target in sorted(imported_modules(path, root)):
      theirs = unit_of(target)
      if theirs is None or theirs[1] == own[1]:
        continue
      if theirs[0] >= own[0]:
        found.append(f"{name} (layer {own[0]}, {own[1]}) imports {target} "
                     f"(layer {theirs[0]}, {theirs[1]})")
  return found


def test_no_module_imports_from_its_layer_or_above():
  assert violations(REPO) == []


def test_every_layer_unit_exists():
  for units in LAYERS:
    for unit in units:
      path = REPO.joinpath(*unit.rstrip(".").split("."))
      assert (path / "__init__.py").is_file() or path.with_suffix(".py").is_file(), unit


# Folders whose __init__.py held code before the layout, where users import it
# (`dfkd_jax.models.register`, `dfkd_jax.replay.MemoryState`): the only fronts allowed.
FRONTS = {"dfkd_jax/__init__.py", "dfkd_jax/models/__init__.py",
          "dfkd_jax/replay/__init__.py"}


def fat_inits(root: pathlib.Path) -> list[str]:
  """The subpackages' __init__.py files that hold more than a docstring."""
  found = []
  for path in sorted((root / "dfkd_jax").rglob("__init__.py")):
    rel = path.relative_to(root).as_posix()
    body = ast.parse(path.read_text(), rel).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
      body = body[1:]
    if body and rel not in FRONTS:
      found.append(f"{rel}: holds code (move it to a module named for what it holds)")
  return found


def test_a_package_init_holds_its_docstring_only():
  assert fat_inits(REPO) == []


def test_code_in_a_new_init_fails(tmp_path):
  root = _package(tmp_path, {"dfkd_jax/__init__.py": "X = 1\n",
                             "dfkd_jax/data/__init__.py": '"""Data."""\n',
                             "dfkd_jax/math/__init__.py": '"""M."""\n\ndef f():\n  pass\n'})
  assert fat_inits(root) == [
      "dfkd_jax/math/__init__.py: holds code (move it to a module named for what it holds)"]


def _package(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root


def test_an_import_from_above_fails(tmp_path):
  root = _package(tmp_path, {
      "dfkd_jax/__init__.py": "",
      "dfkd_jax/core/__init__.py": "",
      "dfkd_jax/core/registry.py": "",
      "dfkd_jax/math/__init__.py": "",
      "dfkd_jax/math/losses.py": "from dfkd_jax.core import registry\n",
      "dfkd_jax/run/__init__.py": "",
      "dfkd_jax/run/trainer.py": "from dfkd_jax.math import losses\n",
  })
  assert violations(root) == []
  (root / "dfkd_jax/core/registry.py").write_text(
      "def f():\n  from dfkd_jax.run import trainer\n")  # Even inside a function.
  (root / "dfkd_jax/math/objectives.py").write_text("from ..run.trainer import run\n")
  (root / "dfkd_jax/data").mkdir()
  (root / "dfkd_jax/data/__init__.py").write_text('"""Data."""\n')
  (root / "dfkd_jax/data/datasets.py").write_text("from dfkd_jax import math\n")
  assert violations(root) == [
      "dfkd_jax.core.registry (layer 0, dfkd_jax.core.) imports dfkd_jax.run.trainer "
      "(layer 5, dfkd_jax.run.)",
      "dfkd_jax.data.datasets (layer 1, dfkd_jax.data.) imports dfkd_jax.math "
      "(layer 1, dfkd_jax.math.)",
      "dfkd_jax.math.objectives (layer 1, dfkd_jax.math.) imports dfkd_jax.run.trainer "
      "(layer 5, dfkd_jax.run.)",
  ]


def test_a_module_in_no_layer_fails(tmp_path):
  root = _package(tmp_path, {"dfkd_jax/__init__.py": "", "dfkd_jax/helpers.py": "",
                             "dfkd_jax/tools/__init__.py": ""})
  assert violations(root) == [
      "dfkd_jax.helpers: in no layer (add it to LAYERS and docs/architecture.md)",
      "dfkd_jax.tools: in no layer (add it to LAYERS and docs/architecture.md)",
  ]

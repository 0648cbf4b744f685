"""Shared pytest configuration.

Tests run on the CPU. Paths to the real datasets in ``../shared/data`` (beside the
repository) are exposed as fixtures that skip cleanly when the data is absent.

One persistent compilation cache serves the whole session, in a temporary folder
removed at its end: the tests' many runs of the same tiny configs compile each program
once (in this process and in the ``python -m dfkd_jax.train`` processes they start,
whose default cache lies under ``$XDG_CACHE_HOME``, set here to that folder). Nothing
is written to the user's own cache. Tests of the cache itself pass their own folder.

Tests marked ``slow`` are left out by default (CI's 40 minutes); ``python -m pytest -m
slow`` runs them (``bash .ci/extra_jobs`` does, by hand).
"""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_CACHE_HOME = tempfile.mkdtemp(prefix="dfkd_jax_test_cache_")
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(_CACHE_HOME, "dfkd_jax", "xla"))


@pytest.fixture(scope="session")
def mnist_archives() -> pathlib.Path:
  """Folder with the four original MNIST IDX archives, or skip."""
  path = SHARED_DATA / "mnist"
  names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
  if not all((path / n).is_file() for n in names):
    pytest.skip(f"real MNIST archives not found under {path}")
  return path

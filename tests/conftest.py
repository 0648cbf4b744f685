"""Shared pytest configuration.

Tests run on the CPU. Paths to the real datasets in ``../shared/data`` (beside the
repository) are exposed as fixtures that skip cleanly when the data is absent.

One persistent compilation cache serves the whole session, in a temporary folder
removed at its end: the tests' many runs of the same tiny configs compile each program
once (in this process and in the ``python -m dfkd_jax.train`` processes they start,
whose default cache lies under ``$XDG_CACHE_HOME``, set here to that folder). Nothing
is written to the user's own cache. Tests of the cache itself pass their own folder.

Two tiers. ``python -m pytest -q`` (the README's test command) runs the fast tier: every
module's contract, in minutes. ``python -m pytest -q -m slow`` runs the second tier, the
tests marked ``slow``: end-to-end runs, real signals and processes, several processes, the
accelerator kit's dry run, the benchmarks' smoke runs, the larger networks of a
parametrized test. CI (``.ci/run``) runs both.
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

# The process that makes the folder owns it: pytest-xdist's workers are started after
# this module ran in the controlling process, inherit the variable and share the folder.
_CACHE_HOME = os.environ.get("DFKD_JAX_TEST_CACHE_HOME")
if not _CACHE_HOME:
  _CACHE_HOME = tempfile.mkdtemp(prefix="dfkd_jax_test_cache_")
  atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)
  os.environ["DFKD_JAX_TEST_CACHE_HOME"] = _CACHE_HOME
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


@pytest.fixture(scope="session")
def cifar10_jpeg_test(tmp_path_factory) -> pathlib.Path:
  """The CIFAR-10 JPEG folder's ``test/`` split unpacked from ``../shared/data``
  (``DIR/test/<class>/*.jpg``), or skip."""
  archive = SHARED_DATA / "cifar10_jpeg" / "cifar10_jpeg.tar.gz"
  if not archive.is_file():
    pytest.skip(f"the CIFAR-10 JPEG archive was not found at {archive}")
  import tarfile  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("cifar10_jpeg")
  with tarfile.open(archive) as tar:
    tar.extractall(root, members=[m for m in tar.getmembers()
                                  if m.name.lstrip("./").startswith("test/")],
                   filter="data")
  return root


"""Shared pytest configuration.

Tests run on the CPU. Paths to the real datasets in ``../shared/data`` (beside the
repository) are exposed as fixtures that skip cleanly when the data is absent.
"""

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_archives() -> pathlib.Path:
  """Folder with the four original MNIST IDX archives, or skip."""
  path = SHARED_DATA / "mnist"
  names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
  if not all((path / n).is_file() for n in names):
    pytest.skip(f"real MNIST archives not found under {path}")
  return path

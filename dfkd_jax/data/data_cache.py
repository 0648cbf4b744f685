"""On-disk cache of decoded dataset splits, so a run does not decode every image again.

Reading a prepared TFDS split decodes one PNG per example (MNIST's 60k training
images: 37-78 s on 2 CPU cores); the cache keeps the decoded arrays, exactly as stored
(uint8 pixels and int32 labels, *before* any preprocessing), in one uncompressed
``.npz`` per split, and a second load reads it in about a second. Preprocessing (scaling, resizing or
padding, augmentation, normalisation) runs after loading, per batch, so every dataset
variant and normalisation shares one cache file and none can be served a stale one.

Where: a TFDS or Tiny-ImageNet split beside its data,
``<data_dir>/dfkd_jax_cache/<source>/<version>/<split>.npz``, or under
``$DFKD_JAX_DATA_CACHE/<data_dir name>-<hash>/`` when that variable names a folder; your
own ``folder:``/``npz:`` data, which has no ``data_dir``, under :func:`files_root`:
``$DFKD_JAX_DATA_CACHE/files/``, or by default the user's cache folder,
``$XDG_CACHE_HOME/dfkd_jax/data/files/`` (``~/.cache/dfkd_jax/data/files/``).
``DFKD_JAX_DATA_CACHE=0`` turns the cache off. A file is used only if the key stored in
it equals the expected one: the cache format version, the source, its TFDS version, the
split and a fingerprint (names, sizes, modification times) of the prepared files, so
re-preparing a dataset or upgrading TFDS invalidates it. Writes go to a temporary file
renamed into place (an interrupted write never leaves a partial cache); an unreadable or
stale file is ignored and rewritten; a cache that cannot be written only warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Iterable, Mapping
import warnings
import zipfile

import numpy as np

ENV = "DFKD_JAX_DATA_CACHE"
FORMAT_VERSION = 1
DIR_NAME = "dfkd_jax_cache"
FILES_DIR = "files"  # Under the root of folder:/npz: datasets (files_root()).
_OFF = ("0", "off", "false", "no")

Arrays = dict[str, np.ndarray]


def cache_root(data_dir: str | os.PathLike) -> pathlib.Path | None:
  """The cache folder for the datasets under ``data_dir``; ``None`` when turned off."""
  setting = os.environ.get(ENV, "").strip()
  if setting.lower() in _OFF:
    return None
  data_dir = pathlib.Path(data_dir).expanduser().absolute()
  if not setting:
    return data_dir / DIR_NAME
  digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:12]
  return pathlib.Path(setting).expanduser() / f"{data_dir.name}-{digest}"


def user_cache_dir() -> pathlib.Path:
  """``$XDG_CACHE_HOME/dfkd_jax``, or ``~/.cache/dfkd_jax`` (the compilation cache's
  parent too)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return pathlib.Path(base).expanduser().absolute() / "dfkd_jax"


def files_root() -> pathlib.Path | None:
  """The cache folder of ``folder:``/``npz:`` datasets: ``$DFKD_JAX_DATA_CACHE/files``,
  or ``<user cache>/data/files`` (:func:`user_cache_dir`); ``None`` when turned off."""
  setting = os.environ.get(ENV, "").strip()
  if setting.lower() in _OFF:
    return None
  root = pathlib.Path(setting).expanduser().absolute() if setting else (
      user_cache_dir() / "data")
  return root / FILES_DIR


def fingerprint(base: pathlib.Path, files: Iterable[pathlib.Path],
                strict: bool = False) -> str:
  """SHA-256 of the names (relative to ``base``), sizes and modification times.

  ``strict`` adds each file's inode and status-change time (``st_ctime``), which no
  tool sets back: a file replaced by one of the same name, size and modification time
  (``cp -p``, ``rsync -t``, unpacking an archive again) changes the fingerprint too.
  """
  digest = hashlib.sha256()
  for path in sorted(files):
    stat = path.stat()
    name = path.relative_to(base).as_posix()
    extra = f"\0{stat.st_ino}\0{stat.st_ctime_ns}" if strict else ""
    digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}{extra}\n".encode())
  return digest.hexdigest()


def cached(path: pathlib.Path | None, key: Mapping[str, Any],
           decode: Callable[[], Arrays],
           on_write: Callable[[pathlib.Path], None] | None = None) -> Arrays:
  """``decode()``'s arrays, read from ``path`` when it holds them for ``key``.

  Args:
    path: the cache file, or ``None`` to always decode.
    key: JSON-serialisable description of what ``decode`` reads; a file stored under
      another key is stale.
    decode: makes the arrays (called on a miss; the result is written to ``path``).
    on_write: called with ``path`` once the arrays are written there (not when the
      write failed: that only warns).

  Returns:
    The arrays, by name.
  """
  if path is None:
    return decode()
  key_json = json.dumps({"format_version": FORMAT_VERSION, **key}, sort_keys=True)
  arrays = _read(path, key_json)
  if arrays is None:
    arrays = decode()
    if _write(path, key_json, arrays) and on_write is not None:
      on_write(path)
  return arrays


def _read(path: pathlib.Path, key_json: str) -> Arrays | None:
  """The arrays stored in ``path`` under ``key_json``; ``None`` if absent or unusable."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      if "key" not in npz.files or str(npz["key"]) != key_json:
        return None
      return {name: npz[name] for name in npz.files if name != "key"}
  except FileNotFoundError:
    return None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return None  # A corrupt or truncated file: decode again and replace it.


def _write(path: pathlib.Path, key_json: str, arrays: Arrays) -> bool:
  """Writes ``arrays`` atomically (temporary file + rename); warns if it cannot.

  Returns:
    Whether the file was written.
  """
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
      np.savez(f, key=np.array(key_json), **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the data it caches is not.
    os.replace(tmp, path)
    return True
  except OSError as e:
    warnings.warn(f"could not cache the decoded split in {path} ({e}); it will be "
                  f"decoded again next time. Set {ENV}=DIR to cache elsewhere or "
                  f"{ENV}=0 to stop trying", stacklevel=3)
    return False
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)

#!/usr/bin/env bash
# Installs the wheelhouse offline, beside the image's packages, never over them:
#
#   bash benchmarks/accelerator/install.sh [TARGET] [WHEELHOUSE]
#
# pip install --no-index --find-links WHEELHOUSE --no-deps --target TARGET (default
# benchmarks/accelerator/pydeps/, ignored by git): nothing is fetched, the image's
# jax/flax are not touched. Then put TARGET on PYTHONPATH after the repository root
# (check.sh does). Without pip, the wheels are unpacked (they are zip archives).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:-$here/pydeps}"
wheelhouse="${2:-$here/wheelhouse}"
py="${PYTHON:-python3}"
if ! ls "$wheelhouse"/*.whl > /dev/null 2>&1; then
  echo "error: no wheels in $wheelhouse; run benchmarks/accelerator/make_wheelhouse.sh where a package registry is reachable and carry the folder" >&2
  exit 1
fi
mkdir -p "$target"
requirements=$(sed -e 's/#.*//' -e 's/ //g' "$here/wheelhouse.txt" | grep -v '^$')
if "$py" -m pip --version > /dev/null 2>&1; then
  # shellcheck disable=SC2086
  "$py" -m pip install --no-index --find-links "$wheelhouse" --no-deps --no-compile \
    --disable-pip-version-check --upgrade --target "$target" $requirements
else
  echo "no pip: unpacking the wheels into $target" >&2
  "$py" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
    "$target" "$wheelhouse"/*.whl
fi
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
  'import ml_collections, tensorflow_datasets, higher; print("wheelhouse installed: ml_collections, tensorflow_datasets, higher import")'

#!/usr/bin/env bash
# Downloads, here (with a package registry), the wheels that the device image lacks:
#
#   bash benchmarks/accelerator/make_wheelhouse.sh [WHEELHOUSE]
#
# into WHEELHOUSE (default benchmarks/accelerator/wheelhouse/, ignored by git): the
# packages of benchmarks/accelerator/wheelhouse.txt, as Python 3.12 wheels for
# manylinux x86-64 or pure Python, whatever this machine's Python is. Packages that
# publish only a source archive (pure Python) are built into a wheel here. Fails if the
# folder would exceed 60 MiB (it travels with the working tree, 64 MiB in all).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/wheelhouse}"
limit_mib=60
mkdir -p "$dest"
requirements="$here/wheelhouse.txt"
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --abi abi3 --abi none --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
python3 -m pip --version > /dev/null
while read -r req; do
  req="${req%%#*}"; req="${req// /}"
  [[ -z "$req" ]] && continue
  if ! python3 -m pip download -q --no-deps "${platform[@]}" -d "$dest" "$req"; then
    # No wheel on the registry (e.g. promise): build the pure-Python source here.
    echo "no wheel for $req: building one from its source archive" >&2
    python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$dest" "$req"
    name="${req%%==*}"
    wheel=$(find "$dest" -iname "${name//-/_}-*.whl" | head -1)
    [[ "$wheel" == *-py3-none-any.whl || "$wheel" == *-py2.py3-none-any.whl ]] || {
      echo "error: $req built $wheel, which is not pure Python; find a manylinux wheel" >&2
      exit 1; }
  fi
done < "$requirements"
size_kib=$(du -sk "$dest" | cut -f1)
echo "wheelhouse: $dest, $(find "$dest" -name "*.whl" | wc -l) wheels, $((size_kib / 1024)) MiB" >&2
if ((size_kib > limit_mib * 1024)); then
  echo "error: the wheelhouse is $((size_kib / 1024)) MiB, over ${limit_mib} MiB" >&2
  exit 1
fi

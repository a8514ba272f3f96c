#!/usr/bin/env bash
# Fetches NIXL's runtime libraries the way a user would: the PyPI wheel (pip download, no GPU
# stack, no install), unpacked into an ignored cache folder. Prints the folder to point
# KVROUTE_NIXL_LIB_DIR at. Usage: scripts/nixl/fetch.sh [nixl-cu12|nixl-cu13] [version]
set -euo pipefail
cd "$(dirname "$0")/../.."
package="${1:-nixl-cu12}"
version="${2:-1.5.1}"
dest=".cache/nixl/${package}-${version}"
if [ -f "$dest/.complete" ]; then
  echo "$PWD/$dest"
  exit 0
fi
wheels=".cache/nixl/wheels"
mkdir -p "$wheels"
# The libraries inside do not depend on the Python version; name one so any host resolves the same file.
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  -d "$wheels" "${package}==${version}" >&2
wheel=$(ls "$wheels"/"${package//-/_}"-"${version}"-*.whl | head -1)
rm -rf "$dest"
mkdir -p "$dest"
# Only the shared libraries (libnixl_capi.so and its plugins, UCX and their dependencies).
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        top = name.split("/", 1)[0]
        if top.endswith(".mesonpy.libs") or top.endswith(".libs"):
            z.extract(name, dest)
PY
touch "$dest/.complete"
echo "$PWD/$dest"

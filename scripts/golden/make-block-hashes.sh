#!/usr/bin/env bash
# Regenerate fixtures/golden/block_hashes.json from vLLM's own hashing code.
#
#   scripts/golden/make-block-hashes.sh            # from the repo root or anywhere
#   VLLM_VERSION=0.33.0 VENV=/tmp/venv-golden scripts/golden/make-block-hashes.sh
#
# Run by hand (needs PyPI); tests never run it, they read the committed JSON. It builds a throwaway
# virtualenv (default: .venv-golden/ at the repo root, git-ignored) with cbor2 and xxhash, downloads
# the pinned vllm wheel WITHOUT its dependencies (no torch/CUDA), unpacks only its .py files and
# dist-info, and runs make_block_hashes.py, which imports just the pure-Python hashing modules.
# Needs python3 >= 3.11 (vLLM's floor; pickle protocol 5). After a version bump: rerun, then
# `cargo test -p kvroute-core --test golden_hashes`, and update docs/hashing.md if anything moved.
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.33.0}"
CBOR2_VERSION="${CBOR2_VERSION:-6.3.0}"
XXHASH_VERSION="${XXHASH_VERSION:-4.1.0}"
PYTHON="${PYTHON:-python3}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/.venv-golden}"
out="${OUT:-$root/fixtures/golden/block_hashes.json}"

if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "cbor2==$CBOR2_VERSION" "xxhash==$XXHASH_VERSION"

# shellcheck source=vllm-wheel.sh
. "$here/vllm-wheel.sh"
src="$(unpack_vllm_py "$venv" "$VLLM_VERSION")"

"$venv/bin/python" "$here/make_block_hashes.py" --vllm-src "$src" --out "$out"
ls -l "$out"

#!/usr/bin/env bash
# Regenerate fixtures/golden/prompt_embeds.json from vLLM's own code and torch.
#
#   scripts/golden/make-prompt-embeds.sh
#   STAGE1=/path/stage1.json scripts/golden/make-prompt-embeds.sh   # stage 1 made elsewhere
#
# Run by hand; tests never run it. Stage 1 (make_prompt_embeds_torch.py) needs torch: any CPU
# build in a throwaway virtualenv, or a machine that has one (the committed fixture's stage 1 ran
# on a GPU host with torch 2.11 and only the .py files of the vllm wheel it reads). Stage 2
# (make_prompt_embeds.py) needs no torch: it reuses make-block-hashes.sh's venv and wheel.
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.33.0}"
PYTHON="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/.venv-golden}"
out="${OUT:-$root/fixtures/golden/prompt_embeds.json}"

if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "cbor2==${CBOR2_VERSION:-6.3.0}" "xxhash==${XXHASH_VERSION:-4.1.0}"
# shellcheck source=vllm-wheel.sh
. "$here/vllm-wheel.sh"
src="$(unpack_vllm_py "$venv" "$VLLM_VERSION")"

stage1="${STAGE1:-}"
if [ -z "$stage1" ]; then
  stage1="$(mktemp)"
  "$venv/bin/pip" install --quiet --index-url https://download.pytorch.org/whl/cpu torch numpy
  "$venv/bin/python" "$here/make_prompt_embeds_torch.py" --vllm-src "$src" --out "$stage1"
fi
"$venv/bin/python" "$here/make_prompt_embeds.py" --vllm-src "$src" --stage1 "$stage1" --out "$out"
ls -l "$out"

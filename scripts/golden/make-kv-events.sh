#!/usr/bin/env bash
# Golden KV-event frames produced by vLLM's own publisher code.
#
# Rerun (from the repo root):
#     bash scripts/golden/make-kv-events.sh                 # every version below
#     bash scripts/golden/make-kv-events.sh 0.9.0 0.33.0    # just these
#
# What it does, for each vLLM release listed:
#   1. `pip download vllm==<v> --no-deps` (the wheel only, into $KVR_GOLDEN_CACHE, default
#      /tmp/kvroute-golden/wheels) and unzips only vllm/distributed/kv_events.py and
#      vllm/v1/core/kv_cache_utils.py (into $KVR_GOLDEN_CACHE/src/<v>/); the wheel is deleted
#      afterwards (they are 0.4-0.6 GB each); already-unpacked versions are reused.
#   2. runs scripts/golden/make_kv_events.py in a throwaway venv ($KVR_GOLDEN_VENV, default
#      .venv-golden/, git-ignored) that has only msgspec installed. That script imports vLLM's
#      kv_events.py with its heavy imports stubbed (zmq is replaced by an in-memory fake that
#      records frames), builds events with vLLM's own structs, publishes them through vLLM's own
#      ZmqEventPublisher (whose thread encodes with msgspec.msgpack.Encoder() and sends
#      [topic, seq, payload]), drives its replay ROUTER handler, and writes
#      fixtures/golden/kv_events/<v>.json.
#
# The version list is one release per wire-format change (see docs/vllm-kv-events.md).
# Needs: python3 with venv, unzip, network access to PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${KVR_GOLDEN_CACHE:-/tmp/kvroute-golden}"
VENV="${KVR_GOLDEN_VENV:-$ROOT/.venv-golden}"
OUT="$ROOT/fixtures/golden/kv_events"
MSGSPEC_VERSION="${KVR_GOLDEN_MSGSPEC:-0.19.0}"

if [ "$#" -gt 0 ]; then
  VERSIONS=("$@")
else
  VERSIONS=(0.9.0 0.9.1 0.10.2 0.14.0 0.17.0 0.20.0 0.22.0 0.24.0 0.26.0 0.29.0 0.30.0 0.33.0)
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import msgspec" 2>/dev/null; then
  "$VENV/bin/pip" install -q "msgspec==$MSGSPEC_VERSION" || "$VENV/bin/pip" install -q msgspec
fi

mkdir -p "$CACHE/wheels" "$CACHE/src" "$OUT"
for v in "${VERSIONS[@]}"; do
  src="$CACHE/src/$v"
  if [ ! -f "$src/vllm/distributed/kv_events.py" ]; then
    dl="$CACHE/wheels/$v"
    mkdir -p "$dl"
    "$VENV/bin/pip" download -q --no-deps "vllm==$v" -d "$dl"
    whl="$(ls "$dl"/vllm-*.whl | head -n1)"
    mkdir -p "$src"
    unzip -q -o "$whl" vllm/distributed/kv_events.py vllm/v1/core/kv_cache_utils.py -d "$src"
    rm -f "$whl"
  fi
  "$VENV/bin/python" "$ROOT/scripts/golden/make_kv_events.py" \
    --version "$v" --src "$src" --out "$OUT/$v.json"
done
du -ch "$OUT"/*.json | tail -n1

# Sourced by the golden scripts: unpack_vllm_py VENV VERSION [WHEEL] unpacks the .py files and
# dist-info of the pinned vllm wheel (downloaded WITHOUT its dependencies unless WHEEL is given)
# into VENV/vllm-VERSION, once, and prints that folder. Nothing of the wheel is installed.
unpack_vllm_py() {
  local venv="$1" version="$2" wheel="${3:-}"
  local wheels="$venv/wheels" src="$venv/vllm-$version"
  if [ ! -d "$src/vllm" ]; then
    mkdir -p "$wheels"
    if [ -z "$wheel" ]; then
      "$venv/bin/pip" download --quiet --no-deps --only-binary=:all: -d "$wheels" "vllm==$version" >&2
      wheel="$(ls "$wheels"/vllm-"$version"-*.whl | head -n 1)"
    fi
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    "$venv/bin/python" - "$wheel" "$src.tmp" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".py") or ".dist-info/" in n]
    z.extractall(dest, members=names)
PY
    mv "$src.tmp" "$src"
  fi
  printf '%s\n' "$src"
}

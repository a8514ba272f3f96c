#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from the Go module proxy into .cache/k8s/bin,
# once: the integration tests of the Kubernetes registry and connector start them on loopback.
#
# `go install k8s.io/kubernetes/cmd/...@vX` is refused because upstream's go.mod replaces every
# staging module (k8s.io/api, apimachinery, client-go, ...) with a local folder. A wrapper module
# requires k8s.io/kubernetes and replaces each of those with its published v0.<minor>.<patch>.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${KVROUTE_K8S_VERSION:-1.34.4}
bin=$PWD/.cache/k8s/bin
build=$PWD/.cache/k8s/build-$version
binaries=(kube-apiserver kube-controller-manager)

missing=()
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v go >/dev/null || { echo "scripts/k8s/build.sh: Go is missing (apt-get install golang-go, or https://go.dev/dl)" >&2; exit 1; }

# Kubernetes 1.34 needs Go >= 1.24. Go >= 1.21 switches to it by itself (GOTOOLCHAIN=auto, from the
# module proxy). An older Go (Debian bookworm's 1.19) downloads that toolchain module itself, as an
# ordinary module, into .cache/k8s/go.
export GOTOOLCHAIN=auto
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ "${go_minor:-0}" -lt 21 ]; then
  toolchain=v0.0.1-go1.24.0.$(go env GOOS)-$(go env GOARCH)
  gobin=$PWD/.cache/k8s/go-$toolchain
  if [ ! -x "$gobin/bin/go" ]; then
    echo "Go $(go env GOVERSION) is too old for Kubernetes $version: fetching golang.org/toolchain@$toolchain" >&2
    dir=$(GOFLAGS=-mod=mod go mod download -json "golang.org/toolchain@$toolchain" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
    rm -rf "$gobin" && cp -r "$dir" "$gobin" && chmod -R u+w "$gobin"
    # Module zips keep no permissions: make the binaries executable again (as cmd/go does).
    chmod +x "$gobin"/bin/* "$gobin"/pkg/tool/*/*
  fi
  export PATH=$gobin/bin:$PATH GOROOT=$gobin
fi

mkdir -p "$bin" "$build"
cd "$build"
upstream_gomod=$(go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
staging=$(sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*#\1#p' "$upstream_gomod")
[ -n "$staging" ] || { echo "scripts/k8s/build.sh: no staging replaces found in $upstream_gomod" >&2; exit 1; }

{
  echo "module kvroute.local/k8s-binaries"
  echo
  echo "go 1.24"
  echo
  echo "require k8s.io/kubernetes v$version"
  echo
  for m in $staging; do echo "replace $m => $m v0.${version#1.}"; done
} >go.mod
# Main packages cannot be imported by code, but a build-tagged file lets `go mod tidy` resolve them.
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for b in "${binaries[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$b\""; done
  echo ")"
} >tools.go
GOFLAGS=-mod=mod go mod tidy

minor=${version#1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for b in "${missing[@]}"; do
  echo "building $b v$version (several minutes on a small machine)..." >&2
  go build -trimpath -ldflags "$ldflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$bin/$b.tmp" "$bin/$b"
done

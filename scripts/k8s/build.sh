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
command -v go >/dev/null || { echo "scripts/k8s/build.sh: Go is missing (https://go.dev/dl)" >&2; exit 1; }

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

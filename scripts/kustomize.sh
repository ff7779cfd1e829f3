#!/usr/bin/env bash
# kustomize (Kubernetes' manifest renderer, what `kubectl apply -k` runs), built once from the Go module proxy into the
# project's cache ($XDG_CACHE_HOME/tfs-bridge, default ~/.cache/tfs-bridge, as scripts/kafka_local.py):
# <cache>/kustomize/<version>/kustomize.
#   scripts/kustomize.sh build deploy/overlays/example   # builds if needed, then renders the manifests
#   scripts/kustomize.sh --path                          # builds if needed, prints its path
# The first build takes about a minute; later calls start it at once.
# KUSTOMIZE_VERSION picks another module version; GO another go command (default: go on PATH, else /usr/local/go/bin/go).
set -euo pipefail

# v5.8.2 (sigs.k8s.io/kustomize/api v0.21.2) is the newest release whose go.mod asks for no newer Go than 1.26;
# v5.8.3 needs Go 1.27.
VERSION=${KUSTOMIZE_VERSION:-v5.8.2}
MODULE=sigs.k8s.io/kustomize/kustomize/v5

cache="${XDG_CACHE_HOME:-$HOME/.cache}/tfs-bridge/kustomize/$VERSION"
kustomize="$cache/kustomize"

if [ ! -x "$kustomize" ]; then
    go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
    if [ ! -x "$go" ] && ! command -v "$go" >/dev/null 2>&1; then
        echo "kustomize: no go command (looked on PATH and at /usr/local/go/bin/go): install Go 1.26+ or set GO" >&2
        exit 1
    fi
    mkdir -p "$cache"
    # Into a temporary GOBIN, then renamed: an interrupted build leaves no half-written kustomize behind.
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log="$cache/build.log"
    echo "kustomize: building $MODULE@$VERSION into $cache (first time only, about a minute)" >&2
    start=$SECONDS
    if ! GOBIN="$tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false" "$go" install "$MODULE@$VERSION" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "kustomize: go install $MODULE@$VERSION failed (log: $log)" >&2
        exit 1
    fi
    mv "$tmp/kustomize" "$kustomize"
    rm -rf "$tmp"
    trap - EXIT
    echo "kustomize: built in $((SECONDS - start)) s" >&2
fi

if [ "${1:-}" = "--path" ]; then
    echo "$kustomize"
else
    exec "$kustomize" "$@"
fi

#!/usr/bin/env bash
# kustomize (Kubernetes' manifest renderer, what `kubectl apply -k` runs), built once from the Go module proxy into the
# project's cache (scripts/go_tool.sh): <cache>/kustomize/<version>/kustomize.
#   scripts/kustomize.sh build deploy/overlays/example   # builds if needed, then renders the manifests
#   scripts/kustomize.sh --path                          # builds if needed, prints its path
# The first build takes about a minute; later calls start it at once.
# KUSTOMIZE_VERSION picks another module version; GO another go command.
set -euo pipefail
source "$(dirname "$0")/go_tool.sh"

# v5.8.2 (sigs.k8s.io/kustomize/api v0.21.2) is the newest release whose go.mod asks for no newer Go than 1.26;
# v5.8.3 needs Go 1.27.
VERSION=${KUSTOMIZE_VERSION:-v5.8.2}
MODULE=sigs.k8s.io/kustomize/kustomize/v5

build_tool() {
    GOBIN="$1" GOFLAGS="${GOFLAGS:-} -buildvcs=false" "$2" install "$MODULE@$VERSION"
}

run_go_tool kustomize "$(tool_cache)/kustomize/$VERSION" "about a minute" "$@"

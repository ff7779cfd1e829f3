#!/usr/bin/env bash
# Prometheus itself, built once from the Go module proxy into the project's cache (scripts/go_tool.sh) at the
# version of scripts/promtool.sh (the prom/prometheus image of docker-compose.yml), for the compose test's stand-in
# image (tests/compose/standins/prometheus/). Without the web UI's assets; scraping, storage and the API are whole.
#   scripts/prometheus.sh --path     # builds if needed (a few minutes, less after promtool), prints its path
set -euo pipefail
source "$(dirname "$0")/go_tool.sh"

VERSION=$(sed -n 's/^VERSION=${PROMTOOL_VERSION:-\(v[^}]*\)}$/\1/p' "$(dirname "$0")/promtool.sh")
MODULE=github.com/prometheus/prometheus/cmd/prometheus

build_tool() {
    # The same flags as promtool's build, so that the two share Go's build cache.
    GOBIN="$1" GOFLAGS="${GOFLAGS:-} -buildvcs=false" "$2" install "$MODULE@$VERSION"
}

run_go_tool prometheus "$(tool_cache)/prometheus/$VERSION" "a few minutes" "$@"

#!/usr/bin/env bash
# promtool (Prometheus's checker), built once from the Go module proxy into the project's cache
# (scripts/go_tool.sh): <cache>/promtool/<version>/promtool.
#   scripts/promtool.sh check config monitoring/prometheus/prometheus.yml   # builds if needed, then runs promtool
#   scripts/promtool.sh --path                                               # builds if needed, prints its path
# The first build takes a few minutes (Prometheus has many dependencies); later calls start it at once.
# PROMTOOL_VERSION picks another module version; GO another go command.
set -euo pipefail
source "$(dirname "$0")/go_tool.sh"

# Prometheus 3.x is the Go module github.com/prometheus/prometheus v0.3MM.P: v0.316.0 is Prometheus v3.16.0, the
# version of the prom/prometheus image in docker-compose.yml (tests/unit/test_monitoring.py checks that they agree).
VERSION=${PROMTOOL_VERSION:-v0.316.0}
MODULE=github.com/prometheus/prometheus/cmd/promtool

build_tool() {
    GOBIN="$1" GOFLAGS="${GOFLAGS:-} -buildvcs=false" "$2" install "$MODULE@$VERSION"
}

run_go_tool promtool "$(tool_cache)/promtool/$VERSION" "takes minutes" "$@"

#!/usr/bin/env bash
# promtool (Prometheus's checker), built once from the Go module proxy into the project's cache
# ($XDG_CACHE_HOME/tfs-bridge, default ~/.cache/tfs-bridge, as scripts/kafka_local.py): <cache>/promtool/<version>/promtool.
#   scripts/promtool.sh check config monitoring/prometheus/prometheus.yml   # builds if needed, then runs promtool
#   scripts/promtool.sh --path                                               # builds if needed, prints its path
# The first build takes a few minutes (Prometheus has many dependencies); later calls start it at once.
# PROMTOOL_VERSION picks another module version; GO another go command (default: go on PATH, else /usr/local/go/bin/go).
set -euo pipefail

# Prometheus 3.x is the Go module github.com/prometheus/prometheus v0.3MM.P: v0.316.0 is Prometheus v3.16.0, the
# version of the prom/prometheus image in docker-compose.yml (tests/unit/test_monitoring.py checks that they agree).
VERSION=${PROMTOOL_VERSION:-v0.316.0}
MODULE=github.com/prometheus/prometheus/cmd/promtool

cache="${XDG_CACHE_HOME:-$HOME/.cache}/tfs-bridge/promtool/$VERSION"
promtool="$cache/promtool"

if [ ! -x "$promtool" ]; then
    go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
    if [ ! -x "$go" ] && ! command -v "$go" >/dev/null 2>&1; then
        echo "promtool: no go command (looked on PATH and at /usr/local/go/bin/go): install Go 1.26+ or set GO" >&2
        exit 1
    fi
    mkdir -p "$cache"
    # Into a temporary GOBIN, then renamed: an interrupted build leaves no half-written promtool behind.
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log="$cache/build.log"
    echo "promtool: building $MODULE@$VERSION into $cache (first time only, takes minutes)" >&2
    start=$SECONDS
    if ! GOBIN="$tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false" "$go" install "$MODULE@$VERSION" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "promtool: go install $MODULE@$VERSION failed (log: $log)" >&2
        exit 1
    fi
    mv "$tmp/promtool" "$promtool"
    rm -rf "$tmp"
    trap - EXIT
    echo "promtool: built in $((SECONDS - start)) s" >&2
fi

if [ "${1:-}" = "--path" ]; then
    echo "$promtool"
else
    exec "$promtool" "$@"
fi

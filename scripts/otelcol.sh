#!/usr/bin/env bash
# otelcol (scripts/otelcol/main.go): a minimal OpenTelemetry Collector, its OTLP receiver and file exporter at one
# pinned collector release (scripts/otelcol/go.mod, go.sum), for the tracing tests (tests/integration/
# test_tracing.py): the bridge's spans sent over OTLP land as JSON lines in a file. Built once with the Go module
# proxy into the project's cache (scripts/go_tool.sh): <cache>/otelcol/<hash of its sources>/otelcol; rebuilt when
# they change.
#   scripts/otelcol.sh --config FILE     # builds if needed, then runs
#   scripts/otelcol.sh --path            # builds if needed, prints its path
# GO picks another go command.
set -euo pipefail
source "$(dirname "$0")/go_tool.sh"

src="$(cd "$(dirname "$0")/otelcol" && pwd)"
hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)

build_tool() {
    # -mod=readonly: go.mod and go.sum pin every module; a build never edits them.
    (cd "$src" && "$2" build -mod=readonly -buildvcs=false -trimpath -o "$1/otelcol" .)
}

run_go_tool otelcol "$(tool_cache)/otelcol/$hash" "a few minutes" "$@"

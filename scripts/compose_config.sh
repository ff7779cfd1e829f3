#!/usr/bin/env bash
# compose-config (scripts/compose_config/main.go): Compose v2's own loader, compose-spec/compose-go/v2, validating
# and resolving a compose file as `docker compose config` does, without a Docker engine. Built once with the
# Go module proxy into the project's cache (scripts/go_tool.sh): <cache>/compose-config/<hash of its sources>/
# compose-config; rebuilt when they change.
#   scripts/compose_config.sh -f docker-compose.yml -q     # builds if needed, then validates
#   scripts/compose_config.sh --path                       # builds if needed, prints its path
# GO picks another go command.
set -euo pipefail
source "$(dirname "$0")/go_tool.sh"

src="$(cd "$(dirname "$0")/compose_config" && pwd)"
hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)

build_tool() {
    # -mod=readonly: go.mod and go.sum pin every module; a build never edits them.
    (cd "$src" && "$2" build -mod=readonly -buildvcs=false -trimpath -o "$1/compose-config" .)
}

run_go_tool compose-config "$(tool_cache)/compose-config/$hash" "about a minute" "$@"

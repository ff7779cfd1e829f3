#!/usr/bin/env bash
# compose-config (scripts/compose_config/main.go): Compose v2's own loader, compose-spec/compose-go/v2, validating
# and resolving a compose file as `docker compose config` does, without a Docker engine. Built once with the
# Go module proxy into the project's cache ($XDG_CACHE_HOME/tfs-bridge, default ~/.cache/tfs-bridge, as
# scripts/kafka_local.py): <cache>/compose-config/<hash of its sources>/compose-config; rebuilt when they change.
#   scripts/compose_config.sh -f docker-compose.yml -q     # builds if needed, then validates
#   scripts/compose_config.sh --path                       # builds if needed, prints its path
# GO picks another go command (default: go on PATH, else /usr/local/go/bin/go).
set -euo pipefail

src="$(cd "$(dirname "$0")/compose_config" && pwd)"
hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tfs-bridge/compose-config/$hash"
tool="$cache/compose-config"

if [ ! -x "$tool" ]; then
    go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
    if [ ! -x "$go" ] && ! command -v "$go" >/dev/null 2>&1; then
        echo "compose-config: no go command (looked on PATH and at /usr/local/go/bin/go): install Go 1.26+ or set GO" >&2
        exit 1
    fi
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log="$cache/build.log"
    echo "compose-config: building $src into $cache (first time only, about a minute)" >&2
    start=$SECONDS
    # -mod=readonly: go.mod and go.sum pin every module; a build never edits them.
    if ! (cd "$src" && "$go" build -mod=readonly -buildvcs=false -trimpath -o "$tmp/compose-config" .) >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "compose-config: go build failed (log: $log)" >&2
        exit 1
    fi
    mv "$tmp/compose-config" "$tool"
    rm -rf "$tmp"
    trap - EXIT
    echo "compose-config: built in $((SECONDS - start)) s" >&2
fi

if [ "${1:-}" = "--path" ]; then
    echo "$tool"
else
    exec "$tool" "$@"
fi

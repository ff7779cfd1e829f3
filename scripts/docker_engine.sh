#!/usr/bin/env bash
# A Docker engine with Compose v2 for the compose test (tests/compose/), set up on this machine if it is missing:
# Debian's docker.io (dockerd, containerd, runc) and mmdebstrap (the stand-in images' root file systems), dockerd
# started as root when it is not running, and Compose v2 built from the Go module proxy
# (scripts/docker_compose/go.mod pins it) into the project's cache (scripts/go_tool.sh).
#   scripts/docker_engine.sh     # prints the DOCKER_CONFIG folder whose cli-plugins/ holds docker-compose
# Run `DOCKER_CONFIG=<that folder> docker compose ...` (or copy the plugin to ~/.docker/cli-plugins/).
set -euo pipefail
source "$(dirname "$0")/go_tool.sh"

if ! command -v dockerd >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "docker-engine: installing docker.io and mmdebstrap from Debian's packages" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get install -y -q --no-install-recommends docker.io mmdebstrap >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null \
             && $sudo apt-get install -y -q --no-install-recommends docker.io mmdebstrap >/dev/null; }
fi

if ! docker info >/dev/null 2>&1; then
    log="$(tool_cache)/dockerd.log"
    mkdir -p "$(dirname "$log")"
    echo "docker-engine: starting dockerd (log: $log)" >&2
    # setsid: the engine outlives this script and the test session that started it, as a system service would.
    setsid dockerd >"$log" 2>&1 < /dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 20 "$log" >&2; echo "docker-engine: dockerd did not start" >&2; exit 1; }
fi

src="$(cd "$(dirname "$0")/docker_compose" && pwd)"
version=$(sed -n 's#^\s*github.com/docker/compose/v5 \(v[^ ]*\).*#\1#p' "$src/go.mod")
build_tool() {
    # -mod=readonly: go.mod and go.sum pin every module. The version is what `docker compose version` reports.
    (cd "$src" && "$2" build -mod=readonly -buildvcs=false -trimpath \
        -ldflags "-X github.com/docker/compose/v5/internal.Version=$version" \
        -o "$1/docker-compose" github.com/docker/compose/v5/cmd)
}
plugin=$(run_go_tool docker-compose "$(tool_cache)/docker-compose/$version" "about two minutes" --path)
config="$(tool_cache)/docker-config"
mkdir -p "$config/cli-plugins"
ln -sf "$plugin" "$config/cli-plugins/docker-compose"
echo "$config"

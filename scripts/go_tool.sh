# Sourced by promtool.sh, kustomize.sh and compose_config.sh: a Go tool built once into the project's cache
# ($XDG_CACHE_HOME/tfs-bridge, default ~/.cache/tfs-bridge, as scripts/kafka_local.py), then run.
#
#   build_tool() { ... }                       # the caller's: build the tool into directory $1 with go command $2
#   run_go_tool NAME CACHE_DIR "HOW LONG" "$@" # builds CACHE_DIR/NAME if missing; --path prints where it is,
#                                              # anything else runs it with those arguments
# GO picks another go command (default: go on PATH, else /usr/local/go/bin/go).

tool_cache() {
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/tfs-bridge"
}

run_go_tool() {
    local name=$1 cache=$2 how_long=$3
    shift 3
    local tool="$cache/$name"
    if [ ! -x "$tool" ]; then
        local go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
        if [ ! -x "$go" ] && ! command -v "$go" >/dev/null 2>&1; then
            echo "$name: no go command (looked on PATH and at /usr/local/go/bin/go): install Go 1.26+ or set GO" >&2
            exit 1
        fi
        mkdir -p "$cache"
        # Into a temporary directory, then renamed: an interrupted build leaves no half-written tool behind.
        go_tool_build_dir=$(mktemp -d "$cache/build.XXXXXX")
        trap 'rm -rf "$go_tool_build_dir"' EXIT
        local log="$cache/build.log" start=$SECONDS
        echo "$name: building into $cache (first time only, $how_long)" >&2
        if ! build_tool "$go_tool_build_dir" "$go" >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "$name: build failed (log: $log)" >&2
            exit 1
        fi
        mv "$go_tool_build_dir/$name" "$tool"
        rm -rf "$go_tool_build_dir"
        trap - EXIT
        echo "$name: built in $((SECONDS - start)) s" >&2
    fi
    if [ "${1:-}" = "--path" ]; then
        echo "$tool"
    else
        exec "$tool" "$@"
    fi
}

#!/usr/bin/env bash
# Run uv at the version pinned in scripts/uv-requirements.txt, installed once (pip --require-hashes) into the
# project's cache ($XDG_CACHE_HOME/tfs-bridge, default ~/.cache/tfs-bridge, as the Go tools and the Kafka jars).
#   scripts/uv.sh ARGS...   # e.g. scripts/uv.sh lock --upgrade
# uv keeps its own root store unless told otherwise; it is told to use the system's, where a company proxy's CA
# lives (UV_SYSTEM_CERTS). PYTHON picks the interpreter that installs uv (default python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pins="$here/uv-requirements.txt"
version=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$pins")
target="${XDG_CACHE_HOME:-$HOME/.cache}/tfs-bridge/uv-$version"
if [ ! -x "$target/bin/uv" ]; then
    echo "uv: installing uv $version into $target (first time only)" >&2
    mkdir -p "$(dirname "$target")"
    staging=$(mktemp -d "${target}.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    if ! "${PYTHON:-python3}" -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
            --target "$staging" -r "$pins" >"$staging.log" 2>&1; then
        cat "$staging.log" >&2
        echo "uv: pip could not install uv $version (above)" >&2
        exit 1
    fi
    rm -f "$staging.log"
    rm -rf "$target" && mv "$staging" "$target"
    trap - EXIT
fi
export UV_SYSTEM_CERTS=1
exec "$target/bin/uv" "$@"

#!/usr/bin/env bash
# Set up everything the demo and the tests need on a fresh machine, idempotently:
# a venv in .venv with the bridge and its server/test extras, the Kafka jars (Maven Central), kcat (Debian), and
# three Go tools built with the Go module proxy: compose-config (Compose v2's loader), promtool and kustomize.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
# Install only when pyproject.toml changed since the last install (saves ~20 s per run).
stamp=.venv/.tfs-bridge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing tfs-bridge with its server, test and embedded extras (TensorFlow is large: first time takes minutes)" >&2
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[server,test,embedded]"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log: $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi

.venv/bin/python -m scripts.kafka_local fetch >/dev/null

# Debian packages: kcat (the users' flow).
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}
for tool in kcat; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup: installing $tool from Debian's packages" >&2
        apt_install "$tool"
    fi
done

# Go tools, each built once into the cache and skipped when it is there (each script says why it failed):
# compose-config validates docker-compose.yml as `docker compose config` would (tests/unit/test_compose.py; about
# a minute the first time); promtool checks monitoring/ (tests/unit/test_monitoring.py; about 7 minutes the first
# time on 2 cores, downloads included); kustomize renders deploy/ (tests/unit/test_deploy.py; about a minute the
# first time, downloads included).
scripts/compose_config.sh --path >/dev/null
scripts/promtool.sh --path >/dev/null
scripts/kustomize.sh --path >/dev/null

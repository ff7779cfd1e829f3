#!/usr/bin/env bash
# Set up what a command runs, idempotently, from pinned sources only:
#   scripts/setup.sh demo   the venv .venv exactly as uv.lock has it with the server and embedded extras (the bridge,
#                           the model server and the model export), and the Kafka jars (scripts/kafka/pom.xml)
#   scripts/setup.sh test   (the default) the same venv with the test extra too, kcat (Debian), and the Go tools
#                           only tests use (go.sum): compose-config, promtool, kustomize and otelcol
# uv comes pinned by hash (scripts/uv.sh); nothing here resolves a version on the day. A second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-test}
case "$what" in
    demo) extras=(--extra server --extra embedded) ;;
    test) extras=(--extra server --extra embedded --extra test) ;;
    *) echo "setup: unknown target '$what' (demo or test)" >&2; exit 2 ;;
esac

# --locked: stop with a clear message when pyproject.toml changed and uv.lock was not updated (scripts/lock.sh).
# The demo leaves a test venv's extra packages in place (--inexact); the tests get exactly the lock.
sync=(sync --locked --quiet "${extras[@]}")
if [ "$what" = demo ]; then sync+=(--inexact); fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! scripts/uv.sh "${sync[@]}" --python "${PYTHON:-python3}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: installing the locked venv failed (above)" >&2
    exit 1
fi

.venv/bin/python -m scripts.kafka_local fetch >/dev/null

if [ "$what" = demo ]; then
    exit 0
fi

# Debian packages: kcat (the users' flow) and iptables (tests/cluster/ cuts a broker off the network).
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}
for tool in kcat iptables; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup: installing $tool from Debian's packages" >&2
        apt_install "$tool"
    fi
done

# Go tools, each built once into the cache and skipped when it is there (each script says why it failed):
# compose-config validates docker-compose.yml as `docker compose config` would (tests/unit/test_compose.py; about
# a minute the first time); promtool checks monitoring/ (tests/unit/test_monitoring.py; about 5 minutes the first
# time on 2 cores, downloads included); kustomize renders deploy/ (tests/unit/test_deploy.py; about a minute the
# first time, downloads included); otelcol is the OpenTelemetry Collector the tracing tests send spans to
# (tests/integration/test_tracing.py; about 1.5 minutes the first time, downloads apart). Built side by side: the
# Go builds share the two cores, but not their downloads.
pids=()
for tool in compose_config promtool kustomize otelcol; do
    scripts/$tool.sh --path >/dev/null &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid"
done

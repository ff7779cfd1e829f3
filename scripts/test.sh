#!/usr/bin/env bash
# The whole test suite: set up (venv, deps, Kafka jars, kcat), then unit and integration tests.
# Integration tests start a real Kafka broker, the model server and an HTTP server, and stop them at the end.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not integration".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"

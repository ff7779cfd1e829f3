#!/usr/bin/env bash
# The demo on the embedded default (no Docker): set up, then run broker + model server + bridge,
# send sample image URLs, print the predictions, and stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/python -m scripts.demo "$@"

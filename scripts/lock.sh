#!/usr/bin/env bash
# Update the lock, then everything made from it:
#   scripts/lock.sh             after editing a dependency in pyproject.toml: lock it, keep every other pin
#   scripts/lock.sh --upgrade   move every dependency to the newest release pyproject.toml allows
# Writes uv.lock, requirements.txt (the runtime's pins for the Dockerfile, with the tracing extra), serving/requirements.txt (TensorFlow's and
# the model export's, for serving/export.Dockerfile), setuptools' build constraint in pyproject.toml; then installs the new lock (scripts/setup.sh) and regenerates bridge/tfs_api/ and bridge/oip_api/ with the locked
# grpcio-tools. Review and commit the changes together; scripts/test.sh then runs what was locked.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/uv.sh lock "$@"
setuptools=$(scripts/uv.sh tree --frozen --package setuptools --depth 0 --quiet | sed -n 's/^setuptools v//p')
sed -i "s/^build-constraint-dependencies = .*/build-constraint-dependencies = [\"setuptools==$setuptools\"]/" pyproject.toml
scripts/uv.sh lock --quiet  # pyproject.toml changed: the lock records its build constraint
scripts/uv.sh export --frozen --quiet --no-dev --group build --extra tracing --no-emit-project --format requirements.txt \
    --output-file requirements.txt
scripts/uv.sh export --frozen --quiet --no-dev --no-emit-project --extra server --format requirements.txt \
    --output-file serving/requirements.txt
scripts/setup.sh test
.venv/bin/python -m scripts.gen_protos >/dev/null
git status --short -- uv.lock requirements.txt serving/requirements.txt pyproject.toml bridge/tfs_api bridge/oip_api

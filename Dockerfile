# tfs-bridge: a slim Python image with the bridge and its runtime dependencies only (no TensorFlow:
# the bridge speaks TF Serving's gRPC API through its own protos). Configured by TFS_BRIDGE_* variables.
#   docker build -t tfs-bridge .
#   docker run --rm tfs-bridge run --help
# PYTHON_IMAGE: another Python 3.11 base (a mirror of python:3.11-slim, or a stand-in where no registry is reachable).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime exactly as uv.lock pins it, with the tracing extra's OpenTelemetry (requirements.txt, every file
# checked by its hash; imported only with --tracing), then the package itself with the locked build backend, then
# drop the sources.
COPY requirements.txt pyproject.toml README.md /tmp/tfs-bridge/
COPY bridge/ /tmp/tfs-bridge/bridge/
RUN pip install --no-cache-dir --require-hashes -r /tmp/tfs-bridge/requirements.txt \
    && pip install --no-cache-dir --no-deps --no-build-isolation /tmp/tfs-bridge \
    && rm -rf /tmp/tfs-bridge \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bridge

# Defaults for the docker-compose network; override any setting with its variable (`tfs-bridge run --help`).
ENV TFS_BRIDGE_BOOTSTRAP_SERVERS=kafka:29092 \
    TFS_BRIDGE_MODEL_SERVER=tfserving:8500

WORKDIR /home/bridge
USER 10001
# /metrics (Prometheus), /livez and /readyz (--metrics-port)
EXPOSE 9464
ENTRYPOINT ["tfs-bridge"]
CMD ["run"]

# The one-shot model export of docker-compose.yml (build context: serving/): Python with TensorFlow and what
# serving/export_model.py needs exactly as uv.lock pins them (serving/requirements.txt, every file checked by its
# hash; scripts/lock.sh writes it), and serving/'s export modules.
# PYTHON_IMAGE: another Python 3.11 base (a mirror of python:3.11-slim, or a stand-in where no registry is reachable).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements.txt /tmp/serving-requirements.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/serving-requirements.txt \
    && rm /tmp/serving-requirements.txt

WORKDIR /app
COPY __init__.py digits.py export_model.py /app/serving/
COPY export-entrypoint.sh /usr/local/bin/export-entrypoint.sh

ENTRYPOINT ["sh", "/usr/local/bin/export-entrypoint.sh"]

# The one-shot model export of docker-compose.yml (build context: serving/):
# TensorFlow (CPU) plus what serving/export_model.py needs, and serving/'s export modules.
FROM tensorflow/tensorflow:2.19.0

RUN python3 -m pip install --no-cache-dir "scikit-learn>=1.4,<2" "pillow>=10.3,<13"

WORKDIR /app
COPY __init__.py digits.py export_model.py /app/serving/
COPY export-entrypoint.sh /usr/local/bin/export-entrypoint.sh

ENTRYPOINT ["sh", "/usr/local/bin/export-entrypoint.sh"]

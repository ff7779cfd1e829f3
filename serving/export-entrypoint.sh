#!/bin/sh
# Export $MODEL (imagenet or digits) into $MODEL_DIR/<model>/1 for TF Serving, unless it is there already:
# the first `docker compose up` exports (imagenet downloads MobileNetV2's weights), later ones exit at once.
set -eu
model="${MODEL:-imagenet}"
out="${MODEL_DIR:-/models}"
if [ -f "$out/$model/1/saved_model.pb" ]; then
    echo "model $model already exported to $out/$model/1"
    exit 0
fi
echo "exporting model $model to $out/$model/1"
exec python3 -m serving.export_model --model "$model" --output-dir "$out" --version 1

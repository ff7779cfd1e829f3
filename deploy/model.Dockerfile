# The model image of deploy/: TF Serving's SavedModels at /models/<name>/<version>/, which the tfserving
# Deployment's initContainer copies into its pod (base/tfserving-deployment.yaml). Build it from a folder that
# `python -m serving.export_model` wrote, with that folder as the build context:
#   .venv/bin/python -m serving.export_model --model imagenet --output-dir models   # models/imagenet/1/
#   docker build -f deploy/model.Dockerfile -t registry.example.com/tfs-bridge-models:imagenet-1 models
# The initContainer needs only sh, cp and ls: busybox.
FROM busybox:1.37.0
COPY . /models/
USER 10001

"""The model: the backend seam and which one --model-server chooses (backend), TF Serving's gRPC and REST APIs
(grpc_backend, rest_backend), the model inside the bridge (embedded_backend), the Open Inference Protocol
(oip_backend, oip_tensors), serving signatures (signature), the tensor codec (tensors), and the predictor with its
retries, bisection and failure classification (predictor)."""

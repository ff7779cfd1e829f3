"""The model server: TF Serving's gRPC client (client), serving signatures (signature), the tensor codec
(tensors), and the predictor with its retries, bisection and failure classification (predictor)."""

"""The run loop: the transform from records to outcomes (pipeline), the failure boundary between one record and the
bridge (isolation), the pause state while the model server fails (pause), and the loop that owns Kafka (run)."""

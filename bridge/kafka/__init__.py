"""Kafka: the consumer and producer wrappers and the classification of librdkafka's errors (clients), and the
transaction that commits outcomes with the input offsets (checkpoint)."""

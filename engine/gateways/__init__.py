"""Kafka-facing roles of a worker: the model gateway and the pipeline gateway."""

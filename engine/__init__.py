"""Control plane (scheduler) and, later, the Kafka backbone and dataflow."""

"""Kafka backbone: the embedded broker (Apache Kafka or Tansu), client configuration and readiness."""

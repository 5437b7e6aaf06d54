"""headrace: a multiprocess Open Inference Protocol data plane for models and Kafka pipelines."""

__version__ = "0.1.0"

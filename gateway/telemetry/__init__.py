"""Metrics (Prometheus, aggregated over processes), request ids and trace context, optional OpenTelemetry."""

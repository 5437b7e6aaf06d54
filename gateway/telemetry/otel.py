"""OpenTelemetry spans (imported only when ``otel_endpoint`` is set: ``pip install headrace[otel]``)."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP: a base URL (``http://collector:4318``) gets ``/v1/traces``, as the SDK does for
    OTEL_EXPORTER_OTLP_ENDPOINT; a URL that already names it is used as it is."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Otel:
    """The spans of one process: the call at the front door, a step's model call, the reply."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("headrace")

    @classmethod
    def exporting(cls, endpoint: str, service: str, role: str, ratio: float = 1.0) -> Otel:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls.with_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint)), schedule_delay_millis=500),
            service,
            role,
            ratio,
        )

    @classmethod
    def with_exporter(cls, exporter: SpanExporter, service: str = "headrace", role: str = "test") -> Otel:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return cls.with_processor(SimpleSpanProcessor(exporter), service, role)

    @classmethod
    def with_processor(cls, processor: SpanProcessor, service: str, role: str, ratio: float = 1.0) -> Otel:
        resource = Resource.create(
            {"service.name": service, "service.instance.id": f"{role} ({os.getpid()})", "headrace.role": role}
        )
        provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(ratio)))
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        self.provider.shutdown()

    # -- spans ------------------------------------------------------------------------------------
    @staticmethod
    def _parent(traceparent: str | None, tracestate: str | None) -> Any:
        if not traceparent:
            return None
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        return _PROPAGATOR.extract(carrier)

    @staticmethod
    def context_of(span: Any) -> tuple[str | None, str | None]:
        """(traceparent, tracestate) naming ``span`` as the parent of what follows."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent"), carrier.get("tracestate")

    def start_call(
        self, name: str, traceparent: str | None, tracestate: str | None, attributes: dict[str, Any]
    ) -> Any:
        """The front door's span of a call (a child of the client's context, if it sent one)."""
        return self.tracer.start_span(
            name, context=self._parent(traceparent, tracestate), kind=SpanKind.SERVER, attributes=attributes
        )

    @staticmethod
    def end_call(span: Any, status: str, error: str | None) -> None:
        span.set_attribute("headrace.status", status)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def step_span(
        self,
        model: str,
        pipeline: str | None,
        traceparent: str | None,
        tracestate: str | None,
        began: int,
        ended: int,
        error: str | None,
    ) -> tuple[str | None, str | None]:
        attributes: dict[str, Any] = {"headrace.model": model}
        if pipeline:
            attributes["headrace.pipeline"] = pipeline
        span = self.tracer.start_span(
            f"step {model}",
            context=self._parent(traceparent, tracestate),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            start_time=began,
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=ended)
        if not span.get_span_context().is_valid:
            return traceparent, tracestate
        return self.context_of(span)

    def reply_span(
        self, name: str, traceparent: str | None, tracestate: str | None, began: int, ended: int
    ) -> None:
        span = self.tracer.start_span(
            f"reply {name}",
            context=self._parent(traceparent, tracestate),
            kind=SpanKind.CONSUMER,
            attributes={"headrace.pipeline": name},
            start_time=began,
        )
        span.end(end_time=ended)

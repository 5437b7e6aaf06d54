"""Trace context on records and spans per hop, in process (opentelemetry-sdk's InMemorySpanExporter)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headrace.gateway.registry import ModelRegistry
from headrace.gateway.telemetry import tracing
from headrace.gateway.telemetry.front import FrontDoor
from headrace.gateway.telemetry.otel import Otel, traces_url

CLIENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracer = Otel.with_exporter(spans)
    tracing.configure(tracer)
    yield spans
    tracing.configure(None)
    tracer.shutdown()


def test_traceparent_validation() -> None:
    assert tracing.valid_traceparent(CLIENT)
    assert not tracing.valid_traceparent("00-" + "0" * 32 + "-00f067aa0ba902b7-01")  # zero trace id
    assert not tracing.valid_traceparent("garbage")
    assert not tracing.valid_traceparent(CLIENT.replace("-", "_"))


def test_request_ids_are_unique_hex() -> None:
    ids = tracing.RequestIds()
    made = {ids.new() for _ in range(1000)} | {ids.new_bytes().decode() for _ in range(1000)}
    assert len(made) == 2000 and all(len(i) == 32 and int(i, 16) >= 0 for i in made)


def test_without_opentelemetry_the_clients_context_passes_unchanged() -> None:
    steps = tracing.StepTelemetry()
    headers = [("pipeline", b"p"), ("traceparent", CLIENT.encode()), ("headrace-written", b"1")]
    out = dict(steps.step("m", headers, steps.began()))
    assert out["traceparent"] == CLIENT.encode()
    assert int(out["headrace-written"]) > 1  # the step's own write time, for the next hop


def test_spans_chain_call_step_step_reply(exporter: InMemorySpanExporter) -> None:
    front = FrontDoor(ModelRegistry())
    call = front.call("r1", CLIENT, "k=v", "demo")
    first = tracing.trace_headers(call)
    assert dict(first)["traceparent"].decode() != CLIENT  # the call span's context
    steps = tracing.StepTelemetry()
    headers = [("pipeline", b"demo"), *first]
    after_a = steps.step("a", headers, steps.began())
    after_b = steps.step("b", after_a, steps.began(), error="boom")
    tracing.reply("demo", after_b)
    front.pipeline_done(call, "demo", "rest", "200", 0.0)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"infer demo", "step a", "step b", "reply demo"}
    trace_id = int(CLIENT.split("-")[1], 16)
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert spans["infer demo"].parent.span_id == int(CLIENT.split("-")[2], 16)
    assert spans["step a"].parent.span_id == spans["infer demo"].context.span_id
    assert spans["step b"].parent.span_id == spans["step a"].context.span_id
    assert spans["reply demo"].parent.span_id == spans["step b"].context.span_id
    assert not spans["step b"].status.is_ok
    assert spans["infer demo"].attributes["headrace.request_id"] == "r1"


def test_otlp_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"

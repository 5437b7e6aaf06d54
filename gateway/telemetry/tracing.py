"""Request ids and W3C trace context through every hop, hop timing, and spans when OpenTelemetry is on.

- Every answer carries ``x-request-id``: the client's, else one made here (a per-process random
  prefix and a counter: unique, and far cheaper than a uuid4 per call). A pipeline's answer carries
  its record key (``<partition>.<pipeline>.<id>``), as Seldon's does.
- ``traceparent``/``tracestate`` from the client travel on every Kafka record of the call (as headers
  of those names) and come back on the answer. With OpenTelemetry on, each hop makes a span — the
  call at the front door, each step's model call (model gateway), the reply (pipeline gateway) —
  and writes its own context on the records it produces, so the spans chain parent to child.
- ``headrace-written`` (nanoseconds since the epoch) is set on the pipeline's input record and on
  every step's output record: the next hop measures ``headrace_pipeline_hop_seconds`` from it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from headrace.gateway.telemetry import metrics

if TYPE_CHECKING:
    from headrace.gateway.telemetry.otel import Otel

REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
WRITTEN = "headrace-written"
_REWRITTEN = frozenset({WRITTEN, TRACEPARENT, TRACESTATE})

Headers = list[tuple[str, Any]]


class RequestIds:
    """``x-request-id`` values for calls that came without one: 32 hex digits, unique per process
    start (8 random bytes) and call (a counter)."""

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self._prefix = self.prefix.encode()
        self.count = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self.count):016x}"

    def new_bytes(self) -> bytes:
        return b"%s%016x" % (self._prefix, next(self.count))


def valid_traceparent(value: str | None) -> bool:
    """A W3C traceparent as we pass it on: ``vv-<32 hex>-<16 hex>-ff``, not all-zero ids."""
    if not value or len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return False
    try:
        int(value[:2], 16), int(value[53:55], 16)
        trace, span = int(value[3:35], 16), int(value[36:52], 16)
    except ValueError:
        return False
    return trace != 0 and span != 0 and value[:2] != "ff"


class Call:
    """One call at the front door: its request id, trace context and (OpenTelemetry on) span; it is
    the log context (``config.logs.current_request``) while the call is served."""

    __slots__ = ("key", "request_id", "span", "traceparent", "tracestate")

    def __init__(self, request_id: str, traceparent: str | None, tracestate: str | None) -> None:
        self.request_id = request_id
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.key: str | None = None  # a pipeline call's record key, once the gateway has made it
        self.span: Any = None


# -- the process's tracer -------------------------------------------------------------------------

_otel: Otel | None = None


def configure(otel: Otel | None) -> None:
    global _otel
    _otel = otel


def otel() -> Otel | None:
    return _otel


def start_otel(endpoint: str, service: str, role: str, ratio: float = 1.0) -> Otel | None:
    """Span export (OTLP/HTTP) for this process when ``endpoint`` is set; the OpenTelemetry packages
    are imported only then (``pip install headrace[otel]``)."""
    if not endpoint:
        configure(None)
        return None
    from headrace.gateway.telemetry.otel import Otel

    tracer = Otel.exporting(endpoint, service, role, ratio)
    configure(tracer)
    return tracer


# -- hops on Kafka records --------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, memoryview):
        value = bytes(value)
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def trace_headers(call: Call) -> list[tuple[str, bytes]]:
    """The trace context a call's first record carries: its span's (OpenTelemetry on), else the
    client's, and the time it is written."""
    out: list[tuple[str, bytes]] = [(WRITTEN, b"%d" % time.time_ns())]
    if call.traceparent:
        out.append((TRACEPARENT, call.traceparent.encode("latin-1")))
        if call.tracestate:
            out.append((TRACESTATE, call.tracestate.encode("latin-1")))
    return out


class _Seen:
    __slots__ = ("pipeline", "traceparent", "tracestate", "written")

    def __init__(self, headers: Iterable[tuple[str, Any]]) -> None:
        self.pipeline: str | None = None
        self.written = 0
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        for name, value in headers:
            if name == "pipeline":
                self.pipeline = _text(value)
            elif name == WRITTEN:
                try:
                    self.written = int(value)
                except (TypeError, ValueError):
                    self.written = 0
            elif name == TRACEPARENT:
                self.traceparent = _text(value)
            elif name == TRACESTATE:
                self.tracestate = _text(value)


class StepTelemetry:
    """What the model gateway records of one step: the hop's time (from the record it read to the
    record it writes) and, with OpenTelemetry on, the step's span, whose context its output carries."""

    def __init__(self) -> None:
        self._hops: dict[tuple[str, str], metrics.HistogramChild] = {}

    @staticmethod
    def began() -> int:
        return time.time_ns()

    def step(self, model: str, headers: Headers, began: int, error: str | None = None) -> Headers:
        """The headers of the step's output record (``headers`` are its input's)."""
        seen = _Seen(headers)
        now = time.time_ns()
        if seen.pipeline is not None and seen.written:
            key = (seen.pipeline, model)
            hop = self._hops.get(key)
            if hop is None:
                hop = self._hops[key] = metrics.PIPELINE_HOP.labels(seen.pipeline, model)
            hop.observe(max(0, now - seen.written) / 1e9)
        traceparent, tracestate = seen.traceparent, seen.tracestate
        tracer = _otel
        if tracer is not None:
            traceparent, tracestate = tracer.step_span(
                model, seen.pipeline, traceparent, tracestate, began, now, error
            )
        out: Headers = [(n, v) for n, v in headers if n not in _REWRITTEN]
        out.append((WRITTEN, b"%d" % now))
        if traceparent:
            out.append((TRACEPARENT, traceparent.encode("latin-1")))
            if tracestate:
                out.append((TRACESTATE, tracestate.encode("latin-1")))
        return out


_reply_hops: dict[str, metrics.HistogramChild] = {}


def reply(name: str, headers: Iterable[tuple[str, Any]]) -> None:
    """The pipeline gateway got a call's answer: the last hop's time and (OpenTelemetry on) its span."""
    seen = _Seen(headers)
    now = time.time_ns()
    if seen.written:
        hop = _reply_hops.get(name)
        if hop is None:
            hop = _reply_hops[name] = metrics.PIPELINE_HOP.labels(name, "reply")
        hop.observe(max(0, now - seen.written) / 1e9)
    tracer = _otel
    if tracer is not None:
        tracer.reply_span(name, seen.traceparent, seen.tracestate, seen.written or now, now)

"""What the REST and gRPC front doors record of each call: Seldon's metrics, errors by kind, a log
line per error and per sampled call, the request id and trace context of the answer, the call's span."""

from __future__ import annotations

import bisect
import logging
import random
import time
from typing import Any

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.gateway.control import ReplicaAddr
from headrace.gateway.registry import ModelRegistry
from headrace.gateway.runtime.client import InferResult
from headrace.gateway.telemetry import metrics as m
from headrace.gateway.telemetry import tracing
from headrace.gateway.telemetry.tracing import Call

log = logging.getLogger("headrace.requests")
_now = time.perf_counter

MODEL, PIPELINE = "model", "pipeline"


class FrontDoor:
    """One worker's recorder for both front doors."""

    def __init__(
        self, registry: ModelRegistry | None, worker: int = 0, request_log_sample: float = 0.0
    ) -> None:
        self.registry = registry if registry is not None else ModelRegistry()
        self.worker = str(worker)
        self.sample = request_log_sample
        self.ids = tracing.RequestIds()
        self.metrics = m.InferMetrics()
        # the common case: model -> (replica, version, binding) of its last call answered 200 over REST
        self._rest_ok: dict[str, tuple[ReplicaAddr | None, str | None, m._Bound]] = {}
        self.otel_on = tracing.otel() is not None  # the worker starts OpenTelemetry before its front doors

    def rest_ok(self, model: str, started: float, result: InferResult, rid: bytes, path: str) -> None:
        """A direct REST call answered 200 with no trace context to handle: the hot path (a dict
        lookup and an identity check on the replica, then six stores)."""
        seconds = _now() - started
        served_by, version = result.served_by, result.response.model_version
        entry = self._rest_ok.get(model)
        if entry is None or entry[0] is not served_by or entry[1] != version:
            server, replica = self._where(model, served_by, None)
            if server is None:
                return
            bound = self.metrics.bound_model(model, version or "", server, replica, m.REST, "200")
            entry = self._rest_ok[model] = (served_by, version, bound)
        b = entry[2]  # _Bound.record, inlined: this runs on every call
        view, index = b._buckets[bisect.bisect_left(b._bounds, seconds)]
        view[index] += 1.0
        b._h[b._hs] += seconds
        b._c[b._ic] += 1.0
        b._cs[b._ics] += seconds
        b._a[b._ia] += 1.0
        b._as[b._ias] += seconds
        if self.sample and random.random() < self.sample:
            self._sampled(rid.decode("latin-1"), MODEL, model, m.REST, "200", seconds, path)

    def call(
        self, request_id: str | None, traceparent: str | None, tracestate: str | None, name: str
    ) -> Call:
        """A call begins: the client's request id or a new one; its trace context (and span)."""
        call = Call(request_id or self.ids.new(), None, None)
        if traceparent and tracing.valid_traceparent(traceparent):
            call.traceparent = traceparent
            call.tracestate = tracestate
        tracer = tracing.otel()
        if tracer is not None:
            call.span = tracer.start_call(
                f"infer {name}", call.traceparent, call.tracestate, {"headrace.request_id": call.request_id}
            )
            traceparent, tracestate = tracer.context_of(call.span)
            if traceparent:
                call.traceparent, call.tracestate = traceparent, tracestate
        return call

    # -- a call's end ---------------------------------------------------------------------------
    def model_done(
        self,
        call: Call,
        model: str,
        method_type: str,
        code: str,
        started: float,
        served_by: ReplicaAddr | None,
        version: str | None,
        error: HeadraceError | None = None,
        what: str = "",
    ) -> None:
        """A direct model call answered (``code``: the HTTP status or the gRPC code's name)."""
        seconds = time.perf_counter() - started
        server, replica = self._where(model, served_by, error)
        if server is not None:
            if version is None:
                route = self.registry.get(model)
                version = route.version if route is not None else ""
            self.metrics.model(model, version, server, replica, method_type, code, seconds)
        self._end(call, MODEL, model, method_type, code, seconds, error, what)

    def step_done(
        self,
        model: str,
        started: float,
        served_by: ReplicaAddr | None,
        version: str | None,
        error: HeadraceError | None,
    ) -> None:
        """The model gateway's call of a model (a pipeline step; over gRPC in Seldon, labelled so)."""
        seconds = time.perf_counter() - started
        server, replica = self._where(model, served_by, error)
        if server is None:
            return
        if version is None:
            route = self.registry.get(model)
            version = route.version if route is not None else ""
        code = m.GRPC_OK if error is None else m.GRPC_CODE_NAMES[_grpc(error.kind)]
        self.metrics.model(model, version, server, replica, m.GRPC, code, seconds)

    def pipeline_done(
        self,
        call: Call,
        name: str,
        method_type: str,
        code: str,
        started: float,
        error: HeadraceError | None = None,
        known: bool = True,
        what: str = "",
    ) -> None:
        seconds = time.perf_counter() - started
        if known:  # never a label child for a name a client made up
            self.metrics.pipeline(name, method_type, code, seconds)
        self._end(call, PIPELINE, name, method_type, code, seconds, error, what)

    def _where(
        self, model: str, served_by: ReplicaAddr | None, error: HeadraceError | None
    ) -> tuple[str | None, str]:
        """(server, server_replica) labels of a model call; server None: not a model we serve (no
        label child for names a client made up)."""
        if served_by is None and error is not None and isinstance(error.replica, ReplicaAddr):
            served_by = error.replica
        if served_by is not None:
            return served_by.server, str(served_by.index)
        route = self.registry.get(model)
        if route is None:
            return None, ""
        if route.inline:
            return m.INLINE_SERVER, self.worker
        return (route.replicas[0].server if route.replicas else ""), ""

    def _end(
        self,
        call: Call,
        target: str,
        name: str,
        method_type: str,
        code: str,
        seconds: float,
        error: HeadraceError | None,
        what: str,
    ) -> None:
        rid = call.key or call.request_id
        if error is not None:
            self.metrics.error(error.kind, target, method_type)
            level = logging.ERROR if error.kind in _SERVER_SIDE else logging.WARNING
            log.log(
                level,
                "%s %s %s failed (%s, %s): %s",
                method_type,
                target,
                name,
                code,
                error.kind.value,
                error.message,
                extra={
                    "request_id": rid,
                    "target": target,
                    "resource": name,
                    "method_type": method_type,
                    "status": code,
                    "kind": error.kind.value,
                    "duration_ms": round(seconds * 1000, 3),
                },
            )
        if self.sample and random.random() < self.sample:
            self._sampled(rid, target, name, method_type, code, seconds, what)
        if call.span is not None:
            tracer = tracing.otel()
            if tracer is not None:
                tracer.end_call(call.span, code, None if error is None else error.message)
            call.span = None

    @staticmethod
    def _sampled(
        rid: str, target: str, name: str, method_type: str, code: str, seconds: float, what: str
    ) -> None:
        log.info(
            "%s %s %s %s %.3f ms",
            method_type,
            what or name,
            target,
            code,
            seconds * 1000,
            extra={
                "request_id": rid,
                "target": target,
                "resource": name,
                "path": what or name,
                "method_type": method_type,
                "status": code,
                "duration_ms": round(seconds * 1000, 3),
            },
        )

    def answer_headers(self, call: Call) -> list[tuple[str, str]]:
        """What every answer carries: x-request-id (a pipeline's: its record key) and the trace context."""
        out = [(tracing.REQUEST_ID, call.key or call.request_id)]
        if call.traceparent:
            out.append((tracing.TRACEPARENT, call.traceparent))
            if call.tracestate:
                out.append((tracing.TRACESTATE, call.tracestate))
        return out


_SERVER_SIDE = frozenset(
    {ErrorKind.INTERNAL, ErrorKind.MODEL_ERROR, ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT}
)


def _grpc(kind: ErrorKind) -> Any:
    from headrace.gateway.errors import grpc_code

    return grpc_code(kind)

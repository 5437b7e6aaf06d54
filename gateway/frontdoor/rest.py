"""OIP REST routes: maps HTTP requests onto the data plane and errors onto HTTP statuses."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

import orjson

from headrace.config.errors import HeadraceError, InvalidInputError
from headrace.config.logs import current_request
from headrace.gateway.dataplane import MODEL, PIPELINE, DataPlane, parse_target
from headrace.gateway.errors import http_status
from headrace.gateway.frontdoor.http import JSON, HttpRequest, HttpResponse, error_response
from headrace.gateway.oip import rest as codec
from headrace.gateway.oip.types import InferRequest
from headrace.gateway.runtime.client import InferResult
from headrace.gateway.telemetry import tracing
from headrace.gateway.telemetry.front import FrontDoor
from headrace.gateway.telemetry.metrics import REST, http_label
from headrace.gateway.telemetry.tracing import Call

log = logging.getLogger("headrace.rest")

_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
_NOT_READY = orjson.dumps({"ready": False})
_BINARY = b"application/octet-stream"
_HEADER_LENGTH = b"inference-header-content-length"
_REQUEST_ID = b"x-request-id"
_RID, _TRACEPARENT = tracing.REQUEST_ID, tracing.TRACEPARENT
_now = time.perf_counter


def _seldon_model(req: HttpRequest) -> str | None:
    """Seldon's target header; the internal one (set by Seldon's Envoy) wins, as in its gateway."""
    return req.headers.get("seldon-internal-model") or req.headers.get("seldon-model")


def _passthrough(req: HttpRequest, call: Call) -> list[tuple[str, bytes]]:
    """Client ``x-*`` headers travel with the request through every hop (never x-seldon-route), and
    so do the request id and the trace context."""
    out = [
        (name, value.encode("latin-1"))
        for name, value in req.headers.items()
        if name.startswith("x-") and name != "x-seldon-route" and name != tracing.REQUEST_ID
    ]
    out.append((tracing.REQUEST_ID, call.request_id.encode("latin-1")))
    out += tracing.trace_headers(call)
    return out


class RestApp:
    def __init__(self, dataplane: DataPlane, telemetry: FrontDoor | None = None) -> None:
        self.dataplane = dataplane
        self._server_metadata = orjson.dumps(dataplane.server_metadata())
        self.telemetry = telemetry or FrontDoor(dataplane.registry)

    def __call__(self, req: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        try:
            response = self._route(req)
        except HeadraceError as exc:
            response = error_response(http_status(exc.kind), exc.message)
        if isinstance(response, HttpResponse) and not response.headers:
            # every answer has a request id: the client's, or a new one (an inference answer has its
            # own already, so its headers are never empty)
            rid = req.headers.get(tracing.REQUEST_ID) or self.telemetry.ids.new()
            response.headers.append((_REQUEST_ID, rid.encode("latin-1")))
        return response

    def _route(self, req: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        parts = req.path.rstrip("/").split("/")
        n = len(parts)
        if n < 2 or parts[1] != "v2":
            return error_response(404, f"no route for {req.method} {req.path}")
        if n >= 4 and parts[2] in ("models", "pipelines"):
            model = parts[3]
            url_pipeline = model if parts[2] == "pipelines" else None
            version: str | None = None
            rest = parts[4:]
            if len(rest) >= 2 and rest[0] == "versions":
                version = rest[1]
                rest = rest[2:]
            action = rest[0] if rest else ""
            if len(rest) > 1:
                return error_response(404, f"no route for {req.method} {req.path}")
            if action == "infer":
                if req.method != "POST":
                    return error_response(405, "infer takes POST")
                return self._infer(req, model, version, url_pipeline)
            if req.method not in ("GET", "HEAD"):
                return error_response(405, f"{req.path} takes GET")
            kind, name = parse_target(model, _seldon_model(req), url_pipeline)
            if action == "ready" and kind == PIPELINE:
                ready = self.dataplane.pipeline_ready(name)
                return HttpResponse(200 if ready else 503, [_READY if ready else _NOT_READY])
            if action == "ready":
                ready = self.dataplane.model_ready(name, version)
                return HttpResponse(200 if ready else 503, [_READY if ready else _NOT_READY])
            if action == "":
                return HttpResponse(200, [orjson.dumps(self.dataplane.model_metadata(model, version))])
            return error_response(404, f"no route for {req.method} {req.path}")
        if req.method not in ("GET", "HEAD"):
            return error_response(405, f"{req.path} takes GET")
        if n == 2:
            return HttpResponse(200, [self._server_metadata])
        if n == 4 and parts[2] == "health":
            if parts[3] == "live":
                return HttpResponse(200, [_LIVE])
            if parts[3] == "ready":
                ready = self.dataplane.ready()
                return HttpResponse(200 if ready else 503, [_READY if ready else _NOT_READY])
        return error_response(404, f"no route for {req.method} {req.path}")

    def _infer(
        self, req: HttpRequest, model: str, version: str | None, url_pipeline: str | None = None
    ) -> HttpResponse | Awaitable[HttpResponse]:
        started = _now()
        headers = req.headers
        kind, name = MODEL, model
        call = None
        try:
            header_length: int | None = None
            raw_length = headers.get("inference-header-content-length")
            if raw_length is not None:
                try:
                    header_length = int(raw_length)
                except ValueError:
                    raise InvalidInputError(
                        f"Inference-Header-Content-Length must be an integer, got {raw_length!r}"
                    ) from None
            kind, name = parse_target(model, _seldon_model(req), url_pipeline)
            request = codec.decode_request(req.body, header_length, name, version)
            if kind != MODEL:
                # a pipeline's record key takes the body's id first, as the gateway does
                rid = request.id or headers.get(tracing.REQUEST_ID)
                call = self.telemetry.call(
                    rid, headers.get(tracing.TRACEPARENT), headers.get(tracing.TRACESTATE), name
                )
                return self._await_kafka(req, kind, name, request, _passthrough(req, call), call, started)
            telemetry = self.telemetry
            if telemetry.otel_on or _TRACEPARENT in headers:  # else the hot path: no Call at all
                call = self._call(headers, name)
            result = self.dataplane.infer(request)
        except HeadraceError as exc:
            return self._failed(req, kind, name, call or self._call(headers, name), started, exc)
        if isinstance(result, InferResult):
            return self._reply(req, request, result, call, started)
        return self._await(req, request, result, call, started)

    def _call(self, headers: dict[str, str], name: str) -> Call:
        return self.telemetry.call(
            headers.get(tracing.REQUEST_ID),
            headers.get(tracing.TRACEPARENT),
            headers.get(tracing.TRACESTATE),
            name,
        )

    def _failed(
        self, req: HttpRequest, kind: str, name: str, call: Call, started: float, exc: HeadraceError
    ) -> HttpResponse:
        status = http_status(exc.kind)
        if kind == MODEL:
            self.telemetry.model_done(
                call, name, REST, http_label(status), started, None, None, exc, req.path
            )
        else:
            known = kind != PIPELINE or (
                self.dataplane.kafka is not None and self.dataplane.kafka.pipeline_known(name)
            )
            self.telemetry.pipeline_done(call, name, REST, http_label(status), started, exc, known, req.path)
        return _done(error_response(status, exc.message), self.telemetry.answer_headers(call))

    async def _await(
        self,
        req: HttpRequest,
        request: InferRequest,
        pending: Awaitable[InferResult],
        call: Call | None,
        started: float,
    ) -> HttpResponse:
        try:
            result = await pending
        except HeadraceError as exc:
            return self._failed(
                req,
                MODEL,
                request.model_name,
                call or self._call(req.headers, request.model_name),
                started,
                exc,
            )
        return self._reply(req, request, result, call, started)

    async def _await_kafka(
        self,
        req: HttpRequest,
        kind: str,
        name: str,
        request: InferRequest,
        headers: list[tuple[str, bytes]],
        call: Call,
        started: float,
    ) -> HttpResponse:
        current_request.set(call)
        try:
            response, key = await self.dataplane.infer_kafka(kind, name, request, headers)
            parts, header_length = codec.encode_response(response, request)
        except HeadraceError as exc:
            return self._failed(req, kind, name, call, started, exc)
        call.key = key
        self.telemetry.pipeline_done(call, name, REST, "200", started, what=req.path)
        extra = self.telemetry.answer_headers(call)
        if header_length is None:
            return _done(HttpResponse(200, parts), extra)
        return _done(
            HttpResponse(200, parts, content_type=_BINARY, headers=[(_HEADER_LENGTH, b"%d" % header_length)]),
            extra,
        )

    def _reply(
        self, req: HttpRequest, request: InferRequest, result: InferResult, call: Call | None, started: float
    ) -> HttpResponse:
        try:
            parts, header_length = codec.encode_response(result.response, request)
        except HeadraceError as exc:
            result.release()
            call = call or self._call(req.headers, request.model_name)
            return self._failed(req, MODEL, request.model_name, call, started, exc)
        except Exception:
            result.release()
            raise
        if call is None:  # the hot path: the request id is all the answer adds
            rid = req.headers.get(_RID)
            rid_bytes = rid.encode("latin-1") if rid else self.telemetry.ids.new_bytes()
            self.telemetry.rest_ok(request.model_name, started, result, rid_bytes, req.path)
            extra = [(_REQUEST_ID, rid_bytes)]
        else:
            version = result.response.model_version
            self.telemetry.model_done(
                call, request.model_name, REST, "200", started, result.served_by, version, None, req.path
            )
            extra = [
                (n.encode("latin-1"), v.encode("latin-1")) for n, v in self.telemetry.answer_headers(call)
            ]
        if header_length is None:
            result.release()  # the JSON body holds copies: shared memory can go now
            return HttpResponse(200, parts, JSON, extra)
        extra.append((_HEADER_LENGTH, b"%d" % header_length))
        return HttpResponse(200, parts, content_type=_BINARY, headers=extra, done=result.release)


def _done(response: HttpResponse, pairs: list[tuple[str, str]]) -> HttpResponse:
    """An infer answer with its request id and trace context (the catch-all adds nothing more)."""
    response.headers.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)
    return response

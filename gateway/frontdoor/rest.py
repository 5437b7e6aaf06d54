"""OIP REST routes: maps HTTP requests onto the data plane and errors onto HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import orjson

from headrace.config.errors import HeadraceError, InvalidInputError
from headrace.gateway.dataplane import MODEL, PIPELINE, DataPlane, parse_target
from headrace.gateway.errors import http_status
from headrace.gateway.frontdoor.http import HttpRequest, HttpResponse, error_response
from headrace.gateway.oip import rest as codec
from headrace.gateway.oip.types import InferRequest
from headrace.gateway.runtime.client import InferResult

log = logging.getLogger("headrace.rest")

_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
_NOT_READY = orjson.dumps({"ready": False})
_BINARY = b"application/octet-stream"
_HEADER_LENGTH = b"inference-header-content-length"
_REQUEST_ID = b"x-request-id"


def _seldon_model(req: HttpRequest) -> str | None:
    """Seldon's target header; the internal one (set by Seldon's Envoy) wins, as in its gateway."""
    return req.headers.get("seldon-internal-model") or req.headers.get("seldon-model")


def _passthrough(req: HttpRequest) -> list[tuple[str, bytes]]:
    """Client ``x-*`` headers travel with the request through every hop (never x-seldon-route)."""
    return [
        (name, value.encode("latin-1"))
        for name, value in req.headers.items()
        if name.startswith("x-") and name != "x-seldon-route"
    ]


class RestApp:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self._server_metadata = orjson.dumps(dataplane.server_metadata())

    def __call__(self, req: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        try:
            return self._route(req)
        except HeadraceError as exc:
            return error_response(http_status(exc.kind), exc.message)

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
        header_length: int | None = None
        raw_length = req.headers.get("inference-header-content-length")
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
            return self._await_kafka(kind, name, request, _passthrough(req))
        result = self.dataplane.infer(request)
        if isinstance(result, InferResult):
            return self._reply(request, result)
        return self._await(request, result)

    async def _await(self, request: InferRequest, pending: Awaitable[InferResult]) -> HttpResponse:
        try:
            result = await pending
        except HeadraceError as exc:
            return error_response(http_status(exc.kind), exc.message)
        return self._reply(request, result)

    async def _await_kafka(
        self, kind: str, name: str, request: InferRequest, headers: list[tuple[str, bytes]]
    ) -> HttpResponse:
        try:
            response, key = await self.dataplane.infer_kafka(kind, name, request, headers)
            parts, header_length = codec.encode_response(response, request)
        except HeadraceError as exc:
            return error_response(http_status(exc.kind), exc.message)
        extra = [(_REQUEST_ID, key.encode())]
        if header_length is None:
            return HttpResponse(200, parts, headers=extra)
        return HttpResponse(
            200, parts, content_type=_BINARY, headers=[(_HEADER_LENGTH, b"%d" % header_length), *extra]
        )

    def _reply(self, request: InferRequest, result: InferResult) -> HttpResponse:
        try:
            parts, header_length = codec.encode_response(result.response, request)
        except HeadraceError as exc:
            result.release()
            return error_response(http_status(exc.kind), exc.message)
        except Exception:
            result.release()
            raise
        if header_length is None:
            result.release()  # the JSON body holds copies: shared memory can go now
            return HttpResponse(200, parts)
        return HttpResponse(
            200,
            parts,
            content_type=_BINARY,
            headers=[(_HEADER_LENGTH, b"%d" % header_length)],
            done=result.release,
        )

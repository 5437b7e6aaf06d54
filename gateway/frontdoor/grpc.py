"""OIP gRPC service (inference.GRPCInferenceService) on grpcio aio, over the shared data plane."""

from __future__ import annotations

import time
from typing import Any

import grpc

from headrace.config.errors import HeadraceError
from headrace.config.logs import current_request
from headrace.gateway.dataplane import MODEL, PIPELINE, DataPlane, parse_target
from headrace.gateway.errors import grpc_code
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2, pb2_grpc
from headrace.gateway.runtime.client import InferResult
from headrace.gateway.telemetry import tracing
from headrace.gateway.telemetry.front import FrontDoor
from headrace.gateway.telemetry.metrics import GRPC, GRPC_CODE_NAMES, GRPC_OK
from headrace.gateway.telemetry.tracing import Call


class InferenceServicer(pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, dataplane: DataPlane, telemetry: FrontDoor | None = None) -> None:
        self.dataplane = dataplane
        self.telemetry = telemetry or FrontDoor(dataplane.registry)
        md = dataplane.server_metadata()
        self._server_metadata = pb2.ServerMetadataResponse(
            name=md["name"], version=md["version"], extensions=md["extensions"]
        )

    def _request_id(
        self, context: grpc.aio.ServicerContext, metadata: dict[str, str] | None = None
    ) -> tuple[tuple[str, str], ...]:
        """Every answer carries x-request-id (trailing metadata): the client's, or a new one."""
        rid = (metadata if metadata is not None else _metadata(context)).get(tracing.REQUEST_ID)
        pairs = ((tracing.REQUEST_ID, rid or self.telemetry.ids.new()),)
        context.set_trailing_metadata(pairs)
        return pairs

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._request_id(context)
        return pb2.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._request_id(context)
        return pb2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._request_id(context)
        return self._server_metadata

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = _metadata(context)
        pairs = self._request_id(context, metadata)
        try:
            kind, name = parse_target(request.name, _seldon_model(metadata))
            if kind == PIPELINE:
                ready = self.dataplane.pipeline_ready(name)
            else:
                ready = self.dataplane.model_ready(name, request.version or None)
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message, trailing_metadata=pairs)
        return pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        pairs = self._request_id(context)
        try:
            md = self.dataplane.model_metadata(request.name, request.version or None)
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message, trailing_metadata=pairs)
        tensor = pb2.ModelMetadataResponse.TensorMetadata
        return pb2.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[tensor(**t) for t in md["inputs"]],
            outputs=[tensor(**t) for t in md["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        metadata = _metadata(context)
        telemetry = self.telemetry
        kind, name = MODEL, request.model_name
        traceparent, tracestate = metadata.get(tracing.TRACEPARENT), metadata.get(tracing.TRACESTATE)
        try:
            kind, name = parse_target(request.model_name, _seldon_model(metadata))
        except HeadraceError as exc:
            call = telemetry.call(metadata.get(tracing.REQUEST_ID), traceparent, tracestate, name)
            await self._fail(context, call, kind, name, started, exc)
        if kind != MODEL:
            return await self._infer_kafka(request, context, metadata, kind, name, started)
        call = telemetry.call(metadata.get(tracing.REQUEST_ID), traceparent, tracestate, name)
        current_request.set(call)
        try:
            req = grpc_codec.decode_request(request)
            pending = self.dataplane.infer(req)
            result = pending if isinstance(pending, InferResult) else await pending
        except HeadraceError as exc:
            await self._fail(context, call, kind, name, started, exc)
        try:
            response = grpc_codec.encode_response(result.response, req)
        except HeadraceError as exc:
            await self._fail(context, call, kind, name, started, exc)
        finally:
            result.release()
        telemetry.model_done(
            call, name, GRPC, GRPC_OK, started, result.served_by, result.response.model_version
        )
        context.set_trailing_metadata(telemetry.answer_headers(call))
        return response

    async def _infer_kafka(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        metadata: dict[str, str],
        kind: str,
        name: str,
        started: float,
    ) -> Any:
        telemetry = self.telemetry
        traceparent, tracestate = metadata.get(tracing.TRACEPARENT), metadata.get(tracing.TRACESTATE)
        call = None
        try:
            request.model_name = name
            req = grpc_codec.decode_request(request)
            # a pipeline's record key takes the body's id first, as the gateway does
            call = telemetry.call(req.id or metadata.get(tracing.REQUEST_ID), traceparent, tracestate, name)
            current_request.set(call)
            headers = [
                (k, v.encode())
                for k, v in metadata.items()
                if k.startswith("x-") and k != "x-seldon-route" and k != tracing.REQUEST_ID
            ]
            headers.append((tracing.REQUEST_ID, call.request_id.encode()))
            headers += tracing.trace_headers(call)
            response, key = await self.dataplane.infer_kafka(kind, name, req, headers)
            call.key = key
            out = grpc_codec.encode_response(response, req)
        except HeadraceError as exc:
            if call is None:
                call = telemetry.call(metadata.get(tracing.REQUEST_ID), traceparent, tracestate, name)
            await self._fail(context, call, kind, name, started, exc)
        telemetry.pipeline_done(call, name, GRPC, GRPC_OK, started)
        # Seldon sends the request id in the header metadata
        await context.send_initial_metadata(telemetry.answer_headers(call))
        return out

    async def _fail(
        self,
        context: grpc.aio.ServicerContext,
        call: Call,
        kind: str,
        name: str,
        started: float,
        exc: HeadraceError,
    ) -> None:
        """Answer with the error (request id and trace context in the trailing metadata); never returns."""
        code = grpc_code(exc.kind)
        if kind == MODEL:
            self.telemetry.model_done(call, name, GRPC, GRPC_CODE_NAMES[code], started, None, None, exc)
        else:
            kafka = self.dataplane.kafka
            known = kind != PIPELINE or (kafka is not None and kafka.pipeline_known(name))
            self.telemetry.pipeline_done(call, name, GRPC, GRPC_CODE_NAMES[code], started, exc, known)
        await context.abort(code, exc.message, trailing_metadata=tuple(self.telemetry.answer_headers(call)))


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def _seldon_model(metadata: dict[str, str]) -> str | None:
    return metadata.get("seldon-internal-model") or metadata.get("seldon-model")


def make_server(
    dataplane: DataPlane, address: str, max_message_bytes: int, telemetry: FrontDoor | None = None
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane, telemetry), server)
    server.add_insecure_port(address)
    return server

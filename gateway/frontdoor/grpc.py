"""OIP gRPC service (inference.GRPCInferenceService) on grpcio aio, over the shared data plane."""

from __future__ import annotations

from typing import Any

import grpc

from headrace.config.errors import HeadraceError
from headrace.gateway.dataplane import MODEL, PIPELINE, DataPlane, parse_target
from headrace.gateway.errors import grpc_code
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2, pb2_grpc
from headrace.gateway.runtime.client import InferResult


class InferenceServicer(pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        md = dataplane.server_metadata()
        self._server_metadata = pb2.ServerMetadataResponse(
            name=md["name"], version=md["version"], extensions=md["extensions"]
        )

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb2.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._server_metadata

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            kind, name = parse_target(request.name, _seldon_model(_metadata(context)))
            if kind == PIPELINE:
                ready = self.dataplane.pipeline_ready(name)
            else:
                ready = self.dataplane.model_ready(name, request.version or None)
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message)
        return pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            md = self.dataplane.model_metadata(request.name, request.version or None)
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message)
        tensor = pb2.ModelMetadataResponse.TensorMetadata
        return pb2.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[tensor(**t) for t in md["inputs"]],
            outputs=[tensor(**t) for t in md["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = _metadata(context)
        try:
            kind, name = parse_target(request.model_name, _seldon_model(metadata))
            if kind != MODEL:
                request.model_name = name
                req = grpc_codec.decode_request(request)
                headers = [
                    (k, v.encode())
                    for k, v in metadata.items()
                    if k.startswith("x-") and k != "x-seldon-route"
                ]
                response, key = await self.dataplane.infer_kafka(kind, name, req, headers)
                await context.send_initial_metadata((("x-request-id", key),))
                return grpc_codec.encode_response(response, req)
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message)
        try:
            req = grpc_codec.decode_request(request)
            pending = self.dataplane.infer(req)
            result = pending if isinstance(pending, InferResult) else await pending
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message)
        try:
            return grpc_codec.encode_response(result.response, req)
        except HeadraceError as exc:
            await context.abort(grpc_code(exc.kind), exc.message)
        finally:
            result.release()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def _seldon_model(metadata: dict[str, str]) -> str | None:
    return metadata.get("seldon-internal-model") or metadata.get("seldon-model")


def make_server(dataplane: DataPlane, address: str, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
    server.add_insecure_port(address)
    return server

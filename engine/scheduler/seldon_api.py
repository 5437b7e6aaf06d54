"""Seldon Core 2's gRPC scheduler service (seldon.mlops.scheduler.Scheduler) over the scheduler state.

What the `seldon` CLI calls: load, unload and status of models and pipelines, server status and the
scheduler's version. Status RPCs stream the current status of the one named, or of every one, and
end (the CLI reads one message, or reads to the end for a list). Experiments answer UNIMPLEMENTED.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn, TypeVar

import grpc

from headrace.config.errors import HeadraceError
from headrace.engine.scheduler import seldon_convert as convert
from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.seldon import scheduler_pb2 as pb
from headrace.engine.scheduler.seldon import scheduler_pb2_grpc as pb_grpc
from headrace.engine.scheduler.state import SchedulerState
from headrace.gateway.errors import grpc_code

log = logging.getLogger("headrace.scheduler")

EXPERIMENTS_UNSUPPORTED = "experiments are not supported by headrace yet"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # as the JSON control API's body limit
THREADS = 8  # control-plane calls are short; the CLI opens one connection per command

T = TypeVar("T")


def _abort(context: grpc.ServicerContext, exc: HeadraceError) -> NoReturn:
    context.abort(grpc_code(exc.kind), exc.message)
    raise AssertionError("unreachable: abort raises")


def _call(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    """Run ``fn``; a HeadraceError becomes the gRPC status of its kind with its message."""
    try:
        return fn()
    except HeadraceError as exc:
        _abort(context, exc)


def _application_version() -> str:
    try:
        return f"headrace {version('headrace')}"
    except PackageNotFoundError:
        return "headrace"


class SeldonScheduler(pb_grpc.SchedulerServicer):
    """The servicer; every call goes straight to the (thread-safe) scheduler state."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    # ---------------------------------------------------------------------------------- models

    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext) -> pb.LoadModelResponse:
        def load() -> None:
            manifest = convert.model_manifest(request.model)
            [status] = self.state.load([manifest])
            log.info("seldon API: model %s loaded (%s)", manifest.name, status.state)

        _call(context, load)
        return pb.LoadModelResponse()

    def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.ServicerContext
    ) -> pb.UnloadModelResponse:
        _call(context, lambda: self.state.unload(request.model.name))
        return pb.UnloadModelResponse()

    def ModelStatus(
        self, request: pb.ModelStatusRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStatusResponse]:
        name = request.model.name if request.HasField("model") else None
        for manifest, status in _call(context, lambda: self.state.model_snapshot(name)):
            yield convert.model_status_response(status, manifest)

    # ------------------------------------------------------------------------------- pipelines

    def LoadPipeline(
        self, request: pb.LoadPipelineRequest, context: grpc.ServicerContext
    ) -> pb.LoadPipelineResponse:
        def load() -> None:
            doc = convert.pipeline_manifest(request.pipeline)
            [status] = self.state.load_pipelines([doc])
            log.info("seldon API: pipeline %s loaded (%s)", status.name, status.state)

        _call(context, load)
        return pb.LoadPipelineResponse()

    def UnloadPipeline(
        self, request: pb.UnloadPipelineRequest, context: grpc.ServicerContext
    ) -> pb.UnloadPipelineResponse:
        _call(context, lambda: self.state.unload_pipeline(request.name))
        return pb.UnloadPipelineResponse()

    def PipelineStatus(
        self, request: pb.PipelineStatusRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PipelineStatusResponse]:
        name = request.name if request.HasField("name") else None
        for manifest, status in _call(context, lambda: self.state.pipeline_snapshot(name)):
            yield convert.pipeline_status_response(status, manifest)

    # --------------------------------------------------------------------------------- servers

    def ServerStatus(
        self, request: pb.ServerStatusRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ServerStatusResponse]:
        def statuses() -> list[st.ServerStatus]:
            if request.HasField("name"):
                return [self.state.server_status(request.name)]
            return self.state.server_statuses()

        for status in _call(context, statuses):
            yield convert.server_status_response(status)

    def SchedulerStatus(
        self, request: pb.SchedulerStatusRequest, context: grpc.ServicerContext
    ) -> pb.SchedulerStatusResponse:
        return pb.SchedulerStatusResponse(applicationVersion=_application_version())

    # ----------------------------------------------------------------------------- experiments

    def _no_experiments(self, context: grpc.ServicerContext) -> NoReturn:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, EXPERIMENTS_UNSUPPORTED)
        raise AssertionError("unreachable: abort raises")

    def StartExperiment(self, request: Any, context: grpc.ServicerContext) -> NoReturn:
        self._no_experiments(context)

    def StopExperiment(self, request: Any, context: grpc.ServicerContext) -> NoReturn:
        self._no_experiments(context)

    def ExperimentStatus(self, request: Any, context: grpc.ServicerContext) -> NoReturn:
        self._no_experiments(context)


class SeldonApiServer:
    """The gRPC server on a unix socket (``path``); the control port's multiplexer feeds it."""

    def __init__(self, state: SchedulerState, path: str) -> None:
        self.path = path
        self.target = f"unix:{path}"
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="seldon-api"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        servicer = SeldonScheduler(state)
        pb_grpc.add_SchedulerServicer_to_server(servicer, self._server)  # type: ignore[no-untyped-call]

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a scheduler that was killed
        self._server.add_insecure_port(self.target)
        self._server.start()

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait(grace + 1.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

"""Transport-neutral OIP handlers shared by REST and gRPC: health, metadata, readiness, inference."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from headrace import __version__
from headrace.config.errors import ErrorKind, HeadraceError, NotFoundError, NotServedError
from headrace.gateway.control import ModelRoute, TensorSpec
from headrace.gateway.oip.types import InferRequest, InferResponse
from headrace.gateway.registry import ModelRegistry
from headrace.gateway.runtime.client import InferResult, ServerPool

SERVER_NAME = "headrace"
# model states in which waiting cannot help: answer at once
CANNOT_SERVE = frozenset({"ModelFailed", "ScheduleFailed", "ModelTerminating", "ModelTerminated"})
EXTENSIONS = ["binary_tensor_data", "model_repository", "seldon_pipelines"]
NO_ROUTES = "no routing table yet (scheduler not reached, no cached routes)"


PIPELINE = "pipeline"
MODEL = "model"


class KafkaPath(Protocol):
    """The port the Kafka backbone (engine) implements: pipelines, and models through their topics."""

    def pipeline_known(self, name: str) -> bool: ...

    def pipeline_ready(self, name: str) -> bool: ...

    async def call_via_kafka(
        self, name: str, kind: str, request: InferRequest, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[InferResponse, str]: ...


def parse_target(
    url_model: str | None, seldon_model: str | None, url_pipeline: str | None = None
) -> tuple[str, str]:
    """(kind, name) a call addresses. As in Seldon, the ``seldon-model`` header wins over the URL:
    ``p.pipeline`` → pipeline p, ``m.model`` → model m through its Kafka topics, ``m`` → model m."""
    if seldon_model:
        name, dot, suffix = seldon_model.rpartition(".")
        if dot and suffix == PIPELINE:
            return PIPELINE, name
        if dot and suffix == MODEL:
            return "kafka-model", name
        if dot and suffix == "experiment":
            raise NotFoundError(f"experiment '{name}' not found (experiments are not supported yet)")
        return MODEL, seldon_model
    if url_pipeline is not None:
        return PIPELINE, url_pipeline
    return MODEL, url_model or ""


class DataPlane:
    def __init__(self, registry: ModelRegistry, pool: ServerPool, timeout: float) -> None:
        self.registry = registry
        self.pool = pool
        self.timeout = timeout
        self.draining = False
        self.kafka: KafkaPath | None = None
        # more conditions of readiness (e.g. the Kafka broker answers): each returns why not, or None
        self.health_checks: list[Callable[[], str | None]] = []

    # -- pipelines and the Kafka path -----------------------------------------------------------
    def _kafka(self) -> KafkaPath:
        if self.kafka is None:
            raise HeadraceError("pipelines need Kafka, which this server runs without", ErrorKind.UNAVAILABLE)
        return self.kafka

    def pipeline_ready(self, name: str) -> bool:
        kafka = self._kafka()
        self._routed()
        if not kafka.pipeline_known(name):
            raise NotFoundError(f"pipeline '{name}' not found")
        return kafka.pipeline_ready(name) and self.ready()

    async def infer_kafka(
        self, kind: str, name: str, request: InferRequest, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[InferResponse, str]:
        """A pipeline call, or a model called through its topics; returns the response and the key."""
        kafka = self._kafka()
        if not self.registry.received:
            await self._wait_routes()
        if kind == PIPELINE:
            if not kafka.pipeline_known(name):
                raise NotFoundError(f"pipeline '{name}' not found")
            return await kafka.call_via_kafka(name, PIPELINE, request, headers)
        self.route(name, None)  # unknown model: 404 before touching Kafka
        return await kafka.call_via_kafka(name, MODEL, request, headers)

    # -- health ---------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why this worker should not be sent traffic now, or None when it serves. The scheduler is
        not a condition: without it the worker serves from its last routing table."""
        if self.draining:
            return "draining"
        if not self.registry.received:
            return NO_ROUTES
        for check in self.health_checks:
            reason = check()
            if reason is not None:
                return reason
        return None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    # -- routing table --------------------------------------------------------------------------
    def _routed(self) -> None:
        """Before its first routing table a worker knows no model or pipeline, and must not say that
        one does not exist (404): it listens, and takes connections, while that table is on its way."""
        if not self.registry.received:
            raise HeadraceError(NO_ROUTES, ErrorKind.UNAVAILABLE)

    async def _wait_routes(self) -> None:
        """A call that came before the first routing table waits for it (up to the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not self.registry.received:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HeadraceError(f"{NO_ROUTES} (waited {self.timeout:g} s)", ErrorKind.UNAVAILABLE)
            await self.registry.wait_change(min(remaining, 1.0))

    # -- models ---------------------------------------------------------------------------------
    def route(self, name: str, version: str | None) -> ModelRoute:
        self._routed()
        route = self.registry.get(name)
        if route is None:
            raise NotFoundError(f"model '{name}' not found")
        if version and version != route.version:
            raise NotFoundError(f"model '{name}' version '{version}' not found (available: {route.version})")
        return route

    def model_ready(self, name: str, version: str | None) -> bool:
        route = self.route(name, version)
        if route.inline:
            entry = self.registry.inline.get(name)
            return entry is not None and entry.runtime is not None and entry.generation == route.generation
        return route.ready and bool(route.replicas)

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        route = self.route(name, version)
        return {
            "name": route.name,
            "versions": [route.version],
            "platform": route.platform,
            "inputs": [_spec(t) for t in route.inputs],
            "outputs": [_spec(t) for t in route.outputs],
        }

    def infer(self, request: InferRequest) -> InferResult | Awaitable[InferResult]:
        """Inline models answer synchronously; others return an awaitable for the server call."""
        if not self.registry.received:
            return self._infer_once_routed(request)
        route = self.route(request.model_name, request.model_version)
        if route.inline:
            return self._infer_inline(route, request)
        return self._infer_remote(route, request)

    async def _infer_once_routed(self, request: InferRequest) -> InferResult:
        await self._wait_routes()
        result = self.infer(request)
        return result if isinstance(result, InferResult) else await result

    async def _infer_remote(self, route: ModelRoute, request: InferRequest) -> InferResult:
        """Call a model server; while no replica can take the request (one restarting, a model
        reloading), wait for the routing table to change instead of failing, up to the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            if route.ready and route.replicas:
                try:
                    return await self.pool.infer(route, request)
                except NotServedError as exc:
                    last = exc.message
            elif route.state in CANNOT_SERVE:
                reason = f": {route.message}" if route.message else ""
                raise HeadraceError(
                    f"model '{route.name}' cannot serve ({route.state}{reason})", ErrorKind.UNAVAILABLE
                )
            else:
                last = f"model '{route.name}' has no ready replica ({route.state or 'loading'})"
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HeadraceError(f"{last} (waited {self.timeout:g} s)", ErrorKind.UNAVAILABLE)
            await self.registry.wait_change(min(remaining, 1.0))
            route = self.route(request.model_name, request.model_version)

    def _infer_inline(self, route: ModelRoute, request: InferRequest) -> InferResult:
        entry = self.registry.inline.get(route.name)
        if entry is None or entry.runtime is None:
            reason = entry.state.message if entry is not None else "not loaded in this worker yet"
            raise HeadraceError(f"model '{route.name}' is not ready: {reason}", ErrorKind.UNAVAILABLE)
        try:
            outputs = entry.runtime.predict(request)
        except HeadraceError:
            raise
        except Exception as exc:
            raise HeadraceError(
                f"model '{route.name}' raised {type(exc).__name__}: {exc}", ErrorKind.MODEL_ERROR
            ) from exc
        return InferResult(
            InferResponse(
                model_name=request.model_name,
                outputs=list(outputs),
                model_version=route.version,
                id=request.id,
            )
        )


def _spec(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": t.shape}

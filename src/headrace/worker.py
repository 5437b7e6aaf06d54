"""A worker process: REST and gRPC front doors on shared ports, the data plane, model-server clients."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from typing import Any

from headrace.config.gc_tuning import settle_heap
from headrace.config.logs import setup_logging
from headrace.config.settings import Settings
from headrace.engine.forwarding import ForwardClient, ForwardServer
from headrace.engine.gateways.pipeline import Reply, Target
from headrace.engine.kafka.config import admin_config
from headrace.engine.kafka.watch import BrokerWatch
from headrace.engine.node import DataNode, kafka_enabled
from headrace.engine.sampler import Sampler
from headrace.gateway.dataplane import DataPlane
from headrace.gateway.frontdoor.http import ServerState, serve_http
from headrace.gateway.frontdoor.rest import RestApp
from headrace.gateway.oip.types import InferRequest
from headrace.gateway.registry import ModelRegistry
from headrace.gateway.routewatch import RouteWatcher
from headrace.gateway.runtime.client import ServerPool
from headrace.gateway.telemetry import tracing
from headrace.gateway.telemetry.front import FrontDoor
from headrace.supervisor import report_ready

log = logging.getLogger("headrace.worker")

#: At a drain, how long idle keep-alive connections stay open for a request already on its way.
IDLE_CLOSE_GRACE_S = 0.05


async def serve(settings: Settings, index: int) -> None:
    from headrace.gateway.frontdoor.grpc import make_server

    loop = asyncio.get_running_loop()
    tracer = tracing.start_otel(
        settings.otel_endpoint, settings.otel_service_name, f"worker {index}", settings.otel_sample_ratio
    )
    registry = ModelRegistry()
    pool = ServerPool(settings, loop, index)
    dataplane = DataPlane(registry, pool, settings.model_timeout_s)
    watcher = RouteWatcher(settings, registry, loop, index)
    readiness = Readiness(dataplane)
    registry.listeners.append(readiness.check)
    node = _kafka_node(settings, loop, index, dataplane)
    broker: BrokerWatch | None = None
    if node is not None:
        # pipelines need the broker: not ready while it does not answer
        broker = BrokerWatch(admin_config(settings), loop, on_change=readiness.check)
        dataplane.health_checks.append(broker.not_ready_reason)
        broker.start()
        node_start = asyncio.ensure_future(node.start())
        dataplane.kafka = node
        registry.listeners.append(node.update)
        watcher.node_report = node.report
        node.on_change = watcher.wake
        forwards = await _forwarding(settings, loop, index, node, watcher)
    watcher.start()

    telemetry = FrontDoor(registry, index, settings.request_log_sample)
    sampler = Sampler(index, node)
    sampler.start(loop)
    state = ServerState(RestApp(dataplane, telemetry), settings.max_body_bytes, settings.keepalive_timeout_s)
    state.new_request_id = telemetry.ids.new
    http_server = await serve_http(state, settings.host, settings.http_port)
    state.start_sweeping(loop)
    grpc_server = make_server(
        dataplane, f"{settings.host}:{settings.grpc_port}", settings.max_body_bytes, telemetry
    )
    await grpc_server.start()
    log.info(
        "worker %d serving REST on %s:%d, gRPC on %d",
        index,
        settings.host,
        settings.http_port,
        settings.grpc_port,
    )
    readiness.serving()
    settle_heap()

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Leave: hand this worker's units to the others first (calls meanwhile are forwarded to them).
    if node is not None and node.started:
        node.leaving = True
        await loop.run_in_executor(None, watcher.report_now)
        await node.leave(settings.grace_period_s)
    # Drain: stop accepting, answer what is in flight, then close.
    dataplane.draining = True
    readiness.check()
    state.draining = True
    http_server.close()
    state.stop_sweeping()
    grpc_stop = asyncio.ensure_future(grpc_server.stop(settings.grace_period_s))
    # a keep-alive connection idle now may carry the client's next request already: closing it
    # then resets it under the request (a read error, seen at a worker leaving under load), so the
    # idle ones get a moment for it to arrive (it is answered with connection: close) first
    await asyncio.sleep(IDLE_CLOSE_GRACE_S)
    for conn in list(state.connections):
        conn.shutdown()
    deadline = loop.time() + settings.grace_period_s
    while (state.in_flight or state.connections) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for conn in list(state.connections):
        if conn.transport is not None:
            conn.transport.close()
    await grpc_stop
    watcher.stop()
    if broker is not None:
        broker.stop()
    if node is not None:
        node_start.cancel()
        forwards[0].close()
        forwards[1].close()
        await loop.run_in_executor(None, node.close)
    pool.close()
    sampler.stop()
    if tracer is not None:
        await loop.run_in_executor(None, tracer.shutdown)  # export the last spans
    log.info("worker %d drained", index)


class Readiness:
    """Tells the supervisor when this worker starts or stops being ready (what /v2/health/ready
    says), once its front doors listen; the supervisor tells systemd."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.listening = False
        self.last: tuple[bool, str] | None = None

    def serving(self) -> None:
        self.listening = True
        self.check()

    def check(self, *_: object) -> None:
        if not self.listening:
            return
        reason = self.dataplane.not_ready_reason()
        state = (reason is None, reason or "")
        if state != self.last:
            self.last = state
            report_ready(*state)


async def _forwarding(
    settings: Settings, loop: asyncio.AbstractEventLoop, index: int, node: DataNode, watcher: RouteWatcher
) -> tuple[ForwardServer, ForwardClient]:
    """Calls for pipelines this worker serves no partition of go to a worker that does: the server
    for those forwarded here, the client for those this worker forwards."""

    async def answer(
        target: Target, request: InferRequest, headers: list[tuple[str, Any]], timeout: float
    ) -> Reply:
        return await node.call(target, request, headers, forwarded=True, timeout=timeout)

    server = ForwardServer(loop, answer)
    port = settings.internal_port + index if settings.internal_port else 0
    path = str(settings.run_dir / f"worker-{index}.sock")
    watcher.forward = await server.start(settings.instance_id, path, settings.internal_host, port)
    client = ForwardClient(loop, settings.instance_id, lambda peer: node.table.workers.get(peer))
    node.forward = client
    return server, client


def _kafka_node(
    settings: Settings, loop: asyncio.AbstractEventLoop, index: int, dataplane: DataPlane
) -> DataNode | None:
    """The worker's Kafka roles, unless this server runs without Kafka (no pipelines then)."""
    if not kafka_enabled(settings):
        return None
    return DataNode(settings, loop, index, dataplane)


def run(settings: Settings, index: int) -> None:
    """Entry of a worker child process."""
    import uvloop

    faulthandler.enable()
    setup_logging(settings.log_level, f"worker {index}", settings.log_format)
    uvloop.run(serve(settings, index))

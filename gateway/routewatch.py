"""Keeps a worker's registry in step with the scheduler: long-polls routes, loads inline models, reports.

The last table is cached on disk so a worker restarted while the scheduler is down still serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from headrace.config.settings import Settings
from headrace.gateway import controlclient
from headrace.gateway.control import RoutingTable, WorkerAddr, WorkerReport
from headrace.gateway.registry import InlineModel, ModelRegistry
from headrace.gateway.runtime.loaders import try_load

log = logging.getLogger("headrace.routes")

APPLY_WAIT_S = 5.0  # at most this long for a busy event loop to take a new table before reporting


class RouteWatcher:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, loop: asyncio.AbstractEventLoop, index: int
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.loop = loop
        self.index = index
        self.cache = Path(settings.run_dir) / "routes.json"
        self.inline: dict[str, InlineModel] = {}
        self.version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routes", daemon=True)
        # what the worker's Kafka roles have to say (pipelines run, units held...), for the reports
        self.node_report: Callable[[], dict[str, Any]] | None = None
        self.forward: WorkerAddr | None = None  # where this worker takes forwarded calls

    def start(self) -> None:
        """Call on the event loop: serves the cached table at once, then follows the scheduler."""
        cached = self._read_cache()
        if cached is not None:
            cached = own_replicas(cached, self.settings.instance_id)
        if cached is not None:
            self.registry.update(cached, self._load_inline(cached))
            self.version = cached.version
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wake(self) -> None:
        """Something worth reporting changed: report now, not after the current long-poll."""
        threading.Thread(target=self._report_now, name="report", daemon=True).start()

    def _report_now(self) -> None:
        url = f"{self.settings.control_url}/v1/internal/workers/{self.index}/report"
        try:
            controlclient.post(url, self._report(self._node_state()))
        except controlclient.ControlUnavailableError:
            pass  # the control thread reports again on its next round

    def report_now(self) -> None:
        """Report at once, on the calling thread (e.g. a worker about to stop says it is leaving)."""
        self._report_now()

    def _node_state(self) -> dict[str, Any]:
        return self.node_report() if self.node_report is not None else {}

    def _read_cache(self) -> RoutingTable | None:
        try:
            return msgspec.json.decode(self.cache.read_bytes(), type=RoutingTable)
        except (OSError, msgspec.DecodeError):
            return None

    def _write_cache(self, table: RoutingTable) -> None:
        tmp = self.cache.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(table))
            os.replace(tmp, self.cache)
        except OSError as exc:
            log.warning("cannot cache routes: %s", exc)

    def _run(self) -> None:
        url = f"{self.settings.control_url}/v1/internal/routes"
        report_url = f"{self.settings.control_url}/v1/internal/workers/{self.index}/report"

        def step() -> None:
            try:
                table = controlclient.get(f"{url}?after={self.version}&wait=2", RoutingTable, timeout=10)
            except controlclient.ControlUnavailableError:
                # a restarted scheduler answers 503 until the workers it knew have reported: report
                controlclient.post(report_url, self._report(self._node_state()))
                raise
            if table.version != self.version or not self.registry.received:
                self._apply(table)
                self._write_cache(table)
            # every round: the scheduler counts a worker silent for a while as gone
            controlclient.post(report_url, self._report(self._node_state()))

        controlclient.follow(self._stop, step)

    def _apply(self, table: RoutingTable) -> None:
        """On the control thread: load inline models, then hand the table to the event loop."""
        table = own_replicas(table, self.settings.instance_id)
        inline = self._load_inline(table)
        applied = threading.Event()

        def update() -> None:
            try:
                self.registry.update(table, inline)
            finally:
                applied.set()

        self.loop.call_soon_threadsafe(update)
        # the report that follows says this table is in use: the event loop has to have taken it
        # (the scheduler counts a model ready once every worker reports a table with it)
        applied.wait(APPLY_WAIT_S)
        self.version = table.version

    def _load_inline(self, table: RoutingTable) -> dict[str, InlineModel]:
        inline = dict(self.inline)
        for name in list(inline):
            route = table.models.get(name)
            if route is None or not route.inline:
                del inline[name]
        for name, route in table.models.items():
            if not route.inline or route.spec is None:
                continue
            current = inline.get(name)
            if current is not None and current.generation == route.generation:
                continue
            runtime, state = try_load(route.spec)
            if runtime is None:
                log.error("inline load of %s failed: %s", name, state.message)
            inline[name] = InlineModel(route.generation, runtime, state)
        self.inline = inline
        return inline

    def _report(self, node: dict[str, Any]) -> WorkerReport:
        return WorkerReport(
            index=self.index,
            pid=os.getpid(),
            routes_version=self.version,
            instance=self.settings.instance_id,
            inline=[m.state for m in self.inline.values()],
            forward=self.forward,
            **node,
        )


def own_replicas(table: RoutingTable, instance: str) -> RoutingTable:
    """The table as this instance's workers use it: each model's replicas on this instance only (a
    worker calls its own instance's model servers), ready when one of them has the model."""
    models = {}
    for name, route in table.models.items():
        mine = [r for r in route.replicas if r.instance in ("", instance)]
        if len(mine) != len(route.replicas):
            route = msgspec.structs.replace(route, replicas=mine, ready=bool(mine) or route.inline)
        models[name] = route
    return msgspec.structs.replace(table, models=models)

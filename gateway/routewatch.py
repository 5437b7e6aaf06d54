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

import msgspec

from headrace.config.settings import Settings
from headrace.gateway import controlclient
from headrace.gateway.control import RoutingTable, WorkerReport
from headrace.gateway.registry import InlineModel, ModelRegistry
from headrace.gateway.runtime.loaders import try_load

log = logging.getLogger("headrace.routes")


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
        # what this worker runs of the pipelines (set by the Kafka node), for the reports
        self.pipelines: Callable[[], tuple[dict[str, int], dict[str, str]]] | None = None
        self._reported_pipelines: tuple[dict[str, int], dict[str, str]] = ({}, {})

    def start(self) -> None:
        """Call on the event loop: serves the cached table at once, then follows the scheduler."""
        cached = self._read_cache()
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
        pipelines = self.pipelines() if self.pipelines is not None else ({}, {})
        url = f"{self.settings.control_url}/v1/internal/workers/{self.index}/report"
        try:
            controlclient.post(url, self._report(pipelines))
        except controlclient.ControlUnavailableError:
            pass  # the control thread reports again on its next round

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
        reported = -1

        def step() -> None:
            nonlocal reported
            table = controlclient.get(f"{url}?after={self.version}&wait=2", RoutingTable, timeout=10)
            if table.version != self.version or not self.registry.received:
                self._apply(table)
                self._write_cache(table)
            pipelines = self.pipelines() if self.pipelines is not None else ({}, {})
            if reported != self.version or self.inline or pipelines != self._reported_pipelines:
                controlclient.post(report_url, self._report(pipelines))
                reported = self.version
                self._reported_pipelines = pipelines

        controlclient.follow(self._stop, step)

    def _apply(self, table: RoutingTable) -> None:
        """On the control thread: load inline models, then hand the table to the event loop."""
        inline = self._load_inline(table)
        self.version = table.version
        self.loop.call_soon_threadsafe(self.registry.update, table, inline)

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

    def _report(self, pipelines: tuple[dict[str, int], dict[str, str]]) -> WorkerReport:
        return WorkerReport(
            index=self.index,
            pid=os.getpid(),
            routes_version=self.version,
            inline=[m.state for m in self.inline.values()],
            pipelines=pipelines[0],
            pipeline_errors=pipelines[1],
        )

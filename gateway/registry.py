"""The worker's view of models: the scheduler's routing table plus models loaded inline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from headrace.gateway.control import LoadedModel, ModelRoute, RoutingTable
from headrace.gateway.runtime.loaders import LoadedRuntime

log = logging.getLogger("headrace.registry")


@dataclass(slots=True)
class InlineModel:
    generation: int
    runtime: LoadedRuntime | None
    state: LoadedModel


class ModelRegistry:
    """Replaced whole on every routing update (on the event loop); lookups are dict reads."""

    def __init__(self) -> None:
        self.table = RoutingTable()
        self.received = False
        self.inline: dict[str, InlineModel] = {}
        self._changed: asyncio.Future[None] | None = None
        self.listeners: list[Callable[[RoutingTable], None]] = []

    def update(self, table: RoutingTable, inline: dict[str, InlineModel]) -> None:
        self.table = table
        self.inline = inline
        self.received = True
        for listener in self.listeners:
            listener(table)
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def wait_change(self, timeout: float) -> None:
        """Wait until the next routing update (or the timeout)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)
        except TimeoutError:
            pass

    def get(self, name: str) -> ModelRoute | None:
        return self.table.models.get(name)

"""The worker's view of models: the scheduler's routing table plus models loaded inline."""

from __future__ import annotations

import logging
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

    def update(self, table: RoutingTable, inline: dict[str, InlineModel]) -> None:
        self.table = table
        self.inline = inline
        self.received = True

    def get(self, name: str) -> ModelRoute | None:
        return self.table.models.get(name)

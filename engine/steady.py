"""Steady paths: the partitions of a pipeline with no unit of its path in motion, and their owners."""

from __future__ import annotations

from collections.abc import Iterable

from headrace.engine.sharding import MODEL_GATEWAY, PIPELINE
from headrace.gateway.control import RoutingTable


def steady_paths(table: RoutingTable, pipeline: str, slots: Iterable[int], me: str = "") -> dict[int, str]:
    """partition -> the worker serving the pipeline there, for the partitions on which the
    pipeline's unit and its steps' model-gateway units (the ``slots``) are all served by their
    owners with no other worker holding them and none about to move (``soon``). A call written to
    another partition waits for a handover on its path. Units owned by ``me`` count as served when
    no other worker holds them: the caller knows which of its own it serves before the table says
    so."""
    slots = tuple(slots)
    prefix = f"{PIPELINE}:{pipeline}:"
    out: dict[int, str] = {}
    for key, route in table.units.items():
        if not key.startswith(prefix):
            continue
        mine = route.owner == me and not route.waiting and not route.soon
        if not (mine or _steady(table, key)):
            continue
        partition = key[len(prefix) :]
        if partition.isdigit() and all(
            _steady(table, f"{MODEL_GATEWAY}:{slot}:{partition}") for slot in slots
        ):
            out[int(partition)] = route.owner
    return out


def _steady(table: RoutingTable, key: str) -> bool:
    route = table.units.get(key)
    return (
        route is not None
        and route.active
        and not route.waiting
        and not route.soon
        and route.owner in table.workers
    )

"""Steady paths: a pipeline's partitions whose own unit and steps' model-gateway units are all served
by their owners, with nobody else holding them (where new calls go during a rebalance)."""

from __future__ import annotations

import pytest

from headrace.engine.steady import steady_paths
from headrace.gateway.control import RoutingTable, UnitRoute, WorkerAddr

pytestmark = pytest.mark.timeout(10)

WORKERS = {"i/0": WorkerAddr(instance="i"), "i/1": WorkerAddr(instance="i")}


def _table(units: dict[str, UnitRoute]) -> RoutingTable:
    return RoutingTable(units=units, workers=WORKERS)


def _served(owner: str) -> UnitRoute:
    return UnitRoute(owner=owner, active=True)


def test_partitions_with_a_unit_in_motion_on_their_path_are_left_out() -> None:
    table = _table(
        {
            "pipeline:demo:0": _served("i/0"),
            "pipeline:demo:1": _served("i/1"),
            "pipeline:demo:2": UnitRoute(owner="i/1", waiting=["i/0"]),  # the pipeline's unit moves
            "pipeline:demo:3": _served("i/0"),
            "modelgw:7:0": _served("i/1"),  # served elsewhere: steady all the same
            "modelgw:7:1": _served("i/1"),
            "modelgw:7:2": _served("i/1"),
            "modelgw:7:3": UnitRoute(owner="i/0"),  # taken, not yet served: a step's unit moves
            "modelgw:9:0": _served("i/0"),
            "modelgw:9:1": _served("i/0"),
            "modelgw:9:2": _served("i/0"),
            "modelgw:9:3": _served("i/0"),
        }
    )
    assert steady_paths(table, "demo", [7, 9]) == {0: "i/0", 1: "i/1"}
    # a slot the pipeline does not use does not count
    assert steady_paths(table, "demo", [9]) == {0: "i/0", 1: "i/1", 3: "i/0"}


def test_a_unit_whose_owner_is_not_a_known_worker_is_not_steady() -> None:
    table = _table({"pipeline:demo:0": _served("gone/0"), "pipeline:demo:1": _served("i/1")})
    assert steady_paths(table, "demo", []) == {1: "i/1"}
    assert steady_paths(table, "other", []) == {}


def test_the_callers_own_units_count_before_the_table_says_they_are_served() -> None:
    # the worker serves its unit (it only calls for partitions it holds active); the scheduler has
    # not had its report yet. Another worker still holding it is waited for all the same.
    table = _table(
        {
            "pipeline:demo:0": UnitRoute(owner="i/0"),
            "pipeline:demo:1": UnitRoute(owner="i/0", waiting=["i/1"]),
            "pipeline:demo:2": UnitRoute(owner="i/1"),
        }
    )
    assert steady_paths(table, "demo", [], me="i/0") == {0: "i/0"}
    assert steady_paths(table, "demo", []) == {}


def test_a_partition_whose_units_are_about_to_move_is_left_out() -> None:
    # its turn to move is announced: still served where it is, but new calls go elsewhere first,
    # whether the unit about to move is the pipeline's own (the caller's too) or a step's
    table = _table(
        {
            "pipeline:demo:0": UnitRoute(owner="i/0", active=True, soon=True),
            "pipeline:demo:1": _served("i/0"),
            "pipeline:demo:2": _served("i/0"),
            "modelgw:7:0": _served("i/0"),
            "modelgw:7:1": UnitRoute(owner="i/0", active=True, soon=True),
            "modelgw:7:2": _served("i/0"),
        }
    )
    assert steady_paths(table, "demo", [7], me="i/0") == {2: "i/0"}

"""The scheduler's book of units: a unit's owner waits for every other worker holding it (a taking one
too), and starts from the latest handover of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.engine.ownership import ACTIVE, TAKING, Held, Holdings
from headrace.engine.scheduler.store import Store
from headrace.engine.scheduler.units import ANNOUNCE_S, UnitBook
from headrace.engine.sharding import PIPELINE, ShardingConfig, Unit
from headrace.gateway.control import Handover

pytestmark = pytest.mark.timeout(10)

TOPIC = "seldon.default.model.echo.outputs"


@pytest.fixture
def book(tmp_path: Path) -> UnitBook:
    book = UnitBook(Store(tmp_path / "s.db"), ShardingConfig(partitions=2, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    return book


def test_a_worker_still_taking_a_unit_that_moved_is_waited_for(book: UnitBook) -> None:
    unit = str(Unit(PIPELINE, "demo", 0))
    assert book.target[Unit.parse(unit)] == "w1"
    # w2 was given the unit before and is still taking it (it may be handling its records already)
    holdings = Holdings()
    holdings.add(Held(Unit.parse(unit), "g", state=TAKING))
    route = book.routes({"w2": holdings.report()})[unit]
    assert route.owner == "w1" and route.waiting == ["w2"] and not route.active
    # once w2 lets it go, w1 takes it; once w1 serves it, the route says so
    assert book.routes({"w2": {}})[unit].waiting == []
    assert book.routes({"w1": {unit: ACTIVE}})[unit].active


def test_the_latest_handover_says_where_to_start_and_what_to_handle_again(book: UnitBook) -> None:
    unit = str(Unit(PIPELINE, "demo", 1))
    # w3 took the unit from w2's handover (generation 1), handled the record at offset 4 that w2 had
    # left in a join, and handed it over again before w1 (its owner now) took it up
    first = Handover(starts=[(TOPIC, 1, 10)], replay=[(TOPIC, 1, 4), (TOPIC, 1, 6)], generation=1)
    second = Handover(starts=[(TOPIC, 1, 17)], replay=[(TOPIC, 1, 6), (TOPIC, 1, 15)], generation=2)
    either_order = ({"w2": {unit: first}, "w3": {unit: second}}, {"w3": {unit: second}, "w2": {unit: first}})
    for released in either_order:
        route = book.routes({}, released)[unit]
        assert route.starts == [(TOPIC, 1, 17)]
        assert route.replay == [(TOPIC, 1, 6), (TOPIC, 1, 15)]  # not 4: w3 handled it
        assert route.generation == 2
    # two handovers of the same generation (two workers let the unit go): both lists count
    other = Handover(starts=[(TOPIC, 1, 12)], replay=[(TOPIC, 1, 11)], generation=1)
    route = book.routes({}, {"w2": {unit: first}, "w4": {unit: other}})[unit]
    assert route.starts == [(TOPIC, 1, 12)]
    assert route.replay == [(TOPIC, 1, 4), (TOPIC, 1, 6), (TOPIC, 1, 11)]


def _all_on(partitions: range, state: str = ACTIVE) -> dict[str, str]:
    return {str(Unit(PIPELINE, "demo", p)): state for p in partitions}


def test_half_the_partitions_move_at_a_time_so_the_rest_keep_serving(tmp_path: Path) -> None:
    book = UnitBook(Store(tmp_path / "s.db"), ShardingConfig(partitions=8, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    held = {"w1": _all_on(range(8))}
    assert book.replan(["w2"], ["demo"], [])  # every unit's target is now w2
    routes = book.routes(held)
    moving = sorted(p for p in range(8) if routes[str(Unit(PIPELINE, "demo", p))].owner == "w2")
    assert moving == [0, 1, 2, 3]
    for p in range(4):  # the first half: w2 waits for w1 to drain them
        assert routes[str(Unit(PIPELINE, "demo", p))].waiting == ["w1"]
    for p in range(4, 8):  # the rest stay with w1 and say it serves them
        route = routes[str(Unit(PIPELINE, "demo", p))]
        assert route.owner == "w1" and route.active and route.waiting == []
    assert book.deferred == 4
    # w1 drains the first half: still in motion, nothing more starts
    held = {"w1": {**_all_on(range(4), "draining"), **_all_on(range(4, 8))}}
    routes = book.routes(held)
    assert [routes[str(Unit(PIPELINE, "demo", p))].owner for p in range(8)] == ["w2"] * 4 + ["w1"] * 4
    # released, and w2 serves them: the second half moves
    held = {"w1": _all_on(range(4, 8)), "w2": _all_on(range(4))}
    routes = book.routes(held)
    for p in range(4, 8):
        route = routes[str(Unit(PIPELINE, "demo", p))]
        assert route.owner == "w2" and route.waiting == ["w1"]
    assert book.deferred == 0


def test_a_leaving_workers_units_all_move_at_once(tmp_path: Path) -> None:
    book = UnitBook(Store(tmp_path / "s.db"), ShardingConfig(partitions=8, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    assert book.replan(["w2"], ["demo"], [])
    routes = book.routes({"w1": _all_on(range(8))}, leaving=frozenset({"w1"}))
    assert all(routes[str(Unit(PIPELINE, "demo", p))].owner == "w2" for p in range(8))
    assert book.deferred == 0


def test_a_move_under_way_goes_on_whatever_its_partition(tmp_path: Path) -> None:
    book = UnitBook(Store(tmp_path / "s.db"), ShardingConfig(partitions=8, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    assert book.replan(["w2"], ["demo"], [])
    # a scheduler restarted in the middle: w1 drains the units of partitions 6 and 7 already
    held = {"w1": {**_all_on(range(6)), **_all_on(range(6, 8), "draining")}}
    routes = book.routes(held)
    owners = [routes[str(Unit(PIPELINE, "demo", p))].owner for p in range(8)]
    assert owners[6:] == ["w2", "w2"]  # never handed back to a worker letting them go
    assert owners.count("w2") == 4  # topped up to half the partitions, lowest first
    assert owners[:2] == ["w2", "w2"]


def test_units_of_at_most_half_the_partitions_move_at_once(tmp_path: Path) -> None:
    book = UnitBook(Store(tmp_path / "s.db"), ShardingConfig(partitions=8, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    assert book.replan(["w2"], ["demo"], [])
    # w2 serves five partitions already (as after a join): the other three all move now
    routes = book.routes({"w1": _all_on(range(3)), "w2": _all_on(range(3, 8))})
    assert [p for p in range(8) if routes[str(Unit(PIPELINE, "demo", p))].waiting] == [0, 1, 2]
    assert book.deferred == 0


def test_a_partitions_turn_to_move_is_announced_before_its_units_move(tmp_path: Path) -> None:
    book = UnitBook(Store(tmp_path / "s.db"), ShardingConfig(partitions=8, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    assert book.replan(["w2"], ["demo"], [])
    held = {"w1": _all_on(range(8))}
    routes = book.routes(held, now=50.0)
    # the first half's turn is announced: still w1's, said to move soon, for ANNOUNCE_S
    for p in range(8):
        route = routes[str(Unit(PIPELINE, "demo", p))]
        assert route.owner == "w1" and route.active and route.soon == (p < 4)
    assert book.due == 50.0 + ANNOUNCE_S
    assert not any(r.waiting for r in book.routes(held, now=50.0 + ANNOUNCE_S / 2).values())
    routes = book.routes(held, now=50.0 + ANNOUNCE_S)
    for p in range(8):
        route = routes[str(Unit(PIPELINE, "demo", p))]
        assert (route.owner, route.soon) == (("w2", False) if p < 4 else ("w1", False))
    assert book.due is None
    # w2 serves the first half: the second half's turn is announced in turn, then it moves
    held = {"w1": _all_on(range(4, 8)), "w2": _all_on(range(4))}
    routes = book.routes(held, now=60.0)
    assert [p for p in range(8) if routes[str(Unit(PIPELINE, "demo", p))].soon] == [4, 5, 6, 7]
    routes = book.routes(held, now=60.0 + ANNOUNCE_S)
    assert all(routes[str(Unit(PIPELINE, "demo", p))].owner == "w2" for p in range(8))
    # a leaving worker's units are announced all at once (not half at a time), then all move
    book = UnitBook(Store(tmp_path / "t.db"), ShardingConfig(partitions=8, multiplier=1))
    assert book.replan(["w1"], ["demo"], [])
    assert book.replan(["w2"], ["demo"], [])
    held, leaving = {"w1": _all_on(range(8))}, frozenset({"w1"})
    routes = book.routes(held, leaving=leaving, now=70.0)
    assert all(r.owner == "w1" and r.soon for r in routes.values())
    routes = book.routes(held, leaving=leaving, now=70.0 + ANNOUNCE_S)
    assert all(r.owner == "w2" and r.waiting == ["w1"] and not r.soon for r in routes.values())

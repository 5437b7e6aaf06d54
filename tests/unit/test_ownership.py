"""Which records a held unit handles: Kafka copies by offset (start, replay, fence), in-memory ones only
while active."""

from __future__ import annotations

import pytest

from headrace.engine.ownership import ACTIVE, DRAINING, TAKING, Held, Holdings
from headrace.engine.sharding import PIPELINE, Unit

pytestmark = pytest.mark.timeout(10)

TP = ("seldon.default.model.echo.outputs", 3)


def held(state: str) -> Held:
    h = Held(Unit(PIPELINE, "demo", 3), "g", state=state)
    h.reads = {TP: 10}
    return h


def test_only_an_active_unit_takes_records_handed_over_in_memory() -> None:
    assert held(ACTIVE).takes_local()
    assert not held(TAKING).takes_local()
    # a draining unit's records come from Kafka, even before its fence is known: one written while
    # the fence is being taken may land past it, and then it is the next owner's
    assert not held(DRAINING).takes_local()


def test_kafka_copies_are_taken_once_from_the_start_and_below_the_fence() -> None:
    h = held(DRAINING)
    h.replay = {(TP[0], TP[1], 7)}
    h.fence = {TP: 12}
    assert not h.takes(TP, 9)  # before where it starts
    assert h.takes(TP, 7)  # ... unless its last owner asked for it again
    assert not h.takes(TP, 7)  # once
    assert h.takes(TP, 10) and h.takes(TP, 11)
    assert not h.takes(TP, 10)  # seen
    assert not h.takes(TP, 12)  # the next owner's
    assert not h.takes(("other", 3), 10)


def test_a_unit_that_handled_a_record_while_taking_it_is_marked_for_a_handover() -> None:
    h = held(TAKING)
    assert not h.touched
    assert not h.takes(TP, 9)
    assert not h.touched  # skipping a record handles nothing
    assert h.takes(TP, 10)
    assert h.touched
    replayed = held(TAKING)
    replayed.replay = {(TP[0], TP[1], 4)}
    assert replayed.takes(TP, 4) and replayed.touched


def test_a_unit_taken_where_the_consumer_read_past_its_start_skips_nothing() -> None:
    # another unit here had read the partition to 12 when this one was taken from 10 (its last owner's
    # fence): copies of 10 and 11 went by before it existed, a copy of 12 is still on its way, and the
    # rewind delivers 10, 11, 12 again. Taking that first 12 would have skipped 10 and 11 for good.
    h = held(TAKING)
    h.positioning = {TP}
    assert not h.takes(TP, 12)  # an old copy, from before the consumer applied the rewind
    h.positioned([TP])
    assert [o for o in (10, 11, 12) if h.takes(TP, o)] == [10, 11, 12]
    assert h.reads[TP] == 13


def test_the_report_names_units_being_taken_too() -> None:
    holdings = Holdings()
    for partition, state in enumerate((TAKING, ACTIVE, DRAINING)):
        holdings.add(Held(Unit(PIPELINE, "demo", partition), "g", state=state))
    expected = {"pipeline:demo:0": TAKING, "pipeline:demo:1": ACTIVE, "pipeline:demo:2": DRAINING}
    assert holdings.report() == expected


def test_the_fence_is_past_every_record_handled_while_it_was_being_taken() -> None:
    h = held(DRAINING)
    assert h.takes(TP, 10)
    # the broker said the end was 11, then record 11 landed and was handled here before that answer
    # arrived: its next owner starts after it
    assert h.takes(TP, 11)
    h.fence_at({TP: 11, ("other", 3): 5})
    assert h.fence == {TP: 12, ("other", 3): 5}
    assert not h.takes(TP, 12)

"""Offsets are committed only up to the lowest record still in flight, whatever the finishing order."""

from __future__ import annotations

import random

from headrace.engine.backbone.offsets import OffsetTracker

TP = ("seldon.default.model.m.inputs", 3)


def test_in_order_completion_commits_past_each_record() -> None:
    tr = OffsetTracker()
    for o in (10, 11, 12):
        tr.begin(TP, o)
    tr.done(TP, 10)
    assert tr.to_commit() == [(TP[0], TP[1], 11)]
    tr.done(TP, 11)
    tr.done(TP, 12)
    assert tr.to_commit() == [(TP[0], TP[1], 13)]
    assert tr.to_commit() == []  # nothing moved since


def test_a_slow_record_holds_the_commit_point_back() -> None:
    tr = OffsetTracker()
    for o in (0, 1, 2, 3):
        tr.begin(TP, o)
    tr.done(TP, 1)
    tr.done(TP, 3)
    assert tr.to_commit() == []  # 0 is still in flight: a crash now must replay it
    assert tr.in_flight(TP) == 2
    tr.done(TP, 0)
    assert tr.to_commit() == [(TP[0], TP[1], 2)]  # 2 still in flight
    tr.done(TP, 2)
    assert tr.to_commit() == [(TP[0], TP[1], 4)]


def test_random_orders_never_commit_an_unfinished_record() -> None:
    rng = random.Random(5)
    for _ in range(200):
        tr = OffsetTracker()
        offsets = list(range(rng.randint(1, 30)))
        for o in offsets:
            tr.begin(TP, o)
        finished: set[int] = set()
        order = offsets[:]
        rng.shuffle(order)
        for o in order:
            tr.done(TP, o)
            finished.add(o)
            for _, _, commit in tr.to_commit():
                assert all(x in finished for x in range(commit))  # everything below is done
        assert tr.in_flight(TP) == 0


def test_partitions_are_independent() -> None:
    tr = OffsetTracker()
    other = (TP[0], 4)
    tr.begin(TP, 0)
    tr.begin(other, 7)
    tr.done(other, 7)
    assert tr.to_commit() == [(other[0], other[1], 8)]

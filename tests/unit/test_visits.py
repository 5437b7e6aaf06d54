"""Visit counts carried in a record header for cyclic pipelines."""

from __future__ import annotations

import pytest

from headrace.engine.dataflow.visits import VISITS_HEADER, enter, visits

pytestmark = pytest.mark.timeout(10)


def test_entering_counts_per_step_and_keeps_other_headers() -> None:
    headers = [("headrace-hop", b"1:2"), ("pipeline", b"p")]
    rnd, before, headers = enter(headers, "counter")
    assert (rnd, before) == (0, 0) and visits(headers, "counter") == 1
    rnd, before, headers = enter(headers, "loop")
    assert (rnd, before) == (1, 0)  # the round: the most entries into any one step so far
    rnd, before, headers = enter(headers, "counter")
    assert (rnd, before) == (1, 1) and visits(headers, "counter") == 2 and visits(headers, "loop") == 1
    rnd, before, headers = enter(headers, "done")
    assert (rnd, before) == (2, 0)  # an exit step entered once still joins in the loop's round
    assert headers[:2] == [("headrace-hop", b"1:2"), ("pipeline", b"p")]  # order kept: the hop stamp first
    assert [n for n, _ in headers].count(VISITS_HEADER) == 1
    assert dict(headers)[VISITS_HEADER] == b"counter=2,loop=1,done=1"


def test_a_garbled_header_counts_as_no_visits() -> None:
    assert visits([(VISITS_HEADER, b"counter=x,=,loop")], "counter") == 0
    assert visits([(VISITS_HEADER, None)], "counter") == 0
    assert visits([], "counter") == 0

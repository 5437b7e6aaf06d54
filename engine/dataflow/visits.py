"""Visit counts of a request in a cyclic pipeline, carried in a record header (Seldon's visiting counter).

In a pipeline with ``allowCycles`` a request may enter a step several times. Each record carries, in
the header ``headrace-visits`` (``step=n,step=n``), how many times the request has entered each step
so far. A record's round is the most times its request had entered any one step on the way to it;
joins keep one slot per round, so a later round is never taken for a duplicate of an earlier one (nor
joined with a stale part of it); past ``maxStepRevisits`` the request fails.
"""

from __future__ import annotations

from typing import Any

VISITS_HEADER = "headrace-visits"
#: maxStepRevisits unset or 0 in a pipeline with allowCycles: a step runs at most this many times.
DEFAULT_MAX_VISITS = 10

Headers = list[tuple[str, Any]]


def _counts(headers: Headers) -> dict[str, int]:
    for name, value in headers:
        if name == VISITS_HEADER and value:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            out: dict[str, int] = {}
            for item in text.split(","):
                step, _, count = item.partition("=")
                if count.isdigit():
                    out[step] = int(count)
            return out
    return {}


def visits(headers: Headers, step: str) -> int:
    """How many times the request has entered ``step`` (0 when the header does not say)."""
    return _counts(headers).get(step, 0)


def enter(headers: Headers, step: str) -> tuple[int, int, Headers]:
    """The request enters ``step``: (the record's round, the step's visits before, the headers with
    the step's count plus one)."""
    counts = _counts(headers)
    rnd = max(counts.values(), default=0)
    before = counts.get(step, 0)
    counts[step] = before + 1
    value = ",".join(f"{name}={count}" for name, count in counts.items()).encode()
    return rnd, before, [*(h for h in headers if h[0] != VISITS_HEADER), (VISITS_HEADER, value)]

"""Model answers written twice: which a pipeline has already taken, so that it drops their copies.

A worker killed outright leaves no handover: its successor takes its model-gateway units from their
last commit and calls the model again for the records since, writing their answers a second time.
The model gateway stamps every answer with the input record it answers (``SOURCE_HEADER``: the
input's local-hop stamp, unique per written record, or else its offset), and a pipeline's worker that
already took an answer for that input on that partition drops the copy, so the pipeline's next step
and its outputs topic see each answer once. The memory is per pipeline and partition, of the last
``CAP`` answers, and is forgotten when the partition leaves the worker.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from headrace.engine.topics import SOURCE_HEADER

#: Answers remembered per pipeline, topic and partition: the records since a model-gateway unit's
#: last commit (committed every second) are far fewer at any rate one partition sees.
CAP = 8192


def source_of(headers: Iterable[tuple[str, Any]]) -> bytes | None:
    """The input record an answer is for, if its headers say."""
    found = None
    for name, value in headers:
        if name == SOURCE_HEADER and isinstance(value, bytes):
            found = value
    return found


class SeenAnswers:
    def __init__(self, cap: int = CAP) -> None:
        self.cap = cap
        # (an OrderedDict: a plain dict's oldest key is found by skipping the ones deleted before it,
        # which at the cap cost ~9 us a record; this is under 1)
        self._seen: dict[tuple[str, str, int], OrderedDict[bytes, None]] = {}

    def first(self, pipeline: str, topic: str, partition: int, source: bytes) -> bool:
        """True the first time ``pipeline`` takes the answer to ``source`` on this topic partition."""
        key = (pipeline, topic, partition)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = OrderedDict()
        elif source in seen:
            return False
        seen[source] = None
        if len(seen) > self.cap:
            seen.popitem(last=False)  # the oldest
        return True

    def forget(self, pipeline: str, partition: int) -> None:
        """The pipeline's partition leaves this worker: a later owner sees its answers afresh."""
        for key in [k for k in self._seen if k[0] == pipeline and k[2] == partition]:
            del self._seen[key]

    def clear(self) -> None:
        self._seen.clear()

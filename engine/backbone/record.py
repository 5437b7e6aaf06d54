"""The two shapes the Kafka roles depend on: a record they read and a writer they produce through."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from headrace.engine.backbone.producer import HeaderSeq


class Record(Protocol):
    """A consumed record: confluent-kafka's Message, or a record handed over in memory."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Any: ...
    def error(self) -> Any: ...


def headers_of(record: Record) -> list[tuple[str, Any]]:
    """A record's headers as a list of (name, value) pairs (confluent-kafka may give None)."""
    raw = record.headers() or []
    return list(raw.items() if isinstance(raw, dict) else raw)


class Writer(Protocol):
    """Writes a record; the future completes when the broker has it (or fails with ProduceError)."""

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: HeaderSeq
    ) -> asyncio.Future[None]: ...

"""A consumed record for unit tests: the shape of confluent-kafka's Message that the Kafka roles read."""

from __future__ import annotations

from typing import Any


class FakeRecord:
    def __init__(
        self,
        topic: str,
        value: bytes = b"",
        *,
        partition: int = 0,
        offset: int = 0,
        key: bytes = b"",
        headers: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._topic, self._value, self._partition, self._offset = topic, value, partition, offset
        self._key, self._headers = key, headers if headers is not None else []

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, Any]]:
        return self._headers

    def error(self) -> None:
        return None

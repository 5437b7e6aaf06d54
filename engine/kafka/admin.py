"""TopicAdmin: create, delete and list Kafka topics with timeouts; broker errors become TopicAdminError."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.config.settings import Settings
from headrace.engine.kafka.config import admin_config

DEFAULT_TIMEOUT_S = 10.0


class TopicAdminError(HeadraceError):
    """The broker could not be reached or refused the request; ``code`` is the Kafka error name."""

    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def _kafka_error(exc: BaseException) -> tuple[str, str]:
    """(code name, message) of a KafkaException (or anything else)."""
    err = exc.args[0] if exc.args else None
    if err is not None and hasattr(err, "code") and hasattr(err, "str"):
        return str(err.name()), str(err.str())
    return type(exc).__name__, str(exc) or type(exc).__name__


def first_address(bootstrap: str) -> tuple[str, int]:
    """(host, port) of the first bootstrap server (``PLAINTEXT://h:p`` and ``[::1]:p`` accepted)."""
    first = bootstrap.split(",")[0].strip().split("://", 1)[-1]
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 9092)


class TopicAdmin:
    """A confluent_kafka AdminClient made on first use; every call is bounded by ``timeout`` seconds."""

    def __init__(
        self,
        settings: Settings,
        timeout: float = DEFAULT_TIMEOUT_S,
        replication: int = 1,
        client: Any = None,
    ) -> None:
        self.conf = admin_config(settings)
        self.partitions = settings.partitions
        self.replication = replication
        self.topic_config = {"max.message.bytes": str(settings.kafka_max_message_bytes)}
        self.timeout = timeout
        self._client = client

    @property
    def bootstrap(self) -> str:
        return str(self.conf["bootstrap.servers"])

    def _admin(self) -> Any:
        if self._client is None:
            from confluent_kafka.admin import AdminClient

            self._client = AdminClient(self.conf)
        return self._client

    def reset(self) -> None:
        """Drop the client (it stops reconnecting); the next call makes a new one."""
        self._client = None

    def reachable(self, timeout: float = 1.0) -> bool:
        """Whether the first bootstrap address accepts a TCP connection (no librdkafka log noise)."""
        try:
            socket.create_connection(first_address(self.bootstrap), timeout=timeout).close()
        except (OSError, ValueError):
            return False
        return True

    def existing(self) -> set[str]:
        """Every topic the cluster has (internal ones included)."""
        try:
            metadata = self._admin().list_topics(timeout=self.timeout)
        except Exception as exc:  # KafkaException: transport failure or timeout
            code, message = _kafka_error(exc)
            raise TopicAdminError(f"cannot list topics at {self.bootstrap}: {message}", code) from None
        return {name for name, topic in metadata.topics.items() if topic.error is None}

    def ensure(self, topics: Iterable[str]) -> set[str]:
        """Create the missing ones among ``topics``; returns those created (existing ones are fine)."""
        from confluent_kafka.cimpl import NewTopic

        wanted = sorted(set(topics))
        if not wanted:
            return set()
        new = [NewTopic(t, self.partitions, self.replication, config=dict(self.topic_config)) for t in wanted]
        try:
            futures = self._admin().create_topics(
                new, operation_timeout=self.timeout, request_timeout=self.timeout
            )
        except Exception as exc:
            code, message = _kafka_error(exc)
            raise TopicAdminError(f"cannot create topics at {self.bootstrap}: {message}", code) from None
        return self._settle(futures, "create", ok_codes={"TOPIC_ALREADY_EXISTS"})

    def delete(self, topics: Iterable[str]) -> set[str]:
        """Delete ``topics``; returns those deleted (already missing ones are fine)."""
        wanted = sorted(set(topics))
        if not wanted:
            return set()
        try:
            futures = self._admin().delete_topics(
                wanted, operation_timeout=self.timeout, request_timeout=self.timeout
            )
        except Exception as exc:
            code, message = _kafka_error(exc)
            raise TopicAdminError(f"cannot delete topics at {self.bootstrap}: {message}", code) from None
        return self._settle(futures, "delete", ok_codes={"UNKNOWN_TOPIC_OR_PART"})

    def _settle(self, futures: Mapping[str, Future[None]], verb: str, ok_codes: set[str]) -> set[str]:
        done: set[str] = set()
        failures: list[tuple[str, str, str]] = []
        for topic, future in sorted(futures.items()):
            try:
                future.result(timeout=self.timeout + 1.0)
            except FutureTimeout:
                failures.append((topic, "REQUEST_TIMED_OUT", f"no answer within {self.timeout:g}s"))
            except Exception as exc:
                code, message = _kafka_error(exc)
                if code not in ok_codes:
                    failures.append((topic, code, message))
            else:
                done.add(topic)
        if failures:
            topic, code, message = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise TopicAdminError(f"cannot {verb} topic {topic}{more} at {self.bootstrap}: {message}", code)
        return done

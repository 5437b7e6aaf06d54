"""Wait until a Kafka broker answers metadata requests (the embedded one after its start, or a cluster)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from headrace.config.errors import ErrorKind, HeadraceError


class BrokerNotReady(HeadraceError):
    kind = ErrorKind.UNAVAILABLE


def _first_address(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    first = first.split("://", 1)[-1]  # PLAINTEXT://host:port
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def wait_ready(
    conf: str | dict[str, Any], timeout: float = 60.0, alive: Callable[[], bool] | None = None
) -> float:
    """Block until a broker of ``conf`` (bootstrap servers, or a librdkafka config) lists its brokers;
    returns the seconds it took. ``alive`` (e.g. a child process check) ends the wait early when false.

    Probes the first bootstrap address with plain TCP connects first, so that librdkafka does not log
    "connection refused" while the broker is still starting.
    """
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {"bootstrap.servers": conf} if isinstance(conf, str) else dict(conf)
    started = time.monotonic()
    deadline = started + timeout

    def check_alive() -> None:
        if alive is not None and not alive():
            raise BrokerNotReady(f"Kafka broker at {config['bootstrap.servers']} exited while starting")

    host, port = _first_address(str(config["bootstrap.servers"]))
    while True:
        check_alive()
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerNotReady(
                    f"Kafka broker at {host}:{port} not listening after {timeout:.0f}s"
                ) from None
            time.sleep(0.02)
    admin = AdminClient(config)
    last: Exception | None = None
    while time.monotonic() < deadline:
        check_alive()
        try:
            metadata = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if metadata.brokers:
                return time.monotonic() - started
        except Exception as exc:  # KafkaException: not answering yet
            last = exc
        time.sleep(0.05)
    where = config["bootstrap.servers"]
    raise BrokerNotReady(f"Kafka broker at {where} not ready after {timeout:.0f}s: {last}")

"""BrokerWatch: whether the Kafka cluster answers this worker, probed on a thread of its own."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from headrace.engine.kafka.config import KafkaConf

log = logging.getLogger("headrace.kafka.watch")

#: A probe every PROBE_INTERVAL_S; one not answered within PROBE_TIMEOUT_S counts as unreachable.
#: A stopped broker (SIGSTOP, a stuck JVM) keeps its connections open and answers nothing: only a
#: request with a deadline tells, so the watch asks for metadata rather than trusting connection state.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0


class BrokerWatch:
    """Asks the cluster for its metadata once a second, through its own librdkafka client (same
    bootstrap servers and security settings as the worker's producers and consumer), and tells the
    event loop when the answer changes. ``reachable`` is False until the first answer."""

    def __init__(
        self,
        conf: KafkaConf,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None] | None = None,
        interval: float = PROBE_INTERVAL_S,
        timeout: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.bootstrap = str(conf.get("bootstrap.servers", ""))
        self._conf: dict[str, Any] = {
            **conf,
            # after a broker restart, reconnect within a second (librdkafka backs off up to 10 s)
            "reconnect.backoff.max.ms": 1000,
            # the watch says it once ("unreachable", "answers"), not at every failed connect
            "log_level": 0,
        }
        self._loop = loop
        self.on_change = on_change
        self._interval = interval
        self._timeout = timeout
        self.reachable = False
        self.error = "not reached yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def not_ready_reason(self) -> str | None:
        """For DataPlane.health_checks: None while the broker answers (read on the event loop)."""
        if self.reachable:
            return None
        return f"Kafka broker at {self.bootstrap} unreachable: {self.error}"

    # -- the probe thread -------------------------------------------------------------------------
    def _run(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._conf)
        last: bool | None = None
        while not self._stop.is_set():
            ok, error = self._probe(admin)
            if ok != last:
                last = ok
                if self._stop.is_set():
                    break
                try:
                    self._loop.call_soon_threadsafe(self._set, ok, error)
                except RuntimeError:  # the loop is closed: the worker is gone
                    break
            self._stop.wait(self._interval)

    def _probe(self, admin: Any) -> tuple[bool, str]:
        try:
            metadata = admin.list_topics(timeout=self._timeout)
        except Exception as exc:  # KafkaException: timed out, transport failure, all brokers down
            return False, _describe(exc)
        if not metadata.brokers:
            return False, "the cluster lists no brokers"
        return True, ""

    # -- the event loop ---------------------------------------------------------------------------
    def _set(self, ok: bool, error: str) -> None:
        was = self.reachable
        self.reachable = ok
        self.error = error or self.error
        if ok and not was:
            log.info("Kafka broker at %s answers", self.bootstrap)
        elif was and not ok:
            log.warning("Kafka broker at %s unreachable (%s): worker not ready", self.bootstrap, error)
        elif not ok:
            log.info("Kafka broker at %s not reached yet (%s)", self.bootstrap, error)
        if self.on_change is not None:
            self.on_change()


def _describe(exc: BaseException) -> str:
    """A KafkaException's KafkaError text ("Failed to get metadata: Local: Timed out")."""
    err: Any = exc.args[0] if exc.args else None
    text = err.str() if err is not None and hasattr(err, "str") else str(exc)
    return str(text) or type(exc).__name__

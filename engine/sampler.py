"""A worker's sampled gauges (model-gateway slots in flight, pending pipeline calls, open joins), its
Kafka clients' metrics (produce→delivery time, consumer lag from librdkafka statistics).

Gauges are sampled once a second from the event loop instead of being moved on every record: the
hot path pays nothing for them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any

import orjson

from headrace.gateway.telemetry import metrics as m

if TYPE_CHECKING:
    from headrace.engine.node import DataNode

log = logging.getLogger("headrace.sampler")

SAMPLE_S = 1.0
STATS_INTERVAL_MS = 5000


class Sampler:
    def __init__(self, worker: int, node: DataNode | None) -> None:
        self.worker = str(worker)
        self.node = node
        self._timer: asyncio.TimerHandle | None = None
        self._seen: dict[m.Gauge, set[tuple[str, ...]]] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self._loop.call_later(SAMPLE_S, self._tick)
        try:
            self.sample()
        except Exception:  # a gauge must never take the worker down
            log.exception("sampling metrics failed")

    def sample(self) -> None:
        node = self.node
        if node is None:
            return
        w = self.worker
        self._set(m.PIPELINE_PENDING, {(w,): float(len(node.gateway.pending))})
        self._set(
            m.GATEWAY_IN_FLIGHT, {(w, str(slot)): float(n) for slot, n in node.models.in_flight().items()}
        )
        joins = Tally(slot[0] for slot in node.dataflow.joiner.open)
        self._set(m.OPEN_JOINS, {(w, pipeline): float(n) for pipeline, n in joins.items()})

    def _set(self, gauge: m.Gauge, values: dict[tuple[str, ...], float]) -> None:
        """Set these label values; those set before and gone now go to 0."""
        seen = self._seen.setdefault(gauge, set())
        for labels in seen - set(values):
            gauge.labels(*labels).set(0.0)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        seen |= set(values)


#: Per worker, the last lag each of its consumers reported, by topic (the gauge shows their sum).
_LAGS: dict[str, dict[str, dict[str, float]]] = {}
_LAGS_LOCK = threading.Lock()


def consumer_stats(worker: int, consumer: str) -> dict[str, Any]:
    """librdkafka properties that make one of a worker's consumers report its lag every
    STATS_INTERVAL_MS: per topic, the records between what was handed to the worker and the
    partitions' high watermarks, summed over the worker's consumers (the callback runs on the
    consumer's own thread, inside its poll)."""
    if m.directory() is None:
        return {}
    label = str(worker)
    lags = _LAGS.setdefault(label, {})

    def on_stats(text: str) -> None:
        try:
            stats = orjson.loads(text)
            lag: dict[str, float] = {}
            for topic, entry in (stats.get("topics") or {}).items():
                total = 0
                for partition, p in (entry.get("partitions") or {}).items():
                    if partition == "-1" or p.get("fetch_state") in (None, "none", "stopped"):
                        continue
                    hi, at = p.get("hi_offset", -1), p.get("app_offset", -1)
                    if hi >= 0 and at >= 0 and hi > at:
                        total += hi - at
                lag[topic] = float(total)
            with _LAGS_LOCK:
                before = {t for side in lags.values() for t in side}
                lags[consumer] = lag
                now: dict[str, float] = {}
                for side in lags.values():
                    for topic, value in side.items():
                        now[topic] = now.get(topic, 0.0) + value
                for topic in before - set(now):
                    m.KAFKA_LAG.labels(label, topic).set(0.0)
                for topic, value in now.items():
                    m.KAFKA_LAG.labels(label, topic).set(value)
        except Exception:
            log.debug("unreadable librdkafka statistics", exc_info=True)

    return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": on_stats}


def delivery(worker: int, producer: str) -> m.HistogramChild | None:
    """produce→acknowledgement seconds of one of a worker's producers (None: metrics off)."""
    if m.directory() is None:
        return None
    return m.KAFKA_DELIVERY.labels(str(worker), producer)

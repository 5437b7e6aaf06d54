"""The topic manager thread: converges the topic plan onto the broker, retrying while it is down."""

from __future__ import annotations

import logging
import threading
import time

from headrace.engine.kafka.admin import TopicAdmin, TopicAdminError
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.topic_plan import TopicPlan

log = logging.getLogger("headrace.scheduler")

RESYNC_S = 30.0  # look again this often even when nothing changed (topics deleted behind our back)
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0


class TopicManager:
    """One daemon thread; ``stop`` (or closing the state) ends it."""

    def __init__(
        self,
        state: SchedulerState,
        admin: TopicAdmin,
        stop: threading.Event | None = None,
        resync_s: float = RESYNC_S,
        backoff: tuple[float, float] = (BACKOFF_MIN_S, BACKOFF_MAX_S),
    ) -> None:
        self.state = state
        self.admin = admin
        self.stop = stop or threading.Event()
        self.resync_s = resync_s
        self.backoff = backoff
        self._thread = threading.Thread(target=self.run, name="topic-manager", daemon=True)

    def start(self) -> TopicManager:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _done(self) -> bool:
        return self.stop.is_set() or self.state.closed

    def run(self) -> None:
        seen = 0  # the plan version last converged
        next_sync = 0.0
        delay = self.backoff[0]
        failing = ""
        while not self._done():
            plan = self.state.wait_topic_plan(seen, min(1.0, max(0.0, next_sync - time.monotonic())))
            if self._done():
                return
            if plan.version == seen and time.monotonic() < next_sync:
                continue
            try:
                self.converge(plan)
            except TopicAdminError as exc:
                if exc.message != failing:
                    log.warning("Kafka topics: %s (retrying)", exc.message)
                failing = exc.message
                self.admin.reset()
                self.state.topics_synced(None, error=exc.message)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            if failing:
                log.info("Kafka topics: %s answers again", self.admin.bootstrap)
            failing, delay = "", self.backoff[0]
            seen, next_sync = plan.version, time.monotonic() + self.resync_s

    def converge(self, plan: TopicPlan) -> None:
        """Delete what the plan deletes, create what it lacks, then tell the state which topics exist."""
        if not self.admin.reachable():
            raise TopicAdminError(f"Kafka at {self.admin.bootstrap} is not reachable")
        existing = self.admin.existing()
        doomed = plan.delete & existing
        deleted = self.admin.delete(doomed) if doomed else set()
        if deleted:
            log.info("Kafka topics deleted: %s", ", ".join(sorted(deleted)))
        missing = plan.desired - existing
        created = self.admin.ensure(missing) if missing else set()
        if created:
            log.info("Kafka topics created: %s", ", ".join(sorted(created)))
        ready = (existing | missing) & plan.desired
        self.state.topics_synced(ready, deleted | (plan.delete - existing))

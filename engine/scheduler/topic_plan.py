"""The topic plan: which Kafka topics should exist, which to delete, and which the broker has."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from headrace.engine.scheduler.pipeline_views import TopicsView
from headrace.engine.scheduler.pipelines import (
    MODEL_OWNER,
    PIPELINE_OWNER,
    Pipeline,
    model_topics,
    own_topics,
    pipeline_topics,
)
from headrace.engine.scheduler.records import Model
from headrace.engine.scheduler.store import Store
from headrace.engine.topics import Topics


@dataclass(frozen=True)
class TopicPlan:
    version: int = 0
    desired: frozenset[str] = frozenset()
    delete: frozenset[str] = frozenset()  # never desired ones


class TopicBook:
    """Desired topics and pending deletes (durable); the caller holds the state lock."""

    def __init__(self, topics: Topics, store: Store) -> None:
        self.topics = topics
        self._store = store
        self.view = TopicsView(set())
        self.pending: dict[str, str] = store.topic_deletes()  # topic -> owner
        self.plan = TopicPlan()
        self.looked = False  # the topic manager reported once (found topics, or failed to look)

    def doom(self, owner: str) -> None:
        """Delete the owner's topics once it is gone (its manifest said cleanTopicsOnDelete)."""
        topics = {t: owner for t in own_topics(owner, self.topics)}
        self._store.add_topic_deletes(topics)
        self.pending.update(topics)

    def spare(self, owner: str) -> None:
        """The owner is loaded again: keep its topics."""
        topics = {t for t, o in self.pending.items() if o == owner}
        self._store.remove_topic_deletes(topics)
        for topic in topics:
            del self.pending[topic]

    def replan(self, models: Mapping[str, Model], pipelines: Mapping[str, Pipeline]) -> bool:
        """Recompute the plan; True when it changed (a new version)."""
        desired = {self.topics.errors}
        for model in models.values():
            if not model.terminating:
                desired.update(model_topics(model.name, self.topics))
        for pipeline in pipelines.values():
            if not pipeline.terminating:
                desired.update(pipeline_topics(pipeline.manifest, self.topics))

        def gone(owner: str) -> bool:
            if owner.startswith(MODEL_OWNER):
                return owner[len(MODEL_OWNER) :] not in models
            return owner[len(PIPELINE_OWNER) :] not in pipelines

        want = frozenset(desired)
        delete = frozenset(t for t, owner in self.pending.items() if gone(owner)) - want
        if (want, delete) == (self.plan.desired, self.plan.delete):
            return False
        self.plan = TopicPlan(self.plan.version + 1, want, delete)
        return True

    def synced(self, existing: Iterable[str] | None, deleted: Iterable[str], error: str) -> bool:
        """What the topic manager found (``existing`` None: it could not look); True when the view changed."""
        self.looked = True
        deleted = set(deleted)
        if deleted:
            done = deleted & set(self.pending)
            self._store.remove_topic_deletes(done)
            for topic in done:
                del self.pending[topic]
        ready = self.view.ready - deleted if existing is None else set(existing) - deleted
        changed = (ready, error) != (self.view.ready, self.view.error)
        self.view.ready, self.view.error = ready, error
        return changed

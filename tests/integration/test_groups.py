"""Commit groups on a real broker: partitions' ends, a unit's starts, commits read back."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer
from test_broker import create_topic

from headrace.config.settings import Settings
from headrace.engine.backbone.groups import GroupError, GroupOffsets
from headrace.engine.kafka.config import admin_config, producer_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_ends_starts_and_commits(kafka_bootstrap: str) -> None:
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    topic = f"groups-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 4)
    producer = Producer(producer_config(settings))
    for i in range(10):  # 3, 3, 2, 2 records
        producer.produce(topic, value=b"x", partition=i % 4)
    assert producer.flush(15) == 0
    groups = GroupOffsets(admin_config(settings))
    try:
        tps = [(topic, p) for p in range(4)]
        assert groups.latest(tps) == {(topic, 0): 3, (topic, 1): 3, (topic, 2): 2, (topic, 3): 2}
        group = f"g-{topic}"
        # a group that never committed starts at the ends, and keeps them
        assert groups.starts(group, tps[:2]) == {(topic, 0): 3, (topic, 1): 3}
        assert groups.committed(group, tps) == {(topic, 0): 3, (topic, 1): 3, (topic, 2): -1, (topic, 3): -1}
        groups.commit(group, {(topic, 2): 1})
        assert groups.starts(group, tps[1:3]) == {(topic, 1): 3, (topic, 2): 1}
        with pytest.raises(GroupError):
            groups.latest([(f"missing-{topic}", 0)])
    finally:
        groups.close()

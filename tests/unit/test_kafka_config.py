"""librdkafka configuration: bootstrap servers, latency defaults by broker, passthrough precedence."""

from __future__ import annotations

from pathlib import Path

from headrace.config.settings import Settings
from headrace.engine.kafka import broker
from headrace.engine.kafka.config import (
    HOP_LINGER_MS,
    KAFKA_FETCH_WAIT_MS,
    LOCAL_FETCH_MIN_BYTES,
    LOCAL_FETCH_WAIT_MS,
    TANSU_FETCH_WAIT_MS,
    admin_config,
    bootstrap_servers,
    consumer_config,
    dataplane_consumer_config,
    hop_producer_config,
    producer_config,
)


def test_bootstrap_is_the_cluster_given_else_the_embedded_broker() -> None:
    assert bootstrap_servers(Settings()) == "127.0.0.1:9092"
    assert bootstrap_servers(Settings(kafka_host="0.0.0.0", kafka_port=19092)) == "127.0.0.1:19092"
    assert bootstrap_servers(Settings(kafka_bootstrap="a:1,b:2")) == "a:1,b:2"
    assert broker.bootstrap_servers is bootstrap_servers


def test_producer_sends_at_once_idempotent_with_acks_all() -> None:
    conf = producer_config(Settings())
    assert conf["linger.ms"] == 0
    assert conf["acks"] == "all"
    assert conf["enable.idempotence"] is True
    assert conf["socket.nagle.disable"] is True


def test_fetch_wait_is_short_only_for_tansu() -> None:
    assert consumer_config(Settings())["fetch.wait.max.ms"] == KAFKA_FETCH_WAIT_MS
    assert consumer_config(Settings(embedded_broker="tansu"))["fetch.wait.max.ms"] == TANSU_FETCH_WAIT_MS
    # a cluster of one's own is Apache Kafka (or behaves like it), whatever embedded_broker says
    external = Settings(embedded_broker="tansu", kafka_bootstrap="k:9092")
    assert consumer_config(external)["fetch.wait.max.ms"] == KAFKA_FETCH_WAIT_MS
    assert consumer_config(Settings())["fetch.min.bytes"] == 1


def test_passthrough_applies_to_all_or_one_side_and_wins_over_defaults() -> None:
    s = Settings(
        kafka_config={
            "security.protocol": "SASL_SSL",
            "producer.linger.ms": "2",
            "consumer.fetch.wait.max.ms": "20",
            "admin.request.timeout.ms": "1000",
        }
    )
    p, c, a = producer_config(s), consumer_config(s, "g"), admin_config(s)
    assert p["security.protocol"] == c["security.protocol"] == a["security.protocol"] == "SASL_SSL"
    assert p["linger.ms"] == "2" and "fetch.wait.max.ms" not in p
    assert c["fetch.wait.max.ms"] == "20" and c["group.id"] == "g"
    assert a["request.timeout.ms"] == "1000"
    assert not any(k.startswith(("producer.", "consumer.", "admin.")) for k in {**p, **c, **a})
    assert producer_config(s, {"linger.ms": 7})["linger.ms"] == 7  # the caller's own last


def test_with_local_hops_the_hop_producer_lingers_and_the_worker_fetches_in_bulk() -> None:
    local = Settings()
    assert hop_producer_config(local)["linger.ms"] == HOP_LINGER_MS
    assert producer_config(local)["linger.ms"] == 0  # the gateway's input record, which a caller awaits
    c = dataplane_consumer_config(local, "g")
    assert (c["fetch.wait.max.ms"], c["fetch.min.bytes"]) == (LOCAL_FETCH_WAIT_MS, LOCAL_FETCH_MIN_BYTES)
    # every hop through the broker: latency settings everywhere
    broker_hops = Settings(local_hops=False)
    assert hop_producer_config(broker_hops)["linger.ms"] == 0
    c = dataplane_consumer_config(broker_hops, "g")
    assert (c["fetch.wait.max.ms"], c["fetch.min.bytes"]) == (KAFKA_FETCH_WAIT_MS, 1)
    # the user's kafka_config still wins
    given = Settings(kafka_config={"producer.linger.ms": "1", "consumer.fetch.wait.max.ms": "3"})
    assert hop_producer_config(given)["linger.ms"] == "1"
    c = dataplane_consumer_config(given, "g")
    assert (c["fetch.wait.max.ms"], c["fetch.min.bytes"]) == ("3", LOCAL_FETCH_MIN_BYTES)


def test_librdkafka_accepts_every_default() -> None:
    from confluent_kafka import Consumer, Producer

    s = Settings(kafka_bootstrap="127.0.0.1:1")
    Producer(producer_config(s)).flush(0)
    Consumer(consumer_config(s, "g")).close()
    Producer(hop_producer_config(s)).flush(0)
    Consumer(dataplane_consumer_config(s, "g")).close()


def test_server_properties_make_one_kraft_node(tmp_path: Path) -> None:
    settings = Settings(kafka_port=19092, kafka_max_message_bytes=5_000_000)
    props = broker.server_properties(settings, tmp_path, 19093)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["message.max.bytes"] == "5000000"
    assert props["offsets.topic.replication.factor"] == "1"

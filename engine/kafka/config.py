"""librdkafka configuration for headrace's Kafka clients: bootstrap servers, latency defaults, passthrough."""

from __future__ import annotations

from typing import Any

from headrace.config.settings import Settings

#: librdkafka properties as confluent-kafka takes them (strings are always accepted).
KafkaConf = dict[str, Any]

# Consumer fetch wait: how long the broker may hold an empty fetch. Apache Kafka answers a waiting
# fetch as soon as data arrives (long polling): the round trip was the same at 100 and 500 ms (p50
# 0.4-0.5 ms) and 500 saves an idle consumer's ~2% of a core on the broker, but a partition
# assigned while a fetch waits joins only the next fetch (its first record came after a median 70 ms
# at 100, 330 ms at 500), and pipelines assign partitions of new topics as they come. Tansu does not
# wake a waiting fetch: latency is about half the wait, so it must be small (brokers.md).
KAFKA_FETCH_WAIT_MS = 100
TANSU_FETCH_WAIT_MS = 5

# With local hops (Settings.local_hops) no caller waits for a hop's record to travel through the
# broker, so those records are batched (the hop producer lingers) and the consumer's copies are
# fetched in bulk (it waits for this many bytes or this long). Apache Kafka spends ~100 us of CPU per
# request: one fetch and one produce request per record took a whole core at a light load (c=1, 3-step
# chains); lingering and bulk fetches cut the requests to a few hundred per second. Only records
# written by other clients (the async path) wait for the bulk fetch: at most LOCAL_FETCH_WAIT_MS.
HOP_LINGER_MS = 50
LOCAL_FETCH_WAIT_MS = 20
# With local hops, the records a caller does wait for (a pipeline's inputs record: the answer waits
# for its acknowledgement) go out at once while the worker is idle, and linger this long once it has
# BUSY_CALLS calls in flight; so do the records nobody waits for but a topic reader may (a pipeline's
# outputs). At a 3-step chain's peak, lingering 50 ms on the steps' records and 2 ms on these took
# the broker from ~88% of a core to ~55% and the peak from ~1,000 to ~1,600-1,750 RPS (c=64).
BUSY_LINGER_MS = 2
BUSY_CALLS = 2
LOCAL_FETCH_MIN_BYTES = 64 * 1024

_SIDES = ("producer.", "consumer.", "admin.")


def bootstrap_servers(settings: Settings) -> str:
    """The cluster to use: ``kafka_bootstrap`` (env KAFKA_BOOTSTRAP_SERVERS), else the embedded broker."""
    return settings.kafka_bootstrap or embedded_bootstrap(settings)


def embedded_bootstrap(settings: Settings) -> str:
    """Where the embedded broker listens, as clients reach it (a wildcard bind is reached on loopback)."""
    return f"{_advertised_host(settings.kafka_host)}:{settings.kafka_port}"


def uses_embedded_broker(settings: Settings) -> bool:
    """True when ``headrace serve`` must run the broker itself (no ``kafka_bootstrap`` given)."""
    return not settings.kafka_bootstrap


def broker_flavour(settings: Settings) -> str:
    """``"kafka"`` or ``"tansu"`` for an embedded broker, ``"external"`` for a given cluster."""
    return settings.embedded_broker if uses_embedded_broker(settings) else "external"


def _advertised_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


def _passthrough(settings: Settings, side: str) -> KafkaConf:
    """``kafka_config`` entries for every client plus those prefixed with ``side`` (prefix removed)."""
    conf: KafkaConf = {k: v for k, v in settings.kafka_config.items() if not k.startswith(_SIDES)}
    conf.update({k[len(side) :]: v for k, v in settings.kafka_config.items() if k.startswith(side)})
    return conf


def _common(settings: Settings) -> KafkaConf:
    return {
        "bootstrap.servers": bootstrap_servers(settings),
        "client.id": "headrace",
        # small requests must not wait for the previous one's ACK (Nagle); librdkafka leaves it on
        "socket.nagle.disable": True,
    }


def producer_config(settings: Settings, overrides: KafkaConf | None = None) -> KafkaConf:
    """Latency first: send at once (linger.ms=0); acks=all with idempotence, so a retried send is
    never duplicated or reordered. On the single-node embedded broker acks=all costs nothing more
    than acks=1 (the leader is the whole ISR); on a real cluster it is what makes a step's output
    survive a broker loss."""
    conf = _common(settings)
    conf.update(
        {
            "linger.ms": 0,
            "acks": "all",
            "enable.idempotence": True,
            "message.max.bytes": min(settings.kafka_max_message_bytes, 1_000_000_000),
        }
    )
    conf.update(_passthrough(settings, "producer."))
    conf.update(overrides or {})
    return conf


def hop_producer_config(settings: Settings) -> KafkaConf:
    """The producer of the steps' records (models' inputs and outputs): with local hops nobody waits
    for them, so it lingers (HOP_LINGER_MS) unless kafka_config sets linger.ms."""
    return _lingering(settings, HOP_LINGER_MS)


def busy_producer_config(settings: Settings) -> KafkaConf:
    """The producer of a busy worker's pipeline records (BUSY_LINGER_MS, unless kafka_config sets
    linger.ms)."""
    return _lingering(settings, BUSY_LINGER_MS)


def _lingering(settings: Settings, linger_ms: int) -> KafkaConf:
    conf = producer_config(settings)
    if settings.local_hops and "linger.ms" not in _passthrough(settings, "producer."):
        conf["linger.ms"] = linger_ms
    return conf


def consumer_config(
    settings: Settings, group_id: str | None = None, overrides: KafkaConf | None = None
) -> KafkaConf:
    """fetch.min.bytes=1 (answer with the first record); fetch.wait.max.ms by broker flavour (see
    KAFKA_FETCH_WAIT_MS); short group timeouts so that joins and failovers take seconds, not tens."""
    max_bytes = min(settings.kafka_max_message_bytes, 1_000_000_000 - 512)
    conf = _common(settings)
    conf.update(
        {
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": TANSU_FETCH_WAIT_MS
            if broker_flavour(settings) == "tansu"
            else KAFKA_FETCH_WAIT_MS,
            "fetch.max.bytes": max_bytes,
            "message.max.bytes": max_bytes,  # librdkafka wants fetch.max.bytes >= message.max.bytes
            "receive.message.max.bytes": max_bytes + 512,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    if group_id is not None:
        conf["group.id"] = group_id
    conf.update(_passthrough(settings, "consumer."))
    conf.update(overrides or {})
    return conf


def dataplane_consumer_config(settings: Settings, group_id: str) -> KafkaConf:
    """A worker's consumer: with local hops its own records come back only to be committed, so it
    fetches in bulk (LOCAL_FETCH_*), unless kafka_config says otherwise."""
    if not settings.local_hops:
        return consumer_config(settings, group_id)
    lazy: KafkaConf = {"fetch.wait.max.ms": LOCAL_FETCH_WAIT_MS, "fetch.min.bytes": LOCAL_FETCH_MIN_BYTES}
    given = _passthrough(settings, "consumer.")
    return consumer_config(settings, group_id, {k: v for k, v in lazy.items() if k not in given})


def admin_config(settings: Settings, overrides: KafkaConf | None = None) -> KafkaConf:
    conf = _common(settings)
    conf.update(_passthrough(settings, "admin."))
    conf.update(overrides or {})
    return conf

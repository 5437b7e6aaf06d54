"""Seldon topic names, composite keys and SamePartitionForwarder, header names and pass-through."""

from __future__ import annotations

import pytest

from headrace.config.errors import ConfigError
from headrace.engine import topics as t
from headrace.engine.topics import TopicRef, Topics, make_key, partition_of, split_key


def test_default_names() -> None:
    topics = Topics()
    assert topics.prefix == "seldon" and topics.namespace == "default"
    assert topics.model_inputs("iris") == "seldon.default.model.iris.inputs"
    assert topics.model_outputs("iris") == "seldon.default.model.iris.outputs"
    assert topics.pipeline_inputs("tfsimples") == "seldon.default.pipeline.tfsimples.inputs"
    assert topics.pipeline_outputs("tfsimples") == "seldon.default.pipeline.tfsimples.outputs"
    assert topics.errors == "seldon.default.errors.errors"
    assert topics.model("iris", "inputs") == topics.model_inputs("iris")
    assert topics.pipeline("p", "outputs") == topics.pipeline_outputs("p")
    assert repr(topics) == "Topics(prefix='seldon', namespace='default')"


def test_prefix_and_namespace() -> None:
    topics = Topics("acme.prod", "seldon-mesh")
    assert topics.model_inputs("m") == "acme.prod.seldon-mesh.model.m.inputs"
    assert topics.errors == "acme.prod.seldon-mesh.errors.errors"
    assert Topics("", "").model_inputs("m") == "seldon.default.model.m.inputs"  # Seldon's defaults


@pytest.mark.parametrize(("prefix", "namespace"), [("a b", "default"), ("seldon", "ns/1"), ("séldon", "x")])
def test_bad_prefix_or_namespace(prefix: str, namespace: str) -> None:
    with pytest.raises(ConfigError, match="may only use"):
        Topics(prefix, namespace)


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("seldon.default.model.iris.inputs", TopicRef("model", "iris", "inputs")),
        ("seldon.default.model.iris.outputs", TopicRef("model", "iris", "outputs")),
        ("seldon.default.pipeline.p-1.inputs", TopicRef("pipeline", "p-1", "inputs")),
        ("seldon.default.pipeline.p-1.outputs", TopicRef("pipeline", "p-1", "outputs")),
        ("seldon.default.errors.errors", TopicRef("errors", "errors", "errors")),
        ("seldon.other.model.iris.inputs", None),
        ("acme.default.model.iris.inputs", None),
        ("seldon.default.model.iris.errors", None),
        ("seldon.default.model..inputs", None),
        ("seldon.default.model.inputs", None),
        ("seldon.default.widget.iris.inputs", None),
        ("seldon.default.errors.other", None),
        ("seldon.default.", None),
        ("__consumer_offsets", None),
    ],
)
def test_parse(topic: str, parsed: TopicRef | None) -> None:
    assert Topics().parse(topic) == parsed


def test_parse_round_trip_with_a_dotted_prefix() -> None:
    topics = Topics("a.b", "ns")
    for name in ("m", "model", "inputs"):
        for direction in ("inputs", "outputs"):
            assert topics.parse(topics.model(name, direction)) == ("model", name, direction)
            assert topics.parse(topics.pipeline(name, direction)) == ("pipeline", name, direction)
    assert topics.parse(topics.errors) == ("errors", "errors", "errors")


# ---------------------------------------------------------------------------------------------- keys


def test_keys() -> None:
    key = make_key(3, "tfsimples", "cq1k2b8s0000")
    assert key == "3.tfsimples.cq1k2b8s0000"
    assert split_key(key) == ("3", "tfsimples", "cq1k2b8s0000")
    assert split_key("0.p.req.with.dots") == ("0", "p", "req.with.dots")
    assert split_key("0.p.") == ("0", "p", "")
    assert split_key("0.p") is None and split_key("") is None


@pytest.mark.parametrize(
    ("key", "partitions", "expected"),
    [
        ("3.p.id", 8, 3),
        ("0.p.id", 1, 0),
        ("9.p.id", 4, 3),  # clamped to the last partition
        ("-1.p.id", 4, 0),  # clamped to the first
        ("+2.p.id", 4, 2),  # Kotlin's toIntOrNull takes a plus sign
        ("007.p.id", 8, 7),
        ("5", 8, 5),  # no '.': the whole key
        ("abc.p.id", 4, 0),
        ("", 4, 0),
        (".p.id", 4, 0),
        ("+.p", 4, 0),
        ("-.p", 4, 0),
        (" 1.p", 4, 0),
        ("1 .p", 4, 0),
        ("1_0.p", 20, 0),  # Python's int() would take it; Kotlin's does not
        ("0x1.p", 4, 0),
        ("1e2.p", 4, 0),
        ("2147483647.p", 4, 3),
        ("2147483648.p", 4, 0),  # beyond a 32-bit int: not a number, so 0
        ("-2147483648.p", 4, 0),
        ("-2147483649.p", 4, 0),
        ("99999999999999999999.p", 4, 0),
        ("\u0663.p", 8, 3),  # an Arabic-Indic 3: a digit to Kotlin as well
        (b"2.p.id", 4, 2),
        (b"\xff.p", 4, 0),
        (None, 4, 0),
    ],
)
def test_partition_of(key: str | bytes | None, partitions: int, expected: int) -> None:
    assert partition_of(key, partitions) == expected


def test_partition_of_needs_a_partition() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("0.p.id", 0)


# ------------------------------------------------------------------------------------------- headers


def test_header_names() -> None:
    assert t.PIPELINE_HEADER == "pipeline"
    assert t.PIPELINE_VERSION_HEADER == "x-pipeline-version"
    assert t.REQUEST_ID_HEADER == "x-request-id"
    assert t.ERROR_HEADER == "seldon-pipeline-errors"
    assert t.INFER_TYPE_HEADER == "seldon-infer-type"
    assert t.ROUTE_HEADER == "x-seldon-route"


@pytest.mark.parametrize(
    ("name", "passes"),
    [
        ("x-request-id", True),
        ("X-Request-Id", True),
        ("x-anything", True),
        ("x-", True),
        ("x-seldon-route", False),
        ("X-Seldon-Route", False),
        ("seldon-model", False),
        ("pipeline", False),
        ("content-type", False),
        ("authorization", False),
        ("xx-a", False),
    ],
)
def test_is_passthrough(name: str, passes: bool) -> None:
    assert t.is_passthrough(name) is passes


def test_passthrough_headers() -> None:
    headers = [
        ("X-Request-Id", "abc"),
        ("x-tag", b"\x00\x01"),
        ("X-Seldon-Route", ":m_1:"),
        ("Content-Type", "application/json"),
        ("x-tag", "second"),
    ]
    assert t.passthrough_headers(headers) == [
        ("x-request-id", b"abc"),
        ("x-tag", b"\x00\x01"),
        ("x-tag", b"second"),
    ]
    assert t.passthrough_headers([]) == []


def test_pipeline_matches() -> None:
    assert t.pipeline_matches([("pipeline", b"p")], "p")
    assert t.pipeline_matches([("x-a", b"1"), ("pipeline", b"q"), ("pipeline", b"p")], "p")  # any of them
    assert not t.pipeline_matches([("pipeline", b"q")], "p")
    assert not t.pipeline_matches([("Pipeline", b"p")], "p")  # Kafka header names are case-sensitive
    assert not t.pipeline_matches([("pipeline", None)], "p")
    assert not t.pipeline_matches([], "p")
    assert not t.pipeline_matches(None, "p")

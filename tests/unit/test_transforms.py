"""Chain transforms on real OIP protobuf records: conversions, subsets, renames, raw contents, headers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from headrace.config.errors import InvalidInputError
from headrace.engine.dataflow.transforms import ChainKind, adjust_headers, transform
from headrace.gateway.oip.pb import pb2

SRC_OUT = "seldon.default.model.tfsimple1.outputs"
SRC_IN = "seldon.default.pipeline.p.inputs"
REQUEST_SOURCE = {ChainKind.REQUEST_FILTER, ChainKind.REQUEST_TO_RESPONSE}
REQUEST_SINK = {ChainKind.REQUEST_FILTER, ChainKind.RESPONSE_TO_REQUEST}
KINDS = [
    ChainKind.RESPONSE_TO_REQUEST,
    ChainKind.REQUEST_FILTER,
    ChainKind.RESPONSE_FILTER,
    ChainKind.REQUEST_TO_RESPONSE,
]


def raw(values: list[int], dtype: str = "<i4") -> bytes:
    return np.asarray(values, dtype=dtype).tobytes()


def message(kind: ChainKind, tensors: int = 2, *, use_raw: bool = True, prefix: str = "") -> Any:
    """A source record for ``kind``: tensors T0.., raw or typed contents, parameters everywhere."""
    request = kind in REQUEST_SOURCE
    msg = pb2.ModelInferRequest() if request else pb2.ModelInferResponse()
    msg.model_name, msg.model_version, msg.id = "tfsimple1", "1", "req-1"
    msg.parameters["trace"].string_param = "on"
    msg.parameters["n"].int64_param = 7
    for i in range(tensors):
        tensor = (msg.inputs if request else msg.outputs).add()
        tensor.name = f"{prefix}T{i}"
        tensor.datatype = "INT32"
        tensor.shape.extend([1, 4])
        tensor.parameters["i"].int64_param = i
        values = [i * 10 + j for j in range(4)]
        if use_raw:
            (msg.raw_input_contents if request else msg.raw_output_contents).append(raw(values))
        else:
            tensor.contents.int_contents.extend(values)
    if request:
        msg.outputs.add().name = "T0"  # requested by the pipeline's caller
    return msg


def expected(
    kind: ChainKind, msg: Any, tensors: frozenset[str] | None, renames: dict[str, str], topic: str
) -> Any:
    """Seldon's StreamTransforms, written with the protobuf API (filters keep the other fields)."""
    from_request, to_request = kind in REQUEST_SOURCE, kind in REQUEST_SINK
    src_tensors = msg.inputs if from_request else msg.outputs
    src_raw = msg.raw_input_contents if from_request else msg.raw_output_contents
    if from_request == to_request:
        out = type(msg)()
        out.CopyFrom(msg)
        out.ClearField("inputs" if to_request else "outputs")
        out.ClearField("raw_input_contents" if to_request else "raw_output_contents")
        if to_request:
            out.ClearField("outputs")
    else:
        out = pb2.ModelInferRequest() if to_request else pb2.ModelInferResponse()
        out.id = msg.id
        for key, value in msg.parameters.items():
            out.parameters[key].CopyFrom(value)
    for idx, tensor in enumerate(src_tensors):
        if tensors and tensor.name not in tensors:
            continue
        new = (out.inputs if to_request else out.outputs).add()
        new.name = renames.get(f"{topic}.{tensor.name}", tensor.name)
        new.datatype = tensor.datatype
        new.shape.extend(tensor.shape)
        for key, value in tensor.parameters.items():
            new.parameters[key].CopyFrom(value)
        if tensor.HasField("contents"):
            new.contents.CopyFrom(tensor.contents)
        if idx < len(src_raw):
            (out.raw_input_contents if to_request else out.raw_output_contents).append(src_raw[idx])
    return out


def parsed(kind: ChainKind, value: bytes | None) -> Any:
    assert value is not None
    cls = pb2.ModelInferRequest if kind in REQUEST_SINK else pb2.ModelInferResponse
    return cls.FromString(value)


def source_topic(kind: ChainKind) -> str:
    return SRC_IN if kind in REQUEST_SOURCE else SRC_OUT


def test_tfsimples_response_to_request() -> None:
    response = pb2.ModelInferResponse(model_name="tfsimple1", model_version="1", id="abc")
    response.parameters["p"].bool_param = True
    for name, values in (("OUTPUT0", [2] * 16), ("OUTPUT1", [0] * 16)):
        out = response.outputs.add(name=name, datatype="INT32", shape=[1, 16])
        out.parameters["content_type"].string_param = "np"
        response.raw_output_contents.append(raw(values))
    renames = {f"{SRC_OUT}.OUTPUT0": "INPUT0", f"{SRC_OUT}.OUTPUT1": "INPUT1"}
    value = transform(ChainKind.RESPONSE_TO_REQUEST, response.SerializeToString(), None, renames, SRC_OUT)
    request = parsed(ChainKind.RESPONSE_TO_REQUEST, value)
    assert request.id == "abc" and request.parameters["p"].bool_param
    assert request.model_name == "" and request.model_version == "" and not request.outputs
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("INPUT0", "INT32", [1, 16]),
        ("INPUT1", "INT32", [1, 16]),
    ]
    assert all(t.parameters["content_type"].string_param == "np" for t in request.inputs)
    assert list(request.raw_input_contents) == [raw([2] * 16), raw([0] * 16)]


SUBSETS: list[frozenset[str] | None] = [None, frozenset(), frozenset({"T1"}), frozenset({"T0", "T2", "nope"})]
RENAMES = [{}, {"T1": "X1"}, {"T0": "A", "T2": "C"}, {"T2": "T2"}]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("use_raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize(("subset", "names"), list(itertools.product(SUBSETS, RENAMES)))
def test_every_kind_as_seldon(
    kind: ChainKind, use_raw: bool, subset: frozenset[str] | None, names: dict[str, str]
) -> None:
    topic = source_topic(kind)
    msg = message(kind, 3, use_raw=use_raw)
    renames = {f"{topic}.{old}": new for old, new in names.items()}
    value = transform(kind, msg.SerializeToString(), subset, renames, topic)
    assert parsed(kind, value) == expected(kind, msg, subset, renames, topic)


@pytest.mark.parametrize("kind", [ChainKind.REQUEST_FILTER, ChainKind.RESPONSE_FILTER], ids=lambda k: k.name)
def test_unchanged_filter_returns_the_same_bytes(kind: ChainKind) -> None:
    msg = message(kind, 3)
    if kind is ChainKind.REQUEST_FILTER:
        msg.ClearField("outputs")
    value = msg.SerializeToString()
    topic = source_topic(kind)
    assert transform(kind, value, None, {}, topic) is value
    assert transform(kind, value, frozenset(), {}, topic) is value
    assert transform(kind, value, frozenset({"T0", "T1", "T2"}), {}, topic) is value
    assert transform(kind, value, None, {f"{topic}.T1": "T1", "other.topic.T0": "Z"}, topic) is value


def test_request_filter_drops_requested_outputs() -> None:
    msg = message(ChainKind.REQUEST_FILTER)
    value = transform(ChainKind.REQUEST_FILTER, msg.SerializeToString(), None, {}, SRC_IN)
    out = parsed(ChainKind.REQUEST_FILTER, value)
    assert not out.outputs
    msg.ClearField("outputs")
    assert out == msg  # everything else as it was, model_name included


def test_filters_keep_other_fields_conversions_only_id_and_parameters() -> None:
    msg = message(ChainKind.RESPONSE_FILTER, 2)
    value = transform(ChainKind.RESPONSE_FILTER, msg.SerializeToString(), frozenset({"T1"}), {}, SRC_OUT)
    out = parsed(ChainKind.RESPONSE_FILTER, value)
    assert (out.model_name, out.model_version, out.id) == ("tfsimple1", "1", "req-1")
    value = transform(ChainKind.RESPONSE_TO_REQUEST, msg.SerializeToString(), None, {}, SRC_OUT)
    converted = parsed(ChainKind.RESPONSE_TO_REQUEST, value)
    assert (converted.model_name, converted.model_version, converted.id) == ("", "", "req-1")
    assert dict(converted.parameters) == dict(msg.parameters)


def test_subset_keeps_raw_contents_aligned() -> None:
    msg = message(ChainKind.RESPONSE_TO_REQUEST, 3)
    value = transform(
        ChainKind.RESPONSE_TO_REQUEST, msg.SerializeToString(), frozenset({"T2", "T1"}), {}, SRC_OUT
    )
    out = parsed(ChainKind.RESPONSE_TO_REQUEST, value)
    assert [t.name for t in out.inputs] == ["T1", "T2"]  # source order, not subset order
    assert list(out.raw_input_contents) == [raw([10, 11, 12, 13]), raw([20, 21, 22, 23])]


def test_fewer_raw_contents_than_tensors_follow_seldons_indexing() -> None:
    msg = message(ChainKind.RESPONSE_FILTER, 3)
    del msg.raw_output_contents[2]
    value = transform(
        ChainKind.RESPONSE_FILTER, msg.SerializeToString(), frozenset({"T0", "T2"}), {}, SRC_OUT
    )
    out = parsed(ChainKind.RESPONSE_FILTER, value)
    assert [t.name for t in out.outputs] == ["T0", "T2"]
    assert list(out.raw_output_contents) == [raw([0, 1, 2, 3])]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_nothing_left_drops_the_record(kind: ChainKind) -> None:
    topic = source_topic(kind)
    msg = message(kind, 2)
    assert transform(kind, msg.SerializeToString(), frozenset({"OTHER"}), {}, topic) is None
    empty = message(kind, 0)
    assert transform(kind, empty.SerializeToString(), None, {}, topic) is None
    assert transform(kind, b"", None, {}, topic) is None


def test_renames_need_the_source_topic_in_the_key() -> None:
    msg = message(ChainKind.RESPONSE_TO_REQUEST, 2)
    value = msg.SerializeToString()
    for renames in ({"T0": "X"}, {"seldon.default.model.other.outputs.T0": "X"}, {f"{SRC_OUT}.T0.x": "X"}):
        out = parsed(
            ChainKind.RESPONSE_TO_REQUEST,
            transform(ChainKind.RESPONSE_TO_REQUEST, value, None, renames, SRC_OUT),
        )
        assert [t.name for t in out.inputs] == ["T0", "T1"]
    out = parsed(
        ChainKind.RESPONSE_TO_REQUEST,
        transform(ChainKind.RESPONSE_TO_REQUEST, value, None, {f"{SRC_OUT}.T0": "X"}, SRC_OUT),
    )
    assert [t.name for t in out.inputs] == ["X", "T1"]


def test_rename_and_subset_together() -> None:
    msg = message(ChainKind.RESPONSE_FILTER, 3)
    renames = {f"{SRC_OUT}.T2": "result", f"{SRC_OUT}.T0": "unused"}
    value = transform(ChainKind.RESPONSE_FILTER, msg.SerializeToString(), frozenset({"T2"}), renames, SRC_OUT)
    out = parsed(ChainKind.RESPONSE_FILTER, value)
    assert [t.name for t in out.outputs] == ["result"]
    assert list(out.raw_output_contents) == [raw([20, 21, 22, 23])]
    assert out.outputs[0].parameters["i"].int64_param == 2


def test_large_payloads_and_long_names() -> None:
    """Lengths that need multi-byte varints: 1 MiB raw contents, a 300-character name."""
    big = np.arange(262144, dtype="<f4")
    response = pb2.ModelInferResponse(id="big")
    response.outputs.add(name="image", datatype="FP32", shape=[1, 262144])
    response.outputs.add(name="x" * 200, datatype="BYTES", shape=[1])
    response.raw_output_contents.extend([big.tobytes(), b"\x03\x00\x00\x00abc"])
    long_name = "n" * 300
    renames = {f"{SRC_OUT}.image": long_name}
    value = transform(ChainKind.RESPONSE_TO_REQUEST, response.SerializeToString(), None, renames, SRC_OUT)
    out = parsed(ChainKind.RESPONSE_TO_REQUEST, value)
    assert [t.name for t in out.inputs] == [long_name, "x" * 200]
    assert np.array_equal(np.frombuffer(out.raw_input_contents[0], dtype="<f4"), big)
    assert out.raw_input_contents[1] == b"\x03\x00\x00\x00abc"


def test_unicode_tensor_names() -> None:
    msg = pb2.ModelInferResponse(id="u")
    msg.outputs.add(name="température", datatype="FP32", shape=[1])
    msg.raw_output_contents.append(raw([1], "<f4"))
    value = transform(
        ChainKind.RESPONSE_FILTER,
        msg.SerializeToString(),
        frozenset({"température"}),
        {f"{SRC_OUT}.température": "t°"},
        SRC_OUT,
    )
    assert [t.name for t in parsed(ChainKind.RESPONSE_FILTER, value).outputs] == ["t°"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_pass_through_and_the_error_route(kind: ChainKind) -> None:
    error = b"model tfsimple1 failed: boom"
    assert (
        transform(ChainKind.PASS_THROUGH, error, frozenset({"x"}), {"a": "b"}, "seldon.default.errors.errors")
        is error
    )
    msg = message(kind).SerializeToString()
    assert transform(ChainKind.PASS_THROUGH, msg, None, {}, source_topic(kind)) is msg


@pytest.mark.parametrize(
    ("value", "subset"),
    [
        (b"\xff", None),  # a truncated varint
        (b"\xff" * 11, None),  # a varint too long
        (b"\x2a\x05ab", None),  # a tensor longer than the record
        (b"\x28\x01", None),  # tensors with the wrong wire type
        (b"\x32\x00\x33", None),  # a group (wire type 3)
        (b"\x00\x01", None),  # field number 0
        (b"\x1d\x00\x00", None),  # a fixed32 cut short
        (b"\x2a\x03\x0a\x01\xff", frozenset({"a"})),  # a tensor name that is not UTF-8
        (b"\x2a\x02\x08\x01", frozenset({"a"})),  # a tensor name with the wrong wire type
        (b"\x2a\x02\x0a\x05", frozenset({"a"})),  # a tensor name longer than its tensor
    ],
)
def test_malformed_records(value: bytes, subset: frozenset[str] | None) -> None:
    with pytest.raises(
        InvalidInputError, match=rf"a record from {SRC_OUT} is not a valid ModelInferResponse"
    ):
        transform(ChainKind.RESPONSE_TO_REQUEST, value, subset, {}, SRC_OUT)
    with pytest.raises(InvalidInputError, match="is not a valid ModelInferRequest"):
        transform(ChainKind.REQUEST_FILTER, value, subset, {}, SRC_OUT)


def test_unknown_fields_survive_filters_only() -> None:
    msg = message(ChainKind.RESPONSE_FILTER, 2)
    value = msg.SerializeToString() + b"\xa0\x06\x2a"  # field 100, varint 42
    filtered = transform(ChainKind.RESPONSE_FILTER, value, frozenset({"T0"}), {}, SRC_OUT)
    converted = transform(ChainKind.RESPONSE_TO_REQUEST, value, None, {}, SRC_OUT)
    assert filtered is not None and b"\xa0\x06\x2a" in filtered
    assert converted is not None and b"\xa0\x06\x2a" not in converted


# ------------------------------------------------------------------------------------------- headers


def test_adjust_headers() -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("pipeline", b"upstream"),
        ("x-request-id", b"r1"),
        ("x-seldon-alibi-type", b"outlier"),
        ("x-pipeline-version", b"3"),
        ("x-seldon-alibi-method", b"vae"),
        ("x-custom", None),
        ("pipeline", b"again"),
        ("traceparent", b"00-abc"),
    ]
    assert adjust_headers(headers, "tfsimples", "2") == [
        ("x-request-id", b"r1"),
        ("x-custom", None),
        ("traceparent", b"00-abc"),
        ("pipeline", b"tfsimples"),
        ("x-pipeline-version", b"2"),
    ]
    assert adjust_headers(None, "p", "1") == [("pipeline", b"p"), ("x-pipeline-version", b"1")]
    assert adjust_headers([], "p", "1") == [("pipeline", b"p"), ("x-pipeline-version", b"1")]

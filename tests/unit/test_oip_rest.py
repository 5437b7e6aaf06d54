"""REST codec: JSON and binary tensor data, requested outputs, validation errors, tritonclient interop."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.http import InferenceServerClient, InferResult

from headrace.config.errors import ErrorKind, InvalidInputError
from headrace.gateway.control import TensorSpec
from headrace.gateway.errors import http_status
from headrace.gateway.oip import rest
from headrace.gateway.oip.types import InferRequest, InferResponse, RequestedOutput, Tensor

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 2], [127, 128, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 2], [300, 40000, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2], [70000, 2**31, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2], [2**32, 2**63, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, -1, 0], [1, 100, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), -1, 0], [1, 1000, 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), -1, 0], [1, 10**6, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), -1, 0], [1, 10**12, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 0.0999], [65504, -65504, 6e-5]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 1e-30], [3.4e38, -3.4e38, 1.0]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e-300], [1.7e308, -1.7e308, 1 / 3]], dtype=np.float64),
    "BYTES": np.array(
        [[b"a", b"", b"hello world"], ["\u00e9t\u00e9".encode(), b"x" * 40, b"0"]], dtype=object
    ),
}
DATATYPES = list(SAMPLES)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object:
        as_bytes = [v if isinstance(v, bytes) else str(v).encode() for v in actual.reshape(-1)]
        assert as_bytes == list(expected.reshape(-1))
    else:
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


def json_body(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def decode(doc: dict[str, Any]) -> InferRequest:
    return rest.decode_request(json_body(doc), None, "m", None)


def binary_body(doc: dict[str, Any], *buffers: bytes) -> tuple[bytes, int]:
    header = orjson.dumps(doc)
    return header + b"".join(buffers), len(header)


def joined(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def triton_result(response: InferResponse, request: InferRequest | None) -> InferResult:
    parts, header_length = rest.encode_response(response, request)
    return InferResult.from_response_body(joined(parts), header_length=header_length)


def json_list(arr: np.ndarray) -> list[Any]:
    flat = arr.reshape(-1).tolist()
    return [v.decode() if isinstance(v, bytes) else v for v in flat]


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dt", DATATYPES)
def test_json_data_roundtrip(dt: str) -> None:
    arr = SAMPLES[dt]
    req = decode({"inputs": [{"name": "x", "datatype": dt, "shape": [2, 3], "data": json_list(arr)}]})
    t = req.inputs[0]
    assert t.raw is None and isinstance(t.data, list)
    assert_same(t.to_numpy(), arr)


@pytest.mark.parametrize("dt", DATATYPES)
def test_nested_json_data_kept_as_list(dt: str) -> None:
    arr = SAMPLES[dt]
    nested = [json_list(row) for row in arr]
    req = decode({"inputs": [{"name": "x", "datatype": dt, "shape": [2, 3], "data": nested}]})
    t = req.inputs[0]
    assert t.data is nested or t.data == nested
    assert_same(t.to_numpy(), arr)
    assert t.to_list() == json_list(arr)


@pytest.mark.parametrize("dt", DATATYPES)
def test_binary_data_roundtrip_is_zero_copy(dt: str) -> None:
    arr = SAMPLES[dt]
    raw = Tensor.from_numpy("x", arr).raw_bytes()
    raw = bytes(raw)
    doc = {
        "inputs": [
            {"name": "x", "datatype": dt, "shape": [2, 3], "parameters": {"binary_data_size": len(raw)}}
        ]
    }
    body, hl = binary_body(doc, raw)
    req = rest.decode_request(body, hl, "m", "2")
    t = req.inputs[0]
    assert isinstance(t.raw, memoryview)
    assert t.raw.obj is body  # a slice of the body, not a copy
    assert t.parameters == {}  # binary_data_size is transport detail
    assert_same(t.to_numpy(), arr)
    assert req.model_name == "m" and req.model_version == "2"


@pytest.mark.parametrize("dt", DATATYPES)
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_request_body_decodes(dt: str, binary: bool) -> None:
    arr = SAMPLES[dt]
    inp = httpclient.InferInput("x", list(arr.shape), dt)
    inp.set_data_from_numpy(arr, binary_data=binary)
    other = httpclient.InferInput("y", [2], "INT32")
    other.set_data_from_numpy(np.array([7, 8], dtype=np.int32), binary_data=not binary)
    outputs = [httpclient.InferRequestedOutput("out", binary_data=binary)]
    body, hl = InferenceServerClient.generate_request_body(
        [inp, other], outputs=outputs, request_id="abc", parameters={"custom": "v", "n": 3}
    )
    req = rest.decode_request(body, hl, "m", None)
    assert [t.name for t in req.inputs] == ["x", "y"]
    assert_same(req.inputs[0].to_numpy(), arr)
    assert_same(req.inputs[1].to_numpy(), np.array([7, 8], dtype=np.int32))
    assert (req.inputs[0].raw is not None) is binary
    assert req.id == "abc"
    assert req.parameters == {"custom": "v", "n": 3}
    assert req.outputs is not None and req.outputs[0].name == "out"
    assert req.outputs[0].parameters["binary_data"] is binary


def test_tritonclient_default_outputs_ask_for_binary() -> None:
    inp = httpclient.InferInput("x", [2], "FP32")
    inp.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
    body, hl = InferenceServerClient.generate_request_body([inp])
    req = rest.decode_request(body, hl, "m", None)
    assert req.parameters == {"binary_data_output": True}
    resp = InferResponse("m", [Tensor.from_numpy("y", np.array([3, 4], dtype=np.float32))])
    parts, header_length = rest.encode_response(resp, req)
    assert header_length is not None and len(parts) == 2
    result = InferResult.from_response_body(joined(parts), header_length=header_length)
    assert_same(result.as_numpy("y"), np.array([3, 4], dtype=np.float32))


@pytest.mark.parametrize("dt", DATATYPES)
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("source", ["raw", "data"])
def test_response_decodes_with_tritonclient(dt: str, binary: bool, source: str) -> None:
    arr = SAMPLES[dt]
    if source == "raw":
        out = Tensor.from_numpy("y", arr)
    else:
        out = Tensor(name="y", datatype=dt, shape=[2, 3], data=json_list(arr))
    resp = InferResponse("m", [out], model_version="1", parameters={"p": 1})
    req = InferRequest("m", [], parameters={"binary_data_output": binary})
    parts, header_length = rest.encode_response(resp, req)
    assert (header_length is not None) is binary
    result = InferResult.from_response_body(joined(parts), header_length=header_length)
    assert_same(result.as_numpy("y"), arr)
    header = orjson.loads(joined(parts)[: header_length or None])
    assert header["model_name"] == "m" and header["model_version"] == "1"
    assert header["parameters"] == {"p": 1}
    if binary:
        assert "data" not in header["outputs"][0]
    else:
        data = header["outputs"][0]["data"]
        assert isinstance(data, list) and len(data) == 6  # a flat list
        assert_same(np.array(data, dtype=arr.dtype).reshape(2, 3), arr)
        assert "parameters" not in header["outputs"][0]


def test_binary_output_parts_are_not_copied() -> None:
    arr = np.arange(1000, dtype=np.float64)
    out = Tensor.from_numpy("y", arr)
    req = InferRequest("m", [], parameters={"binary_data_output": True})
    parts, hl = rest.encode_response(InferResponse("m", [out]), req)
    assert len(parts) == 2 and parts[1] is out.raw
    header = orjson.loads(parts[0])
    assert hl == len(parts[0])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8000}


def test_json_output_of_float32_is_shortest_repr() -> None:
    out = Tensor.from_numpy("y", np.array([0.1, 0.5], dtype=np.float32))
    parts, hl = rest.encode_response(InferResponse("m", [out]), None)
    assert hl is None
    assert orjson.loads(parts[0])["outputs"][0]["data"] == [0.1, 0.5]


def test_empty_tensors() -> None:
    req = decode({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 3], "data": []}]})
    assert req.inputs[0].to_numpy().shape == (0, 3)
    doc = {"inputs": [{"name": "x", "datatype": "INT8", "shape": [0], "parameters": {"binary_data_size": 0}}]}
    body, hl = binary_body(doc)
    assert rest.decode_request(body, hl, "m", None).inputs[0].to_numpy().shape == (0,)
    out = Tensor.from_numpy("y", np.zeros((2, 0), dtype=np.int32))
    for binary in (True, False):
        req2 = InferRequest("m", [], parameters={"binary_data_output": binary})
        result = triton_result(InferResponse("m", [out]), req2)
        assert result.as_numpy("y").shape == (2, 0)


def test_several_binary_inputs_in_order_with_json_between() -> None:
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    b = np.array([b"xy", b"z"], dtype=object)
    c = np.array([1.5, 2.5], dtype=np.float64)
    rb = bytes(Tensor.from_numpy("b", b).raw_bytes())
    doc = {
        "inputs": [
            {"name": "a", "datatype": "INT16", "shape": [2, 3], "parameters": {"binary_data_size": 12}},
            {"name": "j", "datatype": "BOOL", "shape": [1], "data": [True]},
            {"name": "b", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(rb)}},
            {"name": "c", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16, "k": 1}},
        ]
    }
    body, hl = binary_body(doc, a.tobytes(), rb, c.tobytes())
    req = rest.decode_request(bytearray(body), hl, "m", None)
    got = {t.name: t.to_numpy() for t in req.inputs}
    assert_same(got["a"], a)
    assert_same(got["j"], np.array([True]))
    assert_same(got["b"], b)
    assert_same(got["c"], c)
    assert req.inputs[3].parameters == {"k": 1}


def test_memoryview_body_accepted() -> None:
    arr = np.arange(4, dtype=np.uint32)
    doc = {
        "inputs": [{"name": "x", "datatype": "UINT32", "shape": [4], "parameters": {"binary_data_size": 16}}]
    }
    body, hl = binary_body(doc, arr.tobytes())
    req = rest.decode_request(memoryview(body), hl, "m", None)
    assert_same(req.inputs[0].to_numpy(), arr)


def test_header_length_equal_to_body_means_no_binary() -> None:
    body = json_body({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]})
    req = rest.decode_request(body, len(body), "m", None)
    assert req.inputs[0].data == [1]


# --------------------------------------------------------------------------- outputs and parameters


def _two_outputs() -> InferResponse:
    return InferResponse(
        "m",
        [
            Tensor.from_numpy("a", np.array([1, 2], dtype=np.int32)),
            Tensor.from_numpy("b", np.array([3.5], dtype=np.float32), parameters={"unit": "cm"}),
        ],
    )


def test_requested_outputs_filter_in_model_order() -> None:
    req = InferRequest("m", [], outputs=[RequestedOutput("b"), RequestedOutput("a")])
    parts, _ = rest.encode_response(_two_outputs(), req)
    outs = orjson.loads(parts[0])["outputs"]
    assert [o["name"] for o in outs] == ["a", "b"]
    req = InferRequest("m", [], outputs=[RequestedOutput("b")])
    parts, _ = rest.encode_response(_two_outputs(), req)
    outs = orjson.loads(parts[0])["outputs"]
    assert [o["name"] for o in outs] == ["b"]
    assert outs[0] == {
        "name": "b",
        "datatype": "FP32",
        "shape": [1],
        "parameters": {"unit": "cm"},
        "data": [3.5],
    }


def test_unknown_requested_output_is_named() -> None:
    req = InferRequest("m", [], outputs=[RequestedOutput("a"), RequestedOutput("nope")])
    with pytest.raises(InvalidInputError, match="'nope'") as err:
        rest.encode_response(_two_outputs(), req)
    assert "outputs: a, b" in err.value.message


@pytest.mark.parametrize(
    ("request_params", "flags", "expect_binary"),
    [
        ({}, {"a": None, "b": None}, {"a": False, "b": False}),
        ({"binary_data_output": True}, {"a": None, "b": None}, {"a": True, "b": True}),
        ({"binary_data_output": True}, {"a": False, "b": None}, {"a": False, "b": True}),
        ({}, {"a": True, "b": False}, {"a": True, "b": False}),
        ({"binary_data_output": False}, {"a": None, "b": True}, {"a": False, "b": True}),
    ],
)
def test_binary_data_flags(
    request_params: dict[str, Any], flags: dict[str, bool | None], expect_binary: dict[str, bool]
) -> None:
    outputs = [
        RequestedOutput(name, {} if flag is None else {"binary_data": flag}) for name, flag in flags.items()
    ]
    req = InferRequest("m", [], parameters=request_params, outputs=outputs)
    resp = _two_outputs()
    parts, hl = rest.encode_response(resp, req)
    body = joined(parts)
    header = orjson.loads(body[: hl or None])
    for out in header["outputs"]:
        binary = "binary_data_size" in out.get("parameters", {})
        assert binary is expect_binary[out["name"]]
        assert ("data" in out) is not binary
    assert (hl is not None) is any(expect_binary.values())
    result = InferResult.from_response_body(body, header_length=hl)
    assert_same(result.as_numpy("a"), np.array([1, 2], dtype=np.int32))
    assert_same(result.as_numpy("b"), np.array([3.5], dtype=np.float32))


def test_tritonclient_requested_outputs_binary_flags() -> None:
    inp = httpclient.InferInput("x", [1], "INT8")
    inp.set_data_from_numpy(np.array([1], dtype=np.int8))
    outputs = [httpclient.InferRequestedOutput("a", binary_data=False), httpclient.InferRequestedOutput("b")]
    body, hl = InferenceServerClient.generate_request_body([inp], outputs=outputs)
    req = rest.decode_request(body, hl, "m", None)
    parts, header_length = rest.encode_response(_two_outputs(), req)
    header = orjson.loads(joined(parts)[:header_length])
    assert header["outputs"][0]["data"] == [1, 2]
    assert header["outputs"][1]["parameters"] == {"unit": "cm", "binary_data_size": 4}
    result = InferResult.from_response_body(joined(parts), header_length=header_length)
    assert_same(result.as_numpy("b"), np.array([3.5], dtype=np.float32))


def test_parameters_of_every_type_pass_through() -> None:
    params = {
        "b": True,
        "i": -3,
        "u": 2**64 - 1,
        "f": 0.25,
        "s": "text",
        "n": None,
        "l": [1, "x"],
        "d": {"k": 1},
    }
    doc = {
        "id": "req-1",
        "parameters": params,
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1], "parameters": params}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False, **params}}, {"name": "z"}],
    }
    req = decode(doc)
    assert req.id == "req-1"
    assert req.parameters == params
    assert req.inputs[0].parameters == params
    assert req.outputs == [
        RequestedOutput("y", {"binary_data": False, **params}),
        RequestedOutput("z", {}),
    ]
    resp = InferResponse(
        "m",
        [
            Tensor.from_numpy("y", np.array([1], dtype=np.int8), parameters=params),
            Tensor.from_numpy("z", np.array([2], dtype=np.int8)),
        ],
        parameters=params,
    )
    parts, _ = rest.encode_response(resp, req)
    header = orjson.loads(parts[0])
    assert header["id"] == "req-1"  # echoed from the request
    assert header["parameters"] == params
    assert header["outputs"][0]["parameters"] == params
    assert header["outputs"][0]["data"] == [1]


def test_response_omits_empty_optional_fields() -> None:
    out = Tensor.from_numpy("y", np.array([1], dtype=np.int8))
    parts, _ = rest.encode_response(InferResponse("m", [out]), None)
    assert orjson.loads(parts[0]) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "INT8", "shape": [1], "data": [1]}],
    }
    parts, _ = rest.encode_response(InferResponse("m", [out], id="own"), InferRequest("m", [], id="req"))
    assert orjson.loads(parts[0])["id"] == "own"


def test_stale_binary_data_size_is_not_echoed_in_json_output() -> None:
    out = Tensor.from_numpy("y", np.array([1, 2], dtype=np.int8), parameters={"binary_data_size": 2, "k": 1})
    parts, hl = rest.encode_response(InferResponse("m", [out]), None)
    assert hl is None
    assert orjson.loads(parts[0])["outputs"][0]["parameters"] == {"k": 1}


def test_non_utf8_bytes_output_needs_binary() -> None:
    out = Tensor.from_numpy("y", np.array([b"\xff\xfe"], dtype=object))
    with pytest.raises(InvalidInputError, match="binary_data"):
        rest.encode_response(InferResponse("m", [out]), None)
    req = InferRequest("m", [], outputs=[RequestedOutput("y", {"binary_data": True})])
    assert triton_result(InferResponse("m", [out]), req).as_numpy("y").tolist() == [b"\xff\xfe"]


def test_bytes_data_output_given_as_bytes_is_written_as_strings() -> None:
    out = Tensor(name="y", datatype="BYTES", shape=[2], data=[b"ab", "cd"])
    parts, _ = rest.encode_response(InferResponse("m", [out]), None)
    assert orjson.loads(parts[0])["outputs"][0]["data"] == ["ab", "cd"]


def test_output_with_wrong_raw_size_is_a_model_error() -> None:
    out = Tensor(name="y", datatype="FP32", shape=[3], raw=b"\x00" * 8)
    with pytest.raises(Exception, match="'y' has 2 elements") as err:
        rest.encode_response(InferResponse("m", [out]), None)
    assert getattr(err.value, "kind", None) is ErrorKind.MODEL_ERROR


# ------------------------------------------------------------------------------------- bad requests


def _inp(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({}, "no 'inputs'"),
        ({"inputs": {}}, "'inputs' must be a list"),
        ({"inputs": [3]}, "inputs[0] must be an object"),
        ({"inputs": [_inp(name=_DROP)]}, "inputs[0] has no 'name'"),
        ({"inputs": [_inp(name=5)]}, "'name' must be a non-empty string"),
        ({"inputs": [_inp(datatype=_DROP)]}, "input 'x' has no 'datatype'"),
        ({"inputs": [_inp(datatype="FLOAT")]}, "input 'x' has unknown datatype 'FLOAT'"),
        ({"inputs": [_inp(datatype="fp32")]}, "unknown datatype 'fp32'"),
        ({"inputs": [_inp(shape=_DROP)]}, "input 'x' has no 'shape'"),
        ({"inputs": [_inp(shape=2)]}, "input 'x' shape must be a list of non-negative integers"),
        ({"inputs": [_inp(shape=[-1])]}, "input 'x' shape must be a list of non-negative integers, got [-1]"),
        ({"inputs": [_inp(shape=[2.0])]}, "non-negative integers"),
        ({"inputs": [_inp(shape=[True, 2])]}, "non-negative integers"),
        ({"inputs": [_inp(data=_DROP)]}, "input 'x' has neither 'data' nor parameters.binary_data_size"),
        ({"inputs": [_inp(data=None)]}, "neither 'data' nor"),
        ({"inputs": [_inp(data=5)]}, "input 'x' data must be a list"),
        ({"inputs": [_inp(data=[1, 2, 3])]}, "input 'x' has 3 data elements but shape [2] needs 2"),
        ({"inputs": [_inp(shape=[2, 2], data=[[1, 2], [3]])]}, "input 'x' data is ragged"),
        ({"inputs": [_inp(shape=[2, 2], data=[[1, 2], 3, 4])]}, "ragged"),
        ({"inputs": [_inp(shape=[3], data=[1, [2], 3])]}, "mixes nested lists and scalars"),
        ({"inputs": [_inp(shape=[2, 2], data=[[1, 2], [3, 4, 5]])]}, "ragged"),
        ({"inputs": [_inp(data=[1, 2.5])]}, "input 'x' element 1 is 2.5 (a number) but INT32 needs integers"),
        ({"inputs": [_inp(data=[True, 1])]}, "element 0 is True (a boolean) but INT32 needs integers"),
        ({"inputs": [_inp(data=[1, "2"])]}, "element 1 is '2' (a string)"),
        (
            {"inputs": [_inp(datatype="INT8", data=[1, 128])]},
            "element 1 value 128 is out of range for INT8 [-128, 127]",
        ),
        ({"inputs": [_inp(datatype="INT8", data=[-129, 1])]}, "value -129 is out of range for INT8"),
        ({"inputs": [_inp(datatype="UINT8", data=[256, 1])]}, "value 256 is out of range for UINT8 [0, 255]"),
        ({"inputs": [_inp(datatype="UINT16", data=[1, -1])]}, "value -1 is out of range for UINT16"),
        ({"inputs": [_inp(datatype="INT16", data=[1, 2**15])]}, "out of range for INT16"),
        ({"inputs": [_inp(datatype="UINT32", data=[2**32, 0])]}, "out of range for UINT32"),
        ({"inputs": [_inp(datatype="INT64", data=[2**63, 0])]}, "out of range for INT64"),
        ({"inputs": [_inp(datatype="UINT64", data=[-1, 0])]}, "out of range for UINT64"),
        (
            {"inputs": [_inp(datatype="FP32", data=[1.0, "x"])]},
            "element 1 is 'x' (a string) but FP32 needs numbers",
        ),
        ({"inputs": [_inp(datatype="FP16", data=[True, 1.0])]}, "but FP16 needs numbers"),
        (
            {"inputs": [_inp(datatype="FP64", data=[None, 1.0])]},
            "element 0 is None (null) but FP64 needs numbers",
        ),
        (
            {"inputs": [_inp(datatype="BOOL", data=[True, 1])]},
            "element 1 is 1 (a number) but BOOL needs true or false",
        ),
        (
            {"inputs": [_inp(datatype="BYTES", data=["a", 1])]},
            "element 1 is 1 (a number) but BYTES needs strings",
        ),
        ({"inputs": [_inp(parameters=[])]}, "input 'x' 'parameters' must be an object"),
        (
            {"inputs": [_inp(parameters={"binary_data_size": 8})]},
            "input 'x' has both 'data' and parameters.binary_data_size",
        ),
        (
            {"inputs": [_inp(data=_DROP, parameters={"binary_data_size": -8})]},
            "binary_data_size must be a non-negative",
        ),
        (
            {"inputs": [_inp(data=_DROP, parameters={"binary_data_size": "8"})]},
            "binary_data_size must be a non-negative",
        ),
        ({"inputs": [_inp(), _inp()]}, "input 'x' is given more than once"),
        ({"inputs": [_inp()], "parameters": 3}, "request 'parameters' must be an object"),
        ({"inputs": [_inp()], "id": 7}, "request 'id' must be a string"),
        ({"inputs": [_inp()], "outputs": {}}, "request 'outputs' must be a list"),
        ({"inputs": [_inp()], "outputs": ["y"]}, "outputs[0] must be an object"),
        ({"inputs": [_inp()], "outputs": [{}]}, "outputs[0] has no 'name'"),
        (
            {"inputs": [_inp()], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "requested output 'y' parameter binary_data must be true or false",
        ),
    ],
)
def test_bad_json_requests(doc: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        rest.decode_request(orjson.dumps(doc), None, "m", None)
    assert message in err.value.message
    assert http_status(err.value.kind) == 400


def test_malformed_json() -> None:
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        rest.decode_request(b'{"inputs": [', None, "m", None)
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        rest.decode_request(b"", None, "m", None)


def _binary_doc(*sizes: int, datatype: str = "FP32", shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": f"x{i}",
                "datatype": datatype,
                "shape": shape or [2],
                "parameters": {"binary_data_size": s},
            }
            for i, s in enumerate(sizes)
        ]
    }


def test_bad_binary_requests() -> None:
    def fails(body: bytes, hl: int | None, message: str) -> None:
        with pytest.raises(InvalidInputError) as err:
            rest.decode_request(body, hl, "m", None)
        assert message in err.value.message, err.value.message

    body, hl = binary_body(_binary_doc(8), b"\x00" * 8)
    fails(
        body,
        len(body) + 1,
        f"Inference-Header-Content-Length {len(body) + 1} is larger than the request body",
    )
    fails(body, -1, "must not be negative")
    fails(body, None, "not valid JSON")  # header length missing: the whole body is not JSON
    fails(body[:hl], None, "input 'x0' has parameters.binary_data_size but the request has no binary data")
    # sizes do not add up to the remainder
    body, hl = binary_body(_binary_doc(8), b"\x00" * 12)
    fails(body, hl, "the body has 12 bytes of binary data but the inputs' binary_data_size add up to 8")
    body, hl = binary_body(_binary_doc(8, 8), b"\x00" * 12)
    fails(body, hl, "input 'x1' has binary_data_size 8 but only 4 bytes of binary data are left")
    body, hl = binary_body({"inputs": [_inp()]}, b"\x00" * 4)
    fails(body, hl, "the body has 4 bytes of binary data but the inputs' binary_data_size add up to 0")
    # size does not match count * itemsize
    body, hl = binary_body(_binary_doc(6), b"\x00" * 6)
    fails(body, hl, "input 'x0' has 6 bytes of binary data but FP32 [2] needs 8 (2 x 4 bytes)")
    body, hl = binary_body(_binary_doc(16, datatype="FP64", shape=[3]), b"\x00" * 16)
    fails(body, hl, "FP64 [3] needs 24")
    # malformed BYTES
    good = b"\x01\x00\x00\x00a\x01\x00\x00\x00b"
    body, hl = binary_body(_binary_doc(len(good), datatype="BYTES", shape=[3]), good)
    fails(body, hl, "input 'x0' holds 2 BYTES elements but shape [3] needs 3")
    bad = b"\x05\x00\x00\x00ab"
    body, hl = binary_body(_binary_doc(len(bad), datatype="BYTES", shape=[1]), bad)
    fails(body, hl, "input 'x0': BYTES tensor data is truncated")
    bad = b"\x01\x00\x00\x00a\x00\x00"
    body, hl = binary_body(_binary_doc(len(bad), datatype="BYTES", shape=[1]), bad)
    fails(body, hl, "truncated (incomplete length prefix)")


def test_tritonclient_body_with_wrong_header_length() -> None:
    inp = httpclient.InferInput("x", [4], "FP32")
    inp.set_data_from_numpy(np.zeros(4, dtype=np.float32))
    body, hl = InferenceServerClient.generate_request_body([inp])
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        rest.decode_request(body, hl + 3, "m", None)


# -------------------------------------------------------------------------------- errors, metadata


def test_encode_error() -> None:
    assert orjson.loads(rest.encode_error('bad "x"')) == {"error": 'bad "x"'}


def test_metadata_bodies() -> None:
    doc = orjson.loads(rest.encode_server_metadata("headrace", "0.1.0", ["binary_tensor_data"]))
    assert doc == {"name": "headrace", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    doc = orjson.loads(
        rest.encode_model_metadata(
            "m", ["1"], "python", [TensorSpec("x", "FP32", [-1, 3])], (TensorSpec("y", "INT64", [1]),)
        )
    )
    assert doc == {
        "name": "m",
        "versions": ["1"],
        "platform": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [1]}],
    }


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ErrorKind.INVALID_ARGUMENT, 400),
        (ErrorKind.NOT_FOUND, 404),
        (ErrorKind.TOO_LARGE, 413),
        (ErrorKind.UNAVAILABLE, 503),
        (ErrorKind.TIMEOUT, 504),
        (ErrorKind.MODEL_ERROR, 500),
        (ErrorKind.INTERNAL, 500),
        (ErrorKind.CONFLICT, 409),
    ],
)
def test_http_status(kind: ErrorKind, status: int) -> None:
    assert http_status(kind) == status


def test_every_kind_has_an_http_status() -> None:
    for kind in ErrorKind:
        assert 400 <= http_status(kind) < 600


def test_float_inputs_accept_json_integers_and_nested_bytes() -> None:
    req = decode(
        {
            "inputs": [
                {"name": "f", "datatype": "FP32", "shape": [3], "data": [1, 2.5, -3]},
                {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": [["ab"], ["\u00e9"]]},
            ]
        }
    )
    assert_same(req.inputs[0].to_numpy(), np.array([1, 2.5, -3], dtype=np.float32))
    assert_same(req.inputs[1].to_numpy(), np.array([[b"ab"], ["\u00e9".encode()]], dtype=object))

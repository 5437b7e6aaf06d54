"""gRPC codec tests: raw and typed contents, parameters, requested outputs, errors, tritonclient interop."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import _utils as grpc_utils

from headrace.config.errors import ErrorKind, HeadraceError, InvalidInputError
from headrace.gateway.errors import grpc_code
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import SERVICE_NAME, pb2, pb2_grpc
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
    "FP16": np.array([[0.5, -1.25, 0.0999], [65504, -np.inf, np.nan]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 1e-30], [3.4e38, np.inf, np.nan]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e-300], [1.7e308, -np.inf, np.nan]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", b"hello world"], [b"\xff\x00\xfe", b"x" * 40, b"0"]], dtype=object),
}
DATATYPES = list(SAMPLES)
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert [bytes(v) for v in actual.reshape(-1)] == list(expected.reshape(-1))
    else:
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)  # NaN == NaN here


def wire(msg: Any) -> Any:
    """Through the wire format and back, as a real client/server (or Kafka) would see it."""
    return type(msg).FromString(msg.SerializeToString())


def triton_request(inputs: list[Any], outputs: list[Any] | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "model_name": "m",
        "inputs": inputs,
        "model_version": "",
        "request_id": "",
        "outputs": outputs,
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
        "parameters": None,
    }
    args.update(kw)
    return grpc_utils._get_inference_request(**args)


def typed_input(msg: Any, name: str, dt: str, arr: np.ndarray) -> Any:
    t = msg.inputs.add(name=name, datatype=dt, shape=list(arr.shape))
    getattr(t.contents, TYPED_FIELD[dt]).extend(arr.reshape(-1).tolist())
    return t


# ---------------------------------------------------------------------------------- round trips


def test_pb_module_is_the_oip_service() -> None:
    assert pb2.DESCRIPTOR.package == "inference"
    assert SERVICE_NAME in {s.full_name for s in pb2.DESCRIPTOR.services_by_name.values()}
    assert hasattr(pb2_grpc, "GRPCInferenceServiceServicer")
    assert hasattr(pb2_grpc, "add_GRPCInferenceServiceServicer_to_server")


@pytest.mark.parametrize("dt", DATATYPES)
def test_raw_request_roundtrip(dt: str) -> None:
    arr = SAMPLES[dt]
    req = InferRequest(
        "m",
        [Tensor.from_numpy("x", arr, parameters={"k": "v"}), Tensor.from_numpy("y", arr[:1])],
        model_version="3",
        id="r1",
        parameters={"p": 1.5},
        outputs=[RequestedOutput("out", {"flag": True})],
    )
    msg = wire(grpc_codec.encode_request(req))
    assert len(msg.raw_input_contents) == 2
    back = grpc_codec.decode_request(msg)
    assert back.model_name == "m" and back.model_version == "3" and back.id == "r1"
    assert back.parameters == {"p": 1.5}
    assert back.outputs == [RequestedOutput("out", {"flag": True})]
    assert [t.name for t in back.inputs] == ["x", "y"]
    assert back.inputs[0].parameters == {"k": "v"}
    assert_same(back.inputs[0].to_numpy(), arr)
    assert_same(back.inputs[1].to_numpy(), arr[:1])


@pytest.mark.parametrize("dt", DATATYPES)
def test_json_data_tensor_encodes_raw(dt: str) -> None:
    arr = SAMPLES[dt]
    if dt.startswith("FP"):
        arr = arr[:, :2]  # JSON-like data without inf/nan
    flat = [v.decode("latin-1") if isinstance(v, bytes) else v for v in arr.reshape(-1).tolist()]
    if dt == "BYTES":
        arr = np.array([v.encode() for v in flat], dtype=object).reshape(arr.shape)
    t = Tensor(name="x", datatype=dt, shape=list(arr.shape), data=flat)
    back = grpc_codec.decode_request(wire(grpc_codec.encode_request(InferRequest("m", [t]))))
    assert_same(back.inputs[0].to_numpy(), arr)


@pytest.mark.parametrize("dt", [d for d in DATATYPES if d != "FP16"])
def test_typed_contents_decode(dt: str) -> None:
    arr = SAMPLES[dt]
    msg = pb2.ModelInferRequest(model_name="m")
    typed_input(msg, "x", dt, arr)
    req = grpc_codec.decode_request(wire(msg))
    t = req.inputs[0]
    assert t.raw is not None
    assert_same(t.to_numpy(), arr)
    assert req.model_version is None and req.id is None and req.outputs is None


@pytest.mark.parametrize("dt", DATATYPES)
def test_tritonclient_request_decodes(dt: str) -> None:
    arr = SAMPLES[dt]
    inp = grpcclient.InferInput("x", list(arr.shape), dt)
    inp.set_data_from_numpy(arr)
    other = grpcclient.InferInput("y", [1], "INT32")
    other.set_data_from_numpy(np.array([5], dtype=np.int32))
    outputs = [grpcclient.InferRequestedOutput("out"), grpcclient.InferRequestedOutput("out2", class_count=3)]
    msg = triton_request(
        [inp, other],
        outputs,
        model_version="2",
        request_id="abc",
        sequence_id=9,
        sequence_start=True,
        priority=4,
        timeout=1000,
        parameters={"s": "v", "b": False, "i": -7, "f": 0.5},
    )
    req = grpc_codec.decode_request(wire(msg))
    assert_same(req.inputs[0].to_numpy(), arr)
    assert_same(req.inputs[1].to_numpy(), np.array([5], dtype=np.int32))
    assert req.model_version == "2" and req.id == "abc"
    assert req.parameters == {
        "sequence_id": 9,
        "sequence_start": True,
        "sequence_end": False,
        "priority": 4,
        "timeout": 1000,
        "s": "v",
        "b": False,
        "i": -7,
        "f": 0.5,
    }
    assert req.outputs is not None
    assert [o.name for o in req.outputs] == ["out", "out2"]
    assert req.outputs[1].parameters == {"classification": 3}


@pytest.mark.parametrize("dt", DATATYPES)
def test_response_decodes_with_tritonclient(dt: str) -> None:
    arr = SAMPLES[dt]
    resp = InferResponse(
        "m",
        [
            Tensor.from_numpy("y", arr, parameters={"binary_data_size": 99, "u": "x"}),
            Tensor.from_numpy("z", arr),
        ],
        model_version="1",
        parameters={"p": True},
    )
    msg = wire(grpc_codec.encode_response(resp, InferRequest("m", [], id="req-9")))
    assert len(msg.raw_output_contents) == 2
    assert msg.id == "req-9" and msg.model_version == "1"
    result = grpcclient.InferResult(msg)
    assert_same(result.as_numpy("y"), arr)
    assert_same(result.as_numpy("z"), arr)
    assert set(msg.outputs[0].parameters) == {"u"}  # the REST transport key is dropped
    back = grpc_codec.decode_response(msg)
    assert back.id == "req-9" and back.parameters == {"p": True}
    assert back.outputs[0].parameters == {"u": "x"}
    assert_same(back.outputs[1].to_numpy(), arr)


@pytest.mark.parametrize("dt", [d for d in DATATYPES if d != "FP16"])
def test_typed_response_contents_decode(dt: str) -> None:
    arr = SAMPLES[dt]
    msg = pb2.ModelInferResponse(model_name="m")
    out = msg.outputs.add(name="y", datatype=dt, shape=list(arr.shape))
    getattr(out.contents, TYPED_FIELD[dt]).extend(arr.reshape(-1).tolist())
    assert_same(grpc_codec.decode_response(wire(msg)).outputs[0].to_numpy(), arr)


def test_empty_tensors() -> None:
    for dt in DATATYPES:
        arr = np.zeros((0, 2), dtype=SAMPLES[dt].dtype)
        back = grpc_codec.decode_request(
            wire(grpc_codec.encode_request(InferRequest("m", [Tensor.from_numpy("x", arr)])))
        )
        assert back.inputs[0].to_numpy().shape == (0, 2)
        msg = pb2.ModelInferRequest(model_name="m")
        msg.inputs.add(name="x", datatype=dt, shape=[0, 2])
        assert grpc_codec.decode_request(msg).inputs[0].to_numpy().shape == (0, 2)


def test_raw_contents_are_not_reconverted() -> None:
    arr = np.arange(10, dtype=np.float32)
    msg = pb2.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[10])
    msg.raw_input_contents.append(arr.tobytes())
    t = grpc_codec.decode_request(msg).inputs[0]
    assert isinstance(t.raw, bytes) and t.data is None


# ------------------------------------------------------------------------------------ parameters


def test_parameters_of_every_type_roundtrip() -> None:
    params: dict[str, Any] = {
        "b": True,
        "f": False,
        "i": -(2**63),
        "imax": 2**63 - 1,
        "u": 2**64 - 1,
        "d": 0.125,
        "s": "text",
        "np": np.int32(7),
    }
    msg = pb2.ModelInferRequest()
    grpc_codec.params_to_pb(msg.parameters, params)
    msg = wire(msg)
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in msg.parameters.items()}
    assert kinds == {
        "b": "bool_param",
        "f": "bool_param",
        "i": "int64_param",
        "imax": "int64_param",
        "u": "uint64_param",
        "d": "double_param",
        "s": "string_param",
        "np": "int64_param",
    }
    assert grpc_codec.params_from_pb(msg.parameters) == {**params, "np": 7}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], "parameter 'k' is a list; gRPC parameters hold only bool, int, float or string values"),
        ({"a": 1}, "parameter 'k' is a dict"),
        (None, "parameter 'k' is a NoneType"),
        (2**64, "parameter 'k' value 18446744073709551616 does not fit a 64-bit integer"),
        (-(2**63) - 1, "does not fit a 64-bit integer"),
    ],
)
def test_unrepresentable_parameters(value: Any, message: str) -> None:
    req = InferRequest("m", [], parameters={"k": value})
    with pytest.raises(InvalidInputError) as err:
        grpc_codec.encode_request(req)
    assert message in err.value.message
    resp = InferResponse("m", [], parameters={"k": value})
    with pytest.raises(HeadraceError) as err2:
        grpc_codec.encode_response(resp, None)
    assert err2.value.kind is ErrorKind.MODEL_ERROR
    assert message in err2.value.message


# ------------------------------------------------------------------------------- requested outputs


def _outputs() -> InferResponse:
    return InferResponse(
        "m",
        [
            Tensor.from_numpy("a", np.array([1, 2], dtype=np.int32)),
            Tensor.from_numpy("b", np.array([b"q"], dtype=object)),
            Tensor.from_numpy("c", np.array([0.5], dtype=np.float64)),
        ],
    )


def test_requested_outputs_filter() -> None:
    req = InferRequest("m", [], outputs=[RequestedOutput("c"), RequestedOutput("a")])
    msg = wire(grpc_codec.encode_response(_outputs(), req))
    assert [o.name for o in msg.outputs] == ["a", "c"]  # model order
    result = grpcclient.InferResult(msg)
    assert_same(result.as_numpy("a"), np.array([1, 2], dtype=np.int32))
    assert_same(result.as_numpy("c"), np.array([0.5]))
    assert result.as_numpy("b") is None
    msg = grpc_codec.encode_response(_outputs(), InferRequest("m", []))
    assert [o.name for o in msg.outputs] == ["a", "b", "c"]


def test_tritonclient_requested_outputs_filter() -> None:
    inp = grpcclient.InferInput("x", [1], "INT8")
    inp.set_data_from_numpy(np.array([1], dtype=np.int8))
    req = grpc_codec.decode_request(wire(triton_request([inp], [grpcclient.InferRequestedOutput("b")])))
    msg = grpc_codec.encode_response(_outputs(), req)
    assert [o.name for o in msg.outputs] == ["b"]
    assert grpcclient.InferResult(wire(msg)).as_numpy("b").tolist() == [b"q"]


def test_unknown_requested_output_is_named() -> None:
    req = InferRequest("m", [], outputs=[RequestedOutput("zzz")])
    with pytest.raises(InvalidInputError, match="requested output 'zzz' is not an output of model 'm'"):
        grpc_codec.encode_response(_outputs(), req)


def test_output_with_wrong_raw_size_is_a_model_error() -> None:
    resp = InferResponse("m", [Tensor(name="y", datatype="INT64", shape=[2], raw=b"\x00" * 8)])
    with pytest.raises(
        HeadraceError, match="output 'y' has 8 bytes of data but INT64 \\[2\\] needs 16"
    ) as err:
        grpc_codec.encode_response(resp, None)
    assert err.value.kind is ErrorKind.MODEL_ERROR


# ------------------------------------------------------------------------------------- bad requests


def _raw_request(*specs: tuple[str, str, list[int], bytes]) -> Any:
    msg = pb2.ModelInferRequest(model_name="m")
    for name, dt, shape, raw in specs:
        msg.inputs.add(name=name, datatype=dt, shape=shape)
        msg.raw_input_contents.append(raw)
    return msg


def _bad(msg: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        grpc_codec.decode_request(wire(msg))
    assert message in err.value.message, err.value.message
    assert grpc_code(err.value.kind) == grpc.StatusCode.INVALID_ARGUMENT


def test_raw_contents_for_some_inputs_only() -> None:
    msg = _raw_request(("a", "INT32", [1], b"\x00" * 4))
    typed_input(msg, "b", "INT32", np.array([1], dtype=np.int32))
    _bad(msg, "raw input contents must be given for every input or none: got 1 for 2 inputs")


def test_raw_and_typed_contents_together() -> None:
    msg = _raw_request(("a", "INT32", [1], b"\x00" * 4))
    msg.inputs[0].contents.int_contents.append(1)
    _bad(msg, "input 'a' has both contents and raw contents")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            ("a", "FP32", [2], b"\x00" * 4),
            "input 'a' has 4 bytes of binary data but FP32 [2] needs 8 (2 x 4 bytes)",
        ),
        (("a", "INT64", [3], b"\x00" * 32), "INT64 [3] needs 24"),
        (("a", "BYTES", [2], b"\x01\x00\x00\x00a"), "input 'a' holds 1 BYTES elements but shape [2] needs 2"),
        (("a", "BYTES", [1], b"\x09\x00\x00\x00a"), "input 'a': BYTES tensor data is truncated"),
        (("a", "FP8", [1], b"\x00"), "input 'a' has unknown datatype 'FP8'"),
        (("a", "", [1], b"\x00"), "input 'a' has unknown datatype ''"),
        (("a", "INT8", [-1], b"\x00"), "input 'a' shape must hold non-negative integers, got [-1]"),
        (("", "INT8", [1], b"\x00"), "inputs[0] has no name"),
    ],
)
def test_bad_raw_inputs(spec: tuple[str, str, list[int], bytes], message: str) -> None:
    _bad(_raw_request(spec), message)


def test_duplicate_input_names() -> None:
    _bad(
        _raw_request(("a", "INT8", [1], b"\x00"), ("a", "INT8", [1], b"\x00")),
        "input 'a' is given more than once",
    )


def test_bad_typed_contents() -> None:
    msg = pb2.ModelInferRequest()
    msg.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    _bad(msg, "input 'h' of datatype FP16 must be sent in raw contents")

    msg = pb2.ModelInferRequest()
    msg.inputs.add(name="w", datatype="INT32", shape=[1]).contents.fp32_contents.append(1.0)
    _bad(msg, "input 'w' of datatype INT32 must use int_contents, not fp32_contents")

    msg = pb2.ModelInferRequest()
    typed_input(msg, "n", "FP64", np.array([1.0, 2.0]))
    msg.inputs[0].shape[:] = [3]
    _bad(msg, "input 'n' has 2 elements in fp64_contents but shape [3] needs 3")

    msg = pb2.ModelInferRequest()
    msg.inputs.add(name="e", datatype="INT32", shape=[2])
    _bad(msg, "input 'e' has 0 elements in int_contents but shape [2] needs 2")

    for dt, values, text in [
        ("INT8", [1, 200], "input 'r' element 1 value 200 is out of range for INT8 [-128, 127]"),
        ("INT16", [-40000], "element 0 value -40000 is out of range for INT16"),
        ("UINT8", [0, 0, 256], "element 2 value 256 is out of range for UINT8 [0, 255]"),
        ("UINT16", [70000], "out of range for UINT16"),
    ]:
        msg = pb2.ModelInferRequest()
        t = msg.inputs.add(name="r", datatype=dt, shape=[len(values)])
        getattr(t.contents, TYPED_FIELD[dt]).extend(values)
        _bad(msg, text)


def test_bad_requested_output_name() -> None:
    msg = _raw_request(("a", "INT8", [1], b"\x00"))
    msg.outputs.add(name="")
    _bad(msg, "outputs[0] has no name")


def test_bad_response_contents() -> None:
    msg = pb2.ModelInferResponse(model_name="m")
    msg.outputs.add(name="y", datatype="FP32", shape=[2])
    msg.raw_output_contents.append(b"\x00" * 4)
    with pytest.raises(
        InvalidInputError, match="output 'y' has 4 bytes of binary data but FP32 \\[2\\] needs 8"
    ):
        grpc_codec.decode_response(msg)


# --------------------------------------------------------------------------------------- error codes


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (ErrorKind.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (ErrorKind.TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ErrorKind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (ErrorKind.TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
        (ErrorKind.MODEL_ERROR, grpc.StatusCode.INTERNAL),
        (ErrorKind.INTERNAL, grpc.StatusCode.INTERNAL),
        (ErrorKind.CONFLICT, grpc.StatusCode.ALREADY_EXISTS),
    ],
)
def test_grpc_code(kind: ErrorKind, code: grpc.StatusCode) -> None:
    assert grpc_code(kind) is code


def test_every_kind_has_a_grpc_code() -> None:
    for kind in ErrorKind:
        assert isinstance(grpc_code(kind), grpc.StatusCode)

"""OIP over REST and gRPC against a real `headrace serve`, driven by tritonclient and plain HTTP."""

from __future__ import annotations

import socket

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import Serve, http_get, http_post
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    if datatype == "BOOL":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if datatype == "BYTES":
        return np.array([f"s{i}-é".encode() for i in range(n)], dtype=np.object_).reshape(shape)
    dt = np.dtype(DTYPES[datatype])
    if dt.kind == "f":
        return (rng.standard_normal(n) * 100).astype(dt).reshape(shape)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, n, dtype=dt, endpoint=True).reshape(shape)


def test_health_and_metadata_plain_http(served: Serve) -> None:
    assert http_get(served.url + "/v2/health/live")[0] == 200
    assert http_get(served.url + "/v2/health/ready")[0] == 200
    status, body = http_get(served.url + "/v2")
    assert status == 200
    meta = orjson.loads(body)
    assert meta["name"] == "headrace" and "binary_tensor_data" in meta["extensions"]
    status, body = http_get(served.url + "/v2/models/echo")
    assert status == 200 and orjson.loads(body)["versions"] == ["1"]
    assert http_get(served.url + "/v2/models/echo/versions/1")[0] == 200
    assert http_get(served.url + "/v2/models/echo/versions/1/ready")[0] == 200
    status, body = http_get(served.url + "/v2/models/nope/ready")
    assert status == 404 and "nope" in orjson.loads(body)["error"]


def test_plain_json_echo_and_sum(served: Serve) -> None:
    body = orjson.dumps(
        {"id": "r1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    status, _, raw = http_post(served.url + "/v2/models/echo/infer", body)
    assert status == 200, raw
    out = orjson.loads(raw)
    assert out["id"] == "r1" and out["model_name"] == "echo"
    assert out["outputs"][0]["data"] == [1, 2, 3, 4] and out["outputs"][0]["shape"] == [2, 2]
    status, _, raw = http_post(served.url + "/v2/models/sum/versions/1/infer", body)
    assert status == 200, raw
    assert orjson.loads(raw)["outputs"][0]["data"] == [3.0, 7.0]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DTYPES))
def test_http_every_datatype_roundtrips(served: Serve, datatype: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    data = sample(datatype)
    inp = httpclient.InferInput("x", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput("x", binary_data=binary)
    result = client.infer("echo", [inp], outputs=[out])
    got = result.as_numpy("x")
    assert got is not None and got.shape == data.shape
    if datatype == "BYTES":
        assert [as_bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in data.reshape(-1)]
    else:
        np.testing.assert_array_equal(got, data)


def as_bytes(v: object) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)  # type: ignore[call-overload]


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_grpc_every_datatype_roundtrips(served: Serve, datatype: str) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_url)
    data = sample(datatype)
    inp = grpcclient.InferInput("x", list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    result = client.infer("echo", [inp], request_id="g1")
    got = result.as_numpy("x")
    assert result.get_response().id == "g1"
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in data.reshape(-1)]
    else:
        np.testing.assert_array_equal(got, data)


def test_grpc_typed_contents_and_metadata(served: Serve) -> None:
    from tritonclient.grpc import service_pb2 as pb2
    from tritonclient.grpc import service_pb2_grpc as pb2_grpc

    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb2.ServerLiveRequest()).live
        assert stub.ServerReady(pb2.ServerReadyRequest()).ready
        assert stub.ModelReady(pb2.ModelReadyRequest(name="sum")).ready
        assert "binary_tensor_data" in stub.ServerMetadata(pb2.ServerMetadataRequest()).extensions
        assert stub.ModelMetadata(pb2.ModelMetadataRequest(name="sum")).versions == ["1"]
        req = pb2.ModelInferRequest(model_name="sum")
        t = req.inputs.add(name="x", datatype="INT64", shape=[2, 3])
        t.contents.int64_contents.extend([1, 2, 3, 4, 5, 6])
        resp = stub.ModelInfer(req)
        assert np.frombuffer(resp.raw_output_contents[0], dtype=np.int64).tolist() == [6, 15]
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(pb2.ModelInferRequest(model_name="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in (err.value.details() or "")
        bad = pb2.ModelInferRequest(model_name="echo")
        b = bad.inputs.add(name="x", datatype="FP32", shape=[4])
        b.contents.fp32_contents.extend([1, 2, 3])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_requested_output_binary_flag_and_parameters(served: Serve) -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]},
                {"name": "b", "shape": [1], "datatype": "FP64", "data": [0.5]},
            ],
            "outputs": [{"name": "b", "parameters": {"binary_data": True}}],
        }
    )
    status, headers, raw = http_post(served.url + "/v2/models/echo/infer", body)
    assert status == 200
    header_len = int(headers["inference-header-content-length"])
    head = orjson.loads(raw[:header_len])
    assert [o["name"] for o in head["outputs"]] == ["b"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(raw[header_len:], dtype=np.float64).tolist() == [0.5]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "JSON"),
        (b"[]", 400, "object"),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP33", "data": [1, 2]}]}),
            400,
            "FP33",
        ),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}),
            400,
            "x",
        ),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": ["a", "b"]}]}),
            400,
            "x",
        ),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}),
            400,
            "shape",
        ),
    ],
    ids=["malformed", "not-object", "bad-datatype", "shape-mismatch", "wrong-element-type", "negative-dim"],
)
def test_bad_input_gets_precise_400(served: Serve, body: bytes, status: int, fragment: str) -> None:
    got, _, raw = http_post(served.url + "/v2/models/echo/infer", body)
    assert got == status
    assert fragment in orjson.loads(raw)["error"]
    assert http_get(served.url + "/v2/health/live")[0] == 200  # the worker is still there


def test_unknown_model_or_version_is_404(served: Serve) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    status, _, raw = http_post(served.url + "/v2/models/nope/infer", body)
    assert status == 404 and "nope" in orjson.loads(raw)["error"]
    status, _, raw = http_post(served.url + "/v2/models/echo/versions/7/infer", body)
    assert status == 404 and "version" in orjson.loads(raw)["error"]
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="nope"):
        client.get_model_metadata("nope")


def test_binary_size_mismatch_is_400(served: Serve) -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    )
    body = head + b"\x00" * 12
    status, _, raw = http_post(
        served.url + "/v2/models/echo/infer",
        body,
        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert status == 400, raw


def test_half_sent_request_does_not_wedge_the_worker(served: Serve) -> None:
    stuck = []
    for _ in range(4):  # enough to hit every worker
        s = socket.create_connection(("127.0.0.1", served.http_port))
        s.sendall(b'POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"inp')
        stuck.append(s)
    try:
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
        for _ in range(10):
            status, _, _ = http_post(served.url + "/v2/models/echo/infer", body)
            assert status == 200
    finally:
        for s in stuck:
            s.close()


def test_keep_alive_and_pipelining(served: Serve) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [5]}]})
    req = (
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=10) as s:
        s.sendall(req * 3)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"}]}"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 3


def test_body_over_limit_is_413(served: Serve) -> None:
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{"
            % (200 * 1024 * 1024)
        )
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"limit" in reply


@pytest.mark.parametrize("mib", [1, 16])
def test_large_tensors_over_binary_rest_and_grpc(served: Serve, mib: int) -> None:
    data = np.arange(mib * 1024 * 1024 // 4, dtype=np.float32).reshape(1, -1)
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"), network_timeout=60)
    inp = httpclient.InferInput("x", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    got = client.infer(
        "echo", [inp], outputs=[httpclient.InferRequestedOutput("x", binary_data=True)]
    ).as_numpy("x")
    np.testing.assert_array_equal(got, data)
    gclient = grpcclient.InferenceServerClient(served.grpc_url)
    ginp = grpcclient.InferInput("x", list(data.shape), "FP32")
    ginp.set_data_from_numpy(data)
    np.testing.assert_array_equal(gclient.infer("echo", [ginp]).as_numpy("x"), data)

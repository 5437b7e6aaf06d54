"""Request bodies shared by every server: small JSON, and large FP32 tensors (binary extension / raw gRPC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

INPUT_NAME = "input-0"
SMALL_DATA = [1, 2, 3, 4]
SMALL_BODY = orjson.dumps(
    {"inputs": [{"name": INPUT_NAME, "shape": [1, 4], "datatype": "FP32", "data": SMALL_DATA}]}
)
JSON_HEADERS = {"Content-Type": "application/json"}

# payload name -> number of bytes of FP32 data (0 = the small 4-element JSON request).
PAYLOADS: dict[str, int] = {"small": 0, "1MiB": 1 << 20, "4MiB": 4 << 20, "16MiB": 16 << 20}


@dataclass(frozen=True)
class RestBody:
    """One REST request: body bytes, headers, and what encoding it uses."""

    path: Path
    headers: dict[str, str]
    encoding: str  # "json" or "binary"
    nbytes: int


def tensor(nbytes: int) -> np.ndarray:
    return np.arange(nbytes // 4, dtype=np.float32).reshape(1, nbytes // 4)


def rest_body(payload: str, *, binary: bool, out_dir: Path) -> RestBody:
    """Write the body for `payload` to a file (wrk reads it from there) and describe it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    nbytes = PAYLOADS[payload]
    if nbytes == 0:
        path = out_dir / "rest-small.json"
        path.write_bytes(SMALL_BODY)
        return RestBody(path, dict(JSON_HEADERS), "json", len(SMALL_BODY))
    arr = tensor(nbytes)
    if not binary:
        path = out_dir / f"rest-{payload}.json"
        if not path.exists():
            body = orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": INPUT_NAME,
                            "shape": list(arr.shape),
                            "datatype": "FP32",
                            "data": arr.ravel().tolist(),
                        }
                    ]
                }
            )
            path.write_bytes(body)
        return RestBody(path, dict(JSON_HEADERS), "json", path.stat().st_size)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": list(arr.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    path = out_dir / f"rest-{payload}.bin"
    path.write_bytes(header + arr.tobytes())
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return RestBody(path, headers, "binary", path.stat().st_size)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def grpc_request(model: str, nbytes: int) -> bytes:
    """A serialized ModelInferRequest: the small [1, 4] tensor in fp32_contents (nbytes 0), or a [1, n]
    FP32 tensor in raw_input_contents.

    Hand-encoded (field numbers from the KServe v2 proto) so ghz (--binary-file) and h2load (gRPC
    framed) can send it; `proto.check()` decodes it with tritonclient's generated classes.
    """
    if nbytes == 0:
        arr = np.array([SMALL_DATA], dtype=np.float32)
        contents = _len_field(5, _len_field(6, arr.tobytes()))  # contents.fp32_contents, packed
        raw = b""
    else:
        arr = tensor(nbytes)
        contents = b""
        raw = _len_field(7, arr.tobytes())  # raw_input_contents
    shape = b"".join(_varint(d) for d in arr.shape)
    tensor_msg = (
        _len_field(1, INPUT_NAME.encode())  # name
        + _len_field(2, b"FP32")  # datatype
        + _len_field(3, shape)  # shape, packed int64
        + contents
    )
    return _len_field(1, model.encode()) + _len_field(5, tensor_msg) + raw  # model_name, inputs


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message (uncompressed), the HTTP/2 body h2load posts."""
    return b"\x00" + len(message).to_bytes(4, "big") + message

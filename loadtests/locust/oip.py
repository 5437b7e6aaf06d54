"""The request every scenario sends (a [1,4] FP32 tensor) and the checks that fail a wrong answer."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
from tritonclient.grpc import service_pb2 as pb2

VALUES = [1.0, 2.0, 3.0, 4.0]
REST_BODY = orjson.dumps(
    {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": VALUES}]}
)
ITEM_SIZES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2}
ITEM_SIZES |= {"INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}


def grpc_request(model: str) -> pb2.ModelInferRequest:
    """The same tensor as REST_BODY, as tritonclient sends it (raw little-endian bytes)."""
    request = pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(struct.pack("<4f", *VALUES))
    return request


def rest_problem(status: int, body: bytes | None) -> str | None:
    """Why a REST answer is wrong, or None: 200 and at least one output whose data fits its shape."""
    text = body or b""
    if status != 200:
        return f"HTTP {status}: {text[:200].decode(errors='replace')}"
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        return f"not JSON: {text[:200].decode(errors='replace')}"
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list) or not outputs:
        return f"no outputs in the answer: {text[:200].decode(errors='replace')}"
    for out in outputs:
        problem = _rest_output_problem(out)
        if problem:
            return problem
    return None


def _rest_output_problem(out: Any) -> str | None:
    if not isinstance(out, dict) or not isinstance(out.get("shape"), list) or "name" not in out:
        return f"malformed output: {str(out)[:200]}"
    data = out.get("data")
    if data is None and "binary_data_size" in (out.get("parameters") or {}):
        return None  # a binary output: its bytes follow the JSON header
    if not isinstance(data, list) or len(data) != math.prod(out["shape"]):
        return f"output {out['name']}: data does not fit shape {out['shape']}"
    return None


def grpc_problem(response: pb2.ModelInferResponse) -> str | None:
    """Why a ModelInfer answer is wrong, or None: at least one output, raw contents fitting the shapes."""
    if not response.outputs:
        return "no outputs in the answer"
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        return f"{len(raw)} raw output contents for {len(response.outputs)} outputs"
    for i, out in enumerate(response.outputs):
        size = ITEM_SIZES.get(out.datatype)
        if raw and size is not None and len(raw[i]) != size * math.prod(out.shape):
            return f"output {out.name}: {len(raw[i])} bytes do not fit {out.datatype} shape {list(out.shape)}"
    return None

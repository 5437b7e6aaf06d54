"""REST JSON codec for OIP inference (with the binary tensor data extension), errors and metadata."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn, Protocol

import numpy as np
import orjson

from headrace.config.errors import ErrorKind, HeadraceError, InvalidInputError
from headrace.gateway.oip.datatypes import DATATYPES, NUMPY_DTYPES
from headrace.gateway.oip.types import (
    InferRequest,
    InferResponse,
    Parameters,
    RequestedOutput,
    Tensor,
    check_raw,
    element_count,
    select_outputs,
)

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"
JSON_CONTENT_TYPE: Final = "application/json"

_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
_FLOATS: Final = frozenset({"FP16", "FP32", "FP64"})
_NUMBER_TYPES: Final = frozenset({int, float})
_BOOL_TYPES: Final = frozenset({bool})
_STR_TYPES: Final = frozenset({str})
_SORTED_DATATYPES: Final = ", ".join(sorted(DATATYPES))
_NUMPY_OPT: Final = orjson.OPT_SERIALIZE_NUMPY


# ---------------------------------------------------------------------------------------------- decode


def decode_request(
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    model_name: str,
    model_version: str | None,
) -> InferRequest:
    """Decode a REST inference request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: the first that many bytes
    are JSON and the rest holds the binary tensors, in input order, of the inputs that carry
    ``parameters.binary_data_size``. JSON ``data`` stays a Python list (flat or nested); binary
    inputs become zero-copy memoryview slices of ``body``. Raises InvalidInputError naming the
    input and the problem."""
    view = body if isinstance(body, memoryview) else memoryview(body)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    total = view.nbytes
    if header_length is None:
        header_end = total
    elif header_length < 0:
        raise InvalidInputError(f"{HEADER_LENGTH} must not be negative (got {header_length})")
    elif header_length > total:
        raise InvalidInputError(
            f"{HEADER_LENGTH} {header_length} is larger than the request body ({total} bytes)"
        )
    else:
        header_end = header_length
    try:
        doc = orjson.loads(view if header_end == total else view[:header_end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise InvalidInputError(f"request body must be a JSON object, not {_json_type(doc)}")

    raw_inputs = doc.get("inputs")
    if raw_inputs is None:
        raise InvalidInputError("request has no 'inputs'")
    if type(raw_inputs) is not list:
        raise InvalidInputError(f"request 'inputs' must be a list, not {_json_type(raw_inputs)}")

    inputs: list[Tensor] = []
    seen: set[str] = set()
    offset = header_end
    for i, item in enumerate(raw_inputs):
        tensor, size = _decode_input(i, item)
        if tensor.name in seen:
            raise InvalidInputError(f"input '{tensor.name}' is given more than once")
        seen.add(tensor.name)
        if size is not None:
            if header_length is None:
                raise InvalidInputError(
                    f"input '{tensor.name}' has parameters.binary_data_size but the request has no "
                    f"binary data ({HEADER_LENGTH} header missing)"
                )
            end = offset + size
            if end > total:
                raise InvalidInputError(
                    f"input '{tensor.name}' has binary_data_size {size} but only {total - offset} bytes "
                    f"of binary data are left in the body"
                )
            raw = view[offset:end]
            offset = end
            check_raw(tensor.name, tensor.datatype, tensor.shape, raw)
            tensor.raw = raw
        inputs.append(tensor)
    if offset != total:
        raise InvalidInputError(
            f"the body has {total - header_end} bytes of binary data but the inputs' binary_data_size "
            f"add up to {offset - header_end}"
        )

    return InferRequest(
        model_name=model_name,
        inputs=inputs,
        model_version=model_version,
        id=_request_id(doc),
        parameters=_parameters(doc, "request"),
        outputs=_requested_outputs(doc),
    )


def _decode_input(i: int, item: Any) -> tuple[Tensor, int | None]:
    if type(item) is not dict:
        raise InvalidInputError(f"inputs[{i}] must be an object, not {_json_type(item)}")
    name = item.get("name")
    if name is None:
        raise InvalidInputError(f"inputs[{i}] has no 'name'")
    if type(name) is not str or not name:
        raise InvalidInputError(f"inputs[{i}] 'name' must be a non-empty string, got {name!r}")
    datatype = item.get("datatype")
    if datatype is None:
        raise InvalidInputError(f"input '{name}' has no 'datatype'")
    if type(datatype) is not str or datatype not in DATATYPES:
        raise InvalidInputError(
            f"input '{name}' has unknown datatype {datatype!r} (expected one of {_SORTED_DATATYPES})"
        )
    shape = item.get("shape")
    if shape is None:
        raise InvalidInputError(f"input '{name}' has no 'shape'")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInputError(
            f"input '{name}' shape must be a list of non-negative integers, got {shape!r}"
        )
    params = _parameters(item, f"input '{name}'")

    if "binary_data_size" in params:
        size = params.pop("binary_data_size")
        if type(size) is not int or size < 0:
            raise InvalidInputError(
                f"input '{name}' binary_data_size must be a non-negative integer, got {size!r}"
            )
        if "data" in item:
            raise InvalidInputError(f"input '{name}' has both 'data' and parameters.binary_data_size")
        return Tensor(name=name, datatype=datatype, shape=shape, parameters=params), size

    data = item.get("data")
    if data is None:
        raise InvalidInputError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    if type(data) is not list:
        raise InvalidInputError(f"input '{name}' data must be a list, not {_json_type(data)}")
    flat = _flatten(name, data)
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidInputError(
            f"input '{name}' has {len(flat)} data elements but shape {shape} needs {count}"
        )
    _check_elements(name, datatype, flat)
    return Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=params), None


def _flatten(name: str, data: list[Any]) -> list[Any]:
    """The elements of a (regularly) nested list, row-major; the list itself when flat."""
    level = data
    while level and type(level[0]) is list:
        width = len(level[0])
        nxt: list[Any] = []
        for sub in level:
            if type(sub) is not list or len(sub) != width:
                raise InvalidInputError(
                    f"input '{name}' data is ragged: nested lists must all have the same length"
                )
            nxt += sub
        level = nxt
    return level


def _check_elements(name: str, datatype: str, flat: list[Any]) -> None:
    bounds = _INT_RANGES.get(datatype)
    if bounds is not None:
        lo, hi = bounds
        for v in flat:
            if type(v) is not int or v < lo or v > hi:
                _raise_bad_element(name, datatype, flat)
        return
    if datatype in _FLOATS:
        allowed = _NUMBER_TYPES
    elif datatype == "BOOL":
        allowed = _BOOL_TYPES
    else:
        allowed = _STR_TYPES
    if not allowed.issuperset(map(type, flat)):
        _raise_bad_element(name, datatype, flat)


def _raise_bad_element(name: str, datatype: str, flat: list[Any]) -> NoReturn:
    """Find the first element that does not fit ``datatype`` and raise an error naming it."""
    bounds = _INT_RANGES.get(datatype)
    for i, v in enumerate(flat):
        if type(v) is list:
            raise InvalidInputError(f"input '{name}' data mixes nested lists and scalars (element {i})")
        if bounds is not None:
            if type(v) is not int:
                raise InvalidInputError(
                    f"input '{name}' element {i} is {_show(v)} but {datatype} needs integers"
                )
            if not bounds[0] <= v <= bounds[1]:
                raise InvalidInputError(
                    f"input '{name}' element {i} value {v} is out of range for {datatype} "
                    f"[{bounds[0]}, {bounds[1]}]"
                )
        elif datatype in _FLOATS:
            if type(v) not in _NUMBER_TYPES:
                raise InvalidInputError(
                    f"input '{name}' element {i} is {_show(v)} but {datatype} needs numbers"
                )
        elif datatype == "BOOL":
            if type(v) is not bool:
                raise InvalidInputError(
                    f"input '{name}' element {i} is {_show(v)} but BOOL needs true or false"
                )
        elif type(v) is not str:
            raise InvalidInputError(f"input '{name}' element {i} is {_show(v)} but BYTES needs strings")
    raise AssertionError("no bad element found")  # pragma: no cover


def _parameters(doc: dict[str, Any], what: str) -> Parameters:
    params = doc.get("parameters")
    if params is None:
        return {}
    if type(params) is not dict:
        raise InvalidInputError(f"{what} 'parameters' must be an object, not {_json_type(params)}")
    return params


def _request_id(doc: dict[str, Any]) -> str | None:
    rid = doc.get("id")
    if rid is None:
        return None
    if type(rid) is not str:
        raise InvalidInputError(f"request 'id' must be a string, got {rid!r}")
    return rid


def _requested_outputs(doc: dict[str, Any]) -> list[RequestedOutput] | None:
    raw = doc.get("outputs")
    if raw is None:
        return None
    if type(raw) is not list:
        raise InvalidInputError(f"request 'outputs' must be a list, not {_json_type(raw)}")
    outputs: list[RequestedOutput] = []
    for i, item in enumerate(raw):
        if type(item) is not dict:
            raise InvalidInputError(f"outputs[{i}] must be an object, not {_json_type(item)}")
        name = item.get("name")
        if type(name) is not str or not name:
            raise InvalidInputError(f"outputs[{i}] has no 'name'")
        params = _parameters(item, f"requested output '{name}'")
        flag = params.get("binary_data")
        if flag is not None and type(flag) is not bool:
            raise InvalidInputError(
                f"requested output '{name}' parameter binary_data must be true or false, got {flag!r}"
            )
        outputs.append(RequestedOutput(name=name, parameters=params))
    return outputs


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(v), "a number")


def _show(v: Any) -> str:
    return f"{v!r} ({_json_type(v)})"


# ---------------------------------------------------------------------------------------------- encode


def encode_response(
    response: InferResponse, request: InferRequest | None
) -> tuple[list[bytes | memoryview], int | None]:
    """Encode a REST inference response: the body parts, in order, and the JSON header length.

    An output is binary when its requested output has ``parameters.binary_data: true`` or the
    request has ``parameters.binary_data_output: true`` (unless the output says
    ``binary_data: false``). Binary tensors follow the JSON header as separate parts (not copied);
    the header length is None when the whole body is JSON."""
    default_binary = request is not None and request.parameters.get("binary_data_output") is True
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    any_binary = False
    for tensor, requested in select_outputs(response, request):
        binary = default_binary
        if requested is not None:
            flag = requested.parameters.get("binary_data")
            if flag is not None:
                binary = flag is True
        params = tensor.parameters
        if "binary_data_size" in params:
            params = {k: v for k, v in params.items() if k != "binary_data_size"}
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            any_binary = True
            raw = tensor.raw_bytes()
            size = len(raw) if isinstance(raw, bytes) else raw.nbytes
            out["parameters"] = {**params, "binary_data_size": size}
            if size:
                buffers.append(raw)
        else:
            if params:
                out["parameters"] = params
            out["data"] = _json_data(tensor)
        outputs.append(out)

    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        doc["model_version"] = response.model_version
    rid = response.id or (request.id if request is not None else None)
    if rid:
        doc["id"] = rid
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = _dumps(doc)
    if not any_binary:
        return [header], None
    return [header, *buffers], len(header)


def _json_data(tensor: Tensor) -> Any:
    """The elements of an output as a flat JSON-ready list (or a 1-D numpy array orjson writes)."""
    if tensor.data is not None:
        flat = tensor.to_list()
        if tensor.datatype == "BYTES":
            return [_bytes_to_str(tensor.name, v) if type(v) is not str else v for v in flat]
        return flat
    if tensor.datatype == "BYTES":
        return tensor.to_list()
    raw = tensor.raw if tensor.raw is not None else b""
    arr = np.frombuffer(raw, dtype=NUMPY_DTYPES[tensor.datatype])
    if arr.size != tensor.count:
        raise HeadraceError(
            f"output '{tensor.name}' has {arr.size} elements but shape {tensor.shape} needs {tensor.count}",
            ErrorKind.MODEL_ERROR,
        )
    return arr


def _bytes_to_str(name: str, v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return bytes(v).decode()
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"BYTES output '{name}' is not UTF-8; request it with binary_data to receive raw bytes"
            ) from None
    return str(v)


def _dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc, option=_NUMPY_OPT)
    except TypeError as exc:
        raise HeadraceError(f"response cannot be written as JSON: {exc}", ErrorKind.MODEL_ERROR) from None


def encode_error(message: str) -> bytes:
    """An OIP REST error body: ``{"error": message}``."""
    return orjson.dumps({"error": message})


# -------------------------------------------------------------------------------------------- metadata


class TensorMetadata(Protocol):
    """Anything with a tensor's name, datatype and shape (e.g. control.TensorSpec)."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...


def encode_server_metadata(name: str, version: str, extensions: Iterable[str]) -> bytes:
    """The ``GET /v2`` body."""
    return orjson.dumps({"name": name, "version": version, "extensions": list(extensions)})


def encode_model_metadata(
    name: str,
    versions: Iterable[str],
    platform: str,
    inputs: Iterable[TensorMetadata],
    outputs: Iterable[TensorMetadata],
) -> bytes:
    """The ``GET /v2/models/{name}[/versions/{v}]`` body."""
    return orjson.dumps(
        {
            "name": name,
            "versions": list(versions),
            "platform": platform,
            "inputs": [_tensor_metadata(t) for t in inputs],
            "outputs": [_tensor_metadata(t) for t in outputs],
        }
    )


def _tensor_metadata(t: TensorMetadata) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

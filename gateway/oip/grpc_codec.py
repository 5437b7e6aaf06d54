"""gRPC codec: OIP protobuf inference messages to and from the transport-neutral request/response types."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np

from headrace.config.errors import ErrorKind, HeadraceError, InvalidInputError
from headrace.gateway.oip.datatypes import DATATYPES, ITEM_SIZES, NUMPY_DTYPES
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import (
    InferRequest,
    InferResponse,
    Parameters,
    RequestedOutput,
    Tensor,
    check_raw,
    element_count,
    pack_bytes_elements,
    select_outputs,
)

# datatype -> (InferTensorContents field, dtype of that field's elements). FP16 has no typed field.
_CONTENTS: Final[dict[str, tuple[str, np.dtype[Any] | None]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype("<i4")),
    "INT16": ("int_contents", np.dtype("<i4")),
    "INT32": ("int_contents", np.dtype("<i4")),
    "INT64": ("int64_contents", np.dtype("<i8")),
    "UINT8": ("uint_contents", np.dtype("<u4")),
    "UINT16": ("uint_contents", np.dtype("<u4")),
    "UINT32": ("uint_contents", np.dtype("<u4")),
    "UINT64": ("uint64_contents", np.dtype("<u8")),
    "FP32": ("fp32_contents", np.dtype("<f4")),
    "FP64": ("fp64_contents", np.dtype("<f8")),
    "BYTES": ("bytes_contents", None),
}
# Datatypes carried in a wider contents field, with their value range.
_NARROW_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
}
_SORTED_DATATYPES: Final = ", ".join(sorted(DATATYPES))
_INT64_MIN: Final = -(2**63)
_UINT64_END: Final = 2**64
_INT64_END: Final = 2**63

ErrorFactory = Callable[[str], HeadraceError]


def _model_error(message: str) -> HeadraceError:
    return HeadraceError(message, ErrorKind.MODEL_ERROR)


# ------------------------------------------------------------------------------------------ parameters


def params_from_pb(params: Mapping[str, Any]) -> Parameters:
    """A protobuf ``map<string, InferParameter>`` as a dict of Python values."""
    out: Parameters = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which is not None else None
    return out


def params_to_pb(target: Any, params: Parameters, error: ErrorFactory = InvalidInputError) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from a dict of bool/int/float/str values."""
    for key, value in params.items():
        if isinstance(value, np.generic):
            value = value.item()
        param = target[key]
        if type(value) is bool:
            param.bool_param = value
        elif isinstance(value, int):
            if _INT64_MIN <= value < _INT64_END:
                param.int64_param = value
            elif 0 <= value < _UINT64_END:
                param.uint64_param = value
            else:
                del target[key]
                raise error(f"parameter '{key}' value {value} does not fit a 64-bit integer")
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            del target[key]
            raise error(
                f"parameter '{key}' is a {type(value).__name__}; gRPC parameters hold only "
                f"bool, int, float or string values"
            )


# ---------------------------------------------------------------------------------------------- tensors


def _check_header(what: str, index: int, name: str, datatype: str, shape: list[int]) -> None:
    if not name:
        raise InvalidInputError(f"{what}s[{index}] has no name")
    if datatype not in DATATYPES:
        raise InvalidInputError(
            f"{what} '{name}' has unknown datatype {datatype!r} (expected one of {_SORTED_DATATYPES})"
        )
    for d in shape:
        if d < 0:
            raise InvalidInputError(f"{what} '{name}' shape must hold non-negative integers, got {shape}")


def _contents_to_raw(
    what: str, name: str, datatype: str, shape: list[int], contents: Any
) -> bytes | memoryview:
    """Typed ``InferTensorContents`` as raw little-endian bytes (BYTES length-prefixed)."""
    count = element_count(shape)
    spec = _CONTENTS.get(datatype)
    if spec is None:
        if count == 0 and not contents.ListFields():
            return b""
        raise InvalidInputError(
            f"{what} '{name}' of datatype {datatype} must be sent in raw contents "
            f"(there is no typed contents field for {datatype})"
        )
    field, dtype = spec
    for fd, _ in contents.ListFields():
        if fd.name != field:
            raise InvalidInputError(f"{what} '{name}' of datatype {datatype} must use {field}, not {fd.name}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"{what} '{name}' has {len(values)} elements in {field} but shape {shape} needs {count}"
        )
    if dtype is None:
        return pack_bytes_elements(list(values))
    arr = np.fromiter(values, dtype=dtype, count=count)
    target = NUMPY_DTYPES[datatype]
    if arr.dtype != target:
        lo, hi = _NARROW_BOUNDS[datatype]
        if count:
            bad = np.flatnonzero((arr < lo) | (arr > hi))
            if bad.size:
                i = int(bad[0])
                raise InvalidInputError(
                    f"{what} '{name}' element {i} value {arr[i]} is out of range for {datatype} [{lo}, {hi}]"
                )
        arr = arr.astype(target)
    return arr.data.cast("B") if count else b""


def _decode_tensors(what: str, tensors: Any, raw_contents: Any) -> list[Tensor]:
    n_raw = len(raw_contents)
    if n_raw and n_raw != len(tensors):
        raise InvalidInputError(
            f"raw {what} contents must be given for every {what} or none: "
            f"got {n_raw} for {len(tensors)} {what}s"
        )
    out: list[Tensor] = []
    seen: set[str] = set()
    for i, t in enumerate(tensors):
        name, datatype, shape = t.name, t.datatype, list(t.shape)
        _check_header(what, i, name, datatype, shape)
        if name in seen:
            raise InvalidInputError(f"{what} '{name}' is given more than once")
        seen.add(name)
        params = params_from_pb(t.parameters) if t.parameters else {}
        if n_raw:
            if t.HasField("contents"):
                raise InvalidInputError(f"{what} '{name}' has both contents and raw contents")
            raw: bytes | memoryview = raw_contents[i]
            check_raw(name, datatype, shape, raw, what)
        else:
            raw = _contents_to_raw(what, name, datatype, shape, t.contents)
        out.append(Tensor(name=name, datatype=datatype, shape=shape, raw=raw, parameters=params))
    return out


def _raw_of(tensor: Tensor, what: str, error: ErrorFactory) -> bytes:
    raw = tensor.raw_bytes()
    item = ITEM_SIZES.get(tensor.datatype)
    if item is not None:
        size = len(raw) if isinstance(raw, bytes) else raw.nbytes
        if size != tensor.count * item:
            raise error(
                f"{what} '{tensor.name}' has {size} bytes of data but {tensor.datatype} {tensor.shape} "
                f"needs {tensor.count * item}"
            )
    return raw if isinstance(raw, bytes) else bytes(raw)


def _without_transport_params(params: Parameters) -> Parameters:
    if "binary_data_size" in params:
        return {k: v for k, v in params.items() if k != "binary_data_size"}
    return params


# ---------------------------------------------------------------------------------------------- request


def decode_request(msg: Any) -> InferRequest:
    """A ``ModelInferRequest`` as an InferRequest (raw or typed contents; InvalidInputError if bad)."""
    inputs = _decode_tensors("input", msg.inputs, msg.raw_input_contents)
    outputs: list[RequestedOutput] | None = None
    if msg.outputs:
        outputs = []
        for i, o in enumerate(msg.outputs):
            if not o.name:
                raise InvalidInputError(f"outputs[{i}] has no name")
            params = params_from_pb(o.parameters) if o.parameters else {}
            outputs.append(RequestedOutput(name=o.name, parameters=params))
    return InferRequest(
        model_name=msg.model_name,
        inputs=inputs,
        model_version=msg.model_version or None,
        id=msg.id or None,
        parameters=params_from_pb(msg.parameters) if msg.parameters else {},
        outputs=outputs,
    )


def encode_request(req: InferRequest) -> Any:
    """An InferRequest as a ``ModelInferRequest`` with raw contents for every input."""
    msg = pb2.ModelInferRequest(model_name=req.model_name, model_version=req.model_version or "")
    if req.id:
        msg.id = req.id
    params_to_pb(msg.parameters, req.parameters)
    raws: list[bytes] = []
    for tensor in req.inputs:
        t = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        params_to_pb(t.parameters, _without_transport_params(tensor.parameters))
        raws.append(_raw_of(tensor, "input", InvalidInputError))
    msg.raw_input_contents.extend(raws)
    for out in req.outputs or ():
        o = msg.outputs.add(name=out.name)
        params_to_pb(o.parameters, out.parameters)
    return msg


# --------------------------------------------------------------------------------------------- response


def encode_response(response: InferResponse, request: InferRequest | None) -> Any:
    """An InferResponse as a ``ModelInferResponse`` with ``raw_output_contents`` for every output
    (as Triton does), keeping only the requested outputs when the request lists some."""
    msg = pb2.ModelInferResponse(model_name=response.model_name, model_version=response.model_version or "")
    rid = response.id or (request.id if request is not None else None)
    if rid:
        msg.id = rid
    params_to_pb(msg.parameters, response.parameters, _model_error)
    raws: list[bytes] = []
    for tensor, _ in select_outputs(response, request):
        o = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        params_to_pb(o.parameters, _without_transport_params(tensor.parameters), _model_error)
        raws.append(_raw_of(tensor, "output", _model_error))
    msg.raw_output_contents.extend(raws)
    return msg


def decode_response(msg: Any) -> InferResponse:
    """A ``ModelInferResponse`` as an InferResponse (raw or typed contents)."""
    return InferResponse(
        model_name=msg.model_name,
        outputs=_decode_tensors("output", msg.outputs, msg.raw_output_contents),
        model_version=msg.model_version or None,
        id=msg.id or None,
        parameters=params_from_pb(msg.parameters) if msg.parameters else {},
    )

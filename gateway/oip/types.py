"""Transport-neutral OIP request, response and tensor types, with numpy conversion on demand."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headrace.config.errors import InvalidInputError
from headrace.gateway.oip.datatypes import ITEM_SIZES, NUMPY_DTYPES, datatype_of

Parameters = dict[str, Any]

_LEN = struct.Struct("<I")


def element_count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def pack_bytes_elements(items: list[bytes]) -> bytes:
    """BYTES elements in raw form: each a little-endian uint32 length then its bytes."""
    out = bytearray()
    for item in items:
        out += _LEN.pack(len(item))
        out += item
    return bytes(out)


def unpack_bytes_elements(raw: bytes | memoryview, count: int | None = None) -> list[bytes]:
    """Inverse of :func:`pack_bytes_elements`; raises InvalidInputError on a malformed buffer."""
    view = memoryview(raw).cast("B") if not isinstance(raw, bytes) else memoryview(raw)
    items: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise InvalidInputError("BYTES tensor data is truncated (incomplete length prefix)")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInputError("BYTES tensor data is truncated (element longer than buffer)")
        items.append(bytes(view[pos : pos + n]))
        pos += n
    if count is not None and len(items) != count:
        raise InvalidInputError(f"BYTES tensor holds {len(items)} elements but its shape needs {count}")
    return items


@dataclass(slots=True)
class Tensor:
    """One named tensor. Exactly one of ``raw`` (little-endian bytes; BYTES length-prefixed)
    or ``data`` (a JSON ``data`` list as orjson decoded it, flat or nested) is set."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | memoryview | None = None
    data: list[Any] | None = None
    parameters: Parameters = field(default_factory=dict)

    @property
    def count(self) -> int:
        return element_count(self.shape)

    def to_numpy(self) -> np.ndarray:
        """The tensor as a numpy array; zero-copy (read-only) for raw fixed-size data."""
        dt = self.datatype
        if self.raw is not None:
            if dt == "BYTES":
                arr = np.empty(self.count, dtype=object)
                arr[:] = unpack_bytes_elements(self.raw, self.count)
                return arr.reshape(self.shape)
            return np.frombuffer(self.raw, dtype=NUMPY_DTYPES[dt]).reshape(self.shape)
        if self.data is None:
            raise InvalidInputError(f"tensor '{self.name}' has no data")
        if dt == "BYTES":
            arr = np.empty(self.count, dtype=object)
            arr[:] = [_as_bytes(v) for v in _flatten(self.data)]
            return arr.reshape(self.shape)
        try:
            return np.asarray(self.data, dtype=NUMPY_DTYPES[dt]).reshape(self.shape)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"tensor '{self.name}': data does not fit {dt}{self.shape}: {exc}"
            ) from None

    def raw_bytes(self) -> bytes | memoryview:
        """The tensor in raw form (encodes a JSON ``data`` list when needed)."""
        if self.raw is not None:
            return self.raw
        if self.datatype == "BYTES":
            return pack_bytes_elements([_as_bytes(v) for v in _flatten(self.data or [])])
        return self.to_numpy().tobytes()

    def to_list(self) -> list[Any]:
        """A flat JSON-ready list of the elements (BYTES as str when UTF-8, else raise)."""
        if self.data is not None:
            flat = self.data
            if flat and isinstance(flat[0], list):
                flat = list(_flatten(flat))
            return flat
        if self.datatype == "BYTES":
            return [_bytes_to_json(b) for b in unpack_bytes_elements(self.raw or b"", self.count)]
        return self.to_numpy().reshape(-1).tolist()

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray, parameters: Parameters | None = None) -> Tensor:
        """A tensor over a numpy array's bytes (no copy for C-contiguous fixed-size arrays)."""
        datatype = datatype_of(array)
        shape = list(array.shape)
        if datatype == "BYTES":
            raw: bytes | memoryview = pack_bytes_elements([_as_bytes(v) for v in array.reshape(-1)])
        else:
            arr = np.ascontiguousarray(array)
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            raw = arr.data.cast("B") if arr.size else b""
        return cls(name=name, datatype=datatype, shape=shape, raw=raw, parameters=parameters or {})

    def nbytes(self) -> int:
        if self.raw is not None:
            return len(self.raw) if isinstance(self.raw, bytes) else self.raw.nbytes
        size = ITEM_SIZES.get(self.datatype)
        return self.count * size if size is not None else len(self.raw_bytes())


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


def _flatten(data: list[Any]) -> Any:
    for v in data:
        if isinstance(v, list):
            yield from _flatten(v)
        else:
            yield v


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, np.bytes_):
        return bytes(v)
    return str(v).encode()


def _bytes_to_json(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        raise InvalidInputError(
            "BYTES output is not UTF-8; request it with binary_data to receive raw bytes"
        ) from None


def count_bytes_elements(raw: bytes | memoryview) -> int:
    """How many elements a raw BYTES buffer holds; raises InvalidInputError when it is malformed."""
    view = memoryview(raw)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    unpack = _LEN.unpack_from
    pos, end, n = 0, len(view), 0
    while pos < end:
        if pos + 4 > end:
            raise InvalidInputError("BYTES tensor data is truncated (incomplete length prefix)")
        pos += 4 + unpack(view, pos)[0]
        n += 1
    if pos != end:
        raise InvalidInputError("BYTES tensor data is truncated (element longer than buffer)")
    return n


def check_raw(
    name: str, datatype: str, shape: list[int], raw: bytes | memoryview, what: str = "input"
) -> None:
    """Raise InvalidInputError naming the tensor unless ``raw`` holds exactly what ``shape`` needs."""
    count = element_count(shape)
    size = len(raw) if isinstance(raw, bytes) else raw.nbytes
    item = ITEM_SIZES.get(datatype)
    if item is not None:
        if size != count * item:
            raise InvalidInputError(
                f"{what} '{name}' has {size} bytes of binary data but {datatype} {shape} needs "
                f"{count * item} ({count} x {item} bytes)"
            )
        return
    try:
        n = count_bytes_elements(raw)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{what} '{name}': {exc.message}") from None
    if n != count:
        raise InvalidInputError(f"{what} '{name}' holds {n} BYTES elements but shape {shape} needs {count}")


def select_outputs(
    response: InferResponse, request: InferRequest | None
) -> list[tuple[Tensor, RequestedOutput | None]]:
    """The outputs to return, in model order, each with its requested-output entry (if any).

    When the request lists outputs only those are returned; a listed name the model did not
    produce raises InvalidInputError naming it."""
    requested = request.outputs if request is not None else None
    if not requested:
        return [(t, None) for t in response.outputs]
    wanted = {r.name: r for r in requested}
    produced = {t.name for t in response.outputs}
    for r in requested:
        if r.name not in produced:
            names = ", ".join(t.name for t in response.outputs) or "none"
            raise InvalidInputError(
                f"requested output '{r.name}' is not an output of model '{response.model_name}' "
                f"(outputs: {names})"
            )
    return [(t, wanted[t.name]) for t in response.outputs if t.name in wanted]

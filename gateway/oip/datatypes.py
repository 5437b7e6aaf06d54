"""OIP datatypes: names, element sizes and numpy dtypes."""

from __future__ import annotations

from typing import Final

import numpy as np

# OIP datatype -> numpy dtype (little-endian). BYTES has no fixed size: raw form is
# a sequence of (uint32 little-endian length, bytes) elements, as in Triton's binary extension.
NUMPY_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

ITEM_SIZES: Final[dict[str, int]] = {
    name: dt.itemsize for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
}

DATATYPES: Final[frozenset[str]] = frozenset(NUMPY_DTYPES)

_FROM_NUMPY: Final[dict[str, str]] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
    "bytes": "BYTES",
}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name for a numpy array (``S``/``U``/object arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _FROM_NUMPY[array.dtype.name]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no OIP datatype") from None

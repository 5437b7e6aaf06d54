"""The one mapping from ErrorKind to HTTP status codes and gRPC status codes."""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

import grpc

from headrace.config.errors import ErrorKind

HTTP_STATUS: Final = MappingProxyType(
    {
        ErrorKind.INVALID_ARGUMENT: 400,
        ErrorKind.NOT_FOUND: 404,
        ErrorKind.TOO_LARGE: 413,
        ErrorKind.UNAVAILABLE: 503,
        ErrorKind.TIMEOUT: 504,
        ErrorKind.MODEL_ERROR: 500,
        ErrorKind.INTERNAL: 500,
        ErrorKind.CONFLICT: 409,
    }
)

GRPC_CODE: Final = MappingProxyType(
    {
        ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
        ErrorKind.MODEL_ERROR: grpc.StatusCode.INTERNAL,
        ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
        ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    }
)


def http_status(kind: ErrorKind) -> int:
    """The HTTP status code for an error kind."""
    return HTTP_STATUS[kind]


def grpc_code(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC status code for an error kind."""
    return GRPC_CODE[kind]

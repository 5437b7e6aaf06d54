"""Error kinds shared by every layer; transports map them to HTTP and gRPC codes in one place."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    MODEL_ERROR = "model_error"
    INTERNAL = "internal"
    CONFLICT = "conflict"


class HeadraceError(Exception):
    """An error with a kind; its message is what the user reads."""

    kind: ErrorKind = ErrorKind.INTERNAL
    #: the model-server replica that answered with this error, when one did (metrics label it)
    replica: object | None = None

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidInputError(HeadraceError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFoundError(HeadraceError):
    kind = ErrorKind.NOT_FOUND


class NotServedError(HeadraceError):
    """The request never reached a model (replica down or not loaded yet): safe to retry."""

    kind = ErrorKind.UNAVAILABLE


class ConfigError(HeadraceError):
    """A setting or manifest that cannot be used; the message names the field."""

    kind = ErrorKind.INVALID_ARGUMENT

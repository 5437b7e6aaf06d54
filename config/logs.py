"""Logging set-up for each process role (one format, the role in every line): text or JSON lines.

The request being served (its id) is a context variable set by the front doors: log records made
while serving it carry ``request_id``, in JSON as a field, in text after the message.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
from typing import Any

import orjson

#: The request being served, if any (asyncio copies it into every task a call starts).
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("headrace_request", default=None)

# attributes every LogRecord has: anything else on a record came from ``extra=`` and is a field
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def request_id_of(record: logging.LogRecord) -> str | None:
    rid = getattr(record, "request_id", None)
    if rid is None:
        current = current_request.get()
        rid = getattr(current, "request_id", None)
    return rid


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, role, logger, message, request_id, extra fields, exc."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_of(record)
        if rid is not None:
            out["request_id"] = rid
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in out and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with ``request_id=...`` after the message while a request is served."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id_of(record)
        if rid is None:
            return line
        head, sep, tail = line.partition("\n")  # after the message, before any traceback
        return f"{head} request_id={rid}{sep}{tail}"


def setup_logging(level: str, role: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(TextFormatter(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(force=True, level=level.upper(), handlers=[handler])

"""Blocking HTTP calls to the scheduler's internal API, for the control threads of workers and servers."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import msgspec

T = TypeVar("T")
log = logging.getLogger("headrace.control")


class ControlUnavailableError(Exception):
    pass


def get(url: str, type_: type[T], timeout: float) -> T:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return msgspec.json.decode(resp.read(), type=type_)
    except (urllib.error.URLError, OSError, msgspec.DecodeError) as exc:
        raise ControlUnavailableError(f"GET {url}: {exc}") from None


def post(url: str, body: msgspec.Struct, timeout: float = 5.0) -> None:
    req = urllib.request.Request(
        url, data=msgspec.json.encode(body), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ControlUnavailableError(f"POST {url}: {exc}") from None


def follow(stop: threading.Event, step: Callable[[], None]) -> None:
    """Run ``step`` (one long-poll round) until ``stop``; back off while the scheduler is away."""
    backoff = 0.1
    while not stop.is_set():
        try:
            step()
            backoff = 0.1
        except ControlUnavailableError as exc:
            log.debug("scheduler unavailable: %s", exc)
            stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

"""Load and unload a model through the control API, each reported as one locust request (call + wait)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from locust.env import Environment

POLL_S = 0.05
TIMEOUT_S = 60.0


class ChurnFailure(Exception):
    """A load or unload that the control API refused, that failed, or that did not finish in time."""


class ModelChurn:
    """Loads a Seldon Model manifest and waits for ModelReady; deletes it and waits until it is gone."""

    def __init__(self, environment: Environment, control_url: str, name: str, storage_uri: str) -> None:
        self.environment = environment
        self.control_url = control_url
        self.name = name
        self.path = f"/v1/models/{quote(name, safe='')}"
        self.manifest = (
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
            f"metadata:\n  name: {name}\n"
            f"spec:\n  storageUri: {json.dumps(storage_uri)}\n  requirements: [python]\n  memory: 10Mi\n"
        )

    def load(self) -> bool:
        """Reported as request type `control`, name `load {model}`: until its ModelReady is True."""
        return self._timed("load", self._load)

    def unload(self) -> bool:
        """Reported as `unload {model}`: until GET /v1/models/{model} answers 404."""
        return self._timed("unload", self._unload)

    def remove(self) -> None:
        """Unload if loaded, unreported: before the first cycle and when the user stops mid-cycle."""
        try:
            status, _ = self._call("DELETE", self.path)
            if status == 200:
                self._wait_gone()
        except (OSError, ChurnFailure):
            pass

    def _load(self) -> None:
        status, body = self._call("POST", "/v1/models", self.manifest.encode(), "application/yaml")
        if status != 200:
            raise ChurnFailure(f"POST /v1/models: HTTP {status}: {_error(body)}")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            status, body = self._call("GET", self.path)
            if status != 200:
                raise ChurnFailure(f"GET {self.path}: HTTP {status}: {_error(body)}")
            model = json.loads(body)
            if _ready(model):
                return
            if model.get("state") in ("ModelFailed", "ScheduleFailed"):
                raise ChurnFailure(f"{model['state']}: {model.get('reason', '')}")
            if time.monotonic() > deadline:
                raise ChurnFailure(f"not available after {TIMEOUT_S:g} s (state {model.get('state')})")
            time.sleep(POLL_S)

    def _unload(self) -> None:
        status, body = self._call("DELETE", self.path)
        if status != 200:
            raise ChurnFailure(f"DELETE {self.path}: HTTP {status}: {_error(body)}")
        self._wait_gone()

    def _wait_gone(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            status, body = self._call("GET", self.path)
            if status == 404:
                return
            if status != 200:
                raise ChurnFailure(f"GET {self.path}: HTTP {status}: {_error(body)}")
            if time.monotonic() > deadline:
                state = json.loads(body).get("state")
                raise ChurnFailure(f"still there {TIMEOUT_S:g} s after DELETE (state {state})")
            time.sleep(POLL_S)

    def _timed(self, action: str, work: Callable[[], None]) -> bool:
        """Runs ``work`` and reports it as one request; True if it succeeded."""
        start_time = time.time()
        started = time.perf_counter()
        exception: Exception | None = None
        try:
            work()
        except ChurnFailure as exc:
            exception = exc
        except (OSError, ValueError) as exc:  # unreachable, cut off, or not JSON
            exception = ChurnFailure(f"{type(exc).__name__}: {exc}")
        self.environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="control",
            name=f"{action} {self.name}",
            start_time=start_time,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            response=None,
            context={},
            exception=exception,
        )
        return exception is None

    def _call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.control_url + path, data=body, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _ready(model: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "ModelReady" and c.get("status") == "True" for c in model.get("conditions", [])
    )


def _error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")

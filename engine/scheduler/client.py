"""ControlClient: a small urllib client for the scheduler's control API (CLI, tests, other processes)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.engine.scheduler.status import ModelStatus, PipelineStatus, ServerStatus, ShardingStatus
from headrace.gateway.control import RoutingTable, ServerDesired, ServerReport, WorkerReport

DEFAULT_CONTROL_URL = "http://127.0.0.1:9004"
T = TypeVar("T")

_KINDS = {
    400: ErrorKind.INVALID_ARGUMENT,
    404: ErrorKind.NOT_FOUND,
    409: ErrorKind.CONFLICT,
    413: ErrorKind.TOO_LARGE,
    503: ErrorKind.UNAVAILABLE,
}


class ControlError(HeadraceError):
    """The control API said no (``status`` is its HTTP status) or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(
            message, _KINDS.get(status, ErrorKind.UNAVAILABLE if status == 0 else ErrorKind.INTERNAL)
        )
        self.status = status


class _Models(msgspec.Struct):
    models: list[ModelStatus]


class _Pipelines(msgspec.Struct):
    pipelines: list[PipelineStatus]


class _Servers(msgspec.Struct):
    servers: list[ServerStatus]


def default_control_url() -> str:
    return os.environ.get("HEADRACE_CONTROL_URL") or DEFAULT_CONTROL_URL


class ControlClient:
    def __init__(self, base_url: str | None = None, timeout: float = 45.0) -> None:
        # above the scheduler's sync wait (30 s): a call made just after its restart waits, not fails
        self.base_url = (base_url or default_control_url()).rstrip("/")
        if "://" not in self.base_url:
            self.base_url = "http://" + self.base_url
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> bytes:
        url = self.base_url + path
        headers = {
            "Content-Type": "application/yaml"
            if method == "POST" and path in ("/v1/models", "/v1/pipelines")
            else "application/json"
        }
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = str(msgspec.json.decode(raw).get("error") or raw.decode(errors="replace"))
            except (msgspec.DecodeError, AttributeError):
                message = raw.decode(errors="replace") or str(exc)
            raise ControlError(message, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlError(f"cannot reach the scheduler at {self.base_url}: {reason}") from None

    def _get(self, path: str, type_: type[T], timeout: float | None = None) -> T:
        return msgspec.json.decode(self.request("GET", path, timeout=timeout), type=type_)

    # ---------------------------------------------------------------------------- public API

    def health(self) -> dict[str, Any]:
        return self._get("/v1/health", dict[str, Any])

    def load_models(self, manifest_yaml: str) -> list[ModelStatus]:
        """Load (or reload) the Model docs in this YAML; storageUri must be absolute."""
        data = self.request("POST", "/v1/models", manifest_yaml.encode())
        return msgspec.json.decode(data, type=_Models).models

    def unload_model(self, name: str) -> ModelStatus:
        return msgspec.json.decode(
            self.request("DELETE", f"/v1/models/{quote(name, safe='')}"), type=ModelStatus
        )

    def model_status(self, name: str) -> ModelStatus:
        return self._get(f"/v1/models/{quote(name, safe='')}", ModelStatus)

    def list_models(self) -> list[ModelStatus]:
        return self._get("/v1/models", _Models).models

    def load_pipelines(self, manifest_yaml: str) -> list[PipelineStatus]:
        """Load (or reload) the Pipeline docs in this YAML: all of them, or none if one is invalid."""
        data = self.request("POST", "/v1/pipelines", manifest_yaml.encode())
        return msgspec.json.decode(data, type=_Pipelines).pipelines

    def unload_pipeline(self, name: str) -> PipelineStatus:
        return msgspec.json.decode(
            self.request("DELETE", f"/v1/pipelines/{quote(name, safe='')}"), type=PipelineStatus
        )

    def pipeline_status(self, name: str) -> PipelineStatus:
        return self._get(f"/v1/pipelines/{quote(name, safe='')}", PipelineStatus)

    def list_pipelines(self) -> list[PipelineStatus]:
        return self._get("/v1/pipelines", _Pipelines).pipelines

    def sharding(self) -> ShardingStatus:
        return self._get("/v1/sharding", ShardingStatus)

    def set_multiplier(self, multiplier: int) -> ShardingStatus:
        body = msgspec.json.encode({"maxShardCountMultiplier": multiplier})
        return msgspec.json.decode(self.request("PUT", "/v1/sharding", body), type=ShardingStatus)

    def list_servers(self) -> list[ServerStatus]:
        return self._get("/v1/servers", _Servers).servers

    def server_status(self, name: str) -> ServerStatus:
        return self._get(f"/v1/servers/{quote(name, safe='')}", ServerStatus)

    # ---------------------------------------------------------------------- data-plane API

    def routes(self, after: int = 0, wait: float = 0.0) -> RoutingTable:
        return self._get(f"/v1/internal/routes?after={after}&wait={wait}", RoutingTable, self.timeout + wait)

    def desired(self, server: str, index: int, after: int = 0, wait: float = 0.0) -> ServerDesired:
        path = f"/v1/internal/servers/{quote(server, safe='')}/{index}/desired?after={after}&wait={wait}"
        return self._get(path, ServerDesired, self.timeout + wait)

    def report_server(self, report: ServerReport) -> None:
        path = f"/v1/internal/servers/{quote(report.server, safe='')}/{report.index}/report"
        self.request("POST", path, msgspec.json.encode(report))

    def report_worker(self, report: WorkerReport) -> None:
        self.request("POST", f"/v1/internal/workers/{report.index}/report", msgspec.json.encode(report))

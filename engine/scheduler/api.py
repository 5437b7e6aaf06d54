"""The control API over HTTP/JSON: model, pipeline and server commands, long-polls and data-plane reports."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from headrace.config.errors import ConfigError, ErrorKind, HeadraceError
from headrace.config.manifests import ModelManifest, parse_manifests
from headrace.engine.scheduler.pipelines import parse_pipeline_docs
from headrace.engine.scheduler.state import SchedulerState
from headrace.gateway.control import ServerReport, WorkerReport

log = logging.getLogger("headrace.scheduler")

MAX_BODY = 16 * 1024 * 1024
MAX_WAIT_S = 30.0
_STATUS = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.TOO_LARGE: 413,
}
_NAME = r"([^/]+)"


class HttpError(HeadraceError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _yaml_body(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the body must be UTF-8 YAML") from None


def _manifests_from_body(body: bytes) -> list[ModelManifest]:
    manifests = parse_manifests(_yaml_body(body), None)
    servers = [m.name for m in manifests if not isinstance(m, ModelManifest)]
    if servers:
        raise ConfigError(
            f"Server {servers[0]}: servers are static; "
            "pass Server manifests to `headrace serve --server-file`"
        )
    if not manifests:
        raise ConfigError("no Model manifest in the request")
    return [m for m in manifests if isinstance(m, ModelManifest)]


class ShardingChange(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    max_shard_count_multiplier: int | None = None


class ControlApi:
    """Routes requests to the state; every handler returns a msgspec-encodable value."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/v1/health"), self.health),
            ("POST", re.compile(r"/v1/models"), self.load),
            ("GET", re.compile(r"/v1/models"), self.list_models),
            ("GET", re.compile(rf"/v1/models/{_NAME}"), self.model),
            ("DELETE", re.compile(rf"/v1/models/{_NAME}"), self.unload),
            ("POST", re.compile(r"/v1/pipelines"), self.load_pipelines),
            ("GET", re.compile(r"/v1/pipelines"), self.list_pipelines),
            ("GET", re.compile(rf"/v1/pipelines/{_NAME}"), self.pipeline),
            ("DELETE", re.compile(rf"/v1/pipelines/{_NAME}"), self.unload_pipeline),
            ("GET", re.compile(r"/v1/sharding"), self.sharding),
            ("PUT", re.compile(r"/v1/sharding"), self.set_sharding),
            ("GET", re.compile(r"/v1/servers"), self.list_servers),
            ("GET", re.compile(rf"/v1/servers/{_NAME}"), self.server),
            ("GET", re.compile(r"/v1/internal/routes"), self.routes_poll),
            ("GET", re.compile(rf"/v1/internal/servers/{_NAME}/(\d+)/desired"), self.desired_poll),
            ("POST", re.compile(rf"/v1/internal/servers/{_NAME}/(\d+)/report"), self.server_report),
            ("POST", re.compile(r"/v1/internal/workers/(\d+)/report"), self.worker_report),
        ]

    def dispatch(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        allowed = False
        for verb, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if verb != method:
                allowed = True
                continue
            try:
                return 200, handler(*(unquote(g) for g in match.groups()), query=query, body=body)
            except HttpError as exc:
                return exc.status, {"error": exc.message}
            except HeadraceError as exc:
                return _STATUS.get(exc.kind, 500), {"error": exc.message}
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                return 400, {"error": f"invalid body: {exc}"}
        if allowed:
            return 405, {"error": f"{method} is not allowed on {path}"}
        return 404, {"error": f"no such endpoint: {method} {path}"}

    # -------------------------------------------------------------------------------- handlers

    def health(self, **_: Any) -> Any:
        return {"status": "ok"}

    def load(self, *, body: bytes, **_: Any) -> Any:
        return {"models": self.state.load(_manifests_from_body(body))}

    def list_models(self, **_: Any) -> Any:
        return {"models": self.state.model_statuses()}

    def model(self, name: str, **_: Any) -> Any:
        return self.state.model_status(name)

    def unload(self, name: str, **_: Any) -> Any:
        return self.state.unload(name)

    def load_pipelines(self, *, body: bytes, **_: Any) -> Any:
        """Every document is parsed and checked before any is loaded: all or nothing."""
        return {"pipelines": self.state.load_pipelines(parse_pipeline_docs(_yaml_body(body)))}

    def list_pipelines(self, **_: Any) -> Any:
        return {"pipelines": self.state.pipeline_statuses()}

    def pipeline(self, name: str, **_: Any) -> Any:
        return self.state.pipeline_status(name)

    def unload_pipeline(self, name: str, **_: Any) -> Any:
        return self.state.unload_pipeline(name)

    def sharding(self, **_: Any) -> Any:
        return self.state.sharding_status()

    def set_sharding(self, *, body: bytes, **_: Any) -> Any:
        """``{"maxShardCountMultiplier": N}`` (0: the partitions): units move at once."""
        change = msgspec.json.decode(body or b"{}", type=ShardingChange)
        if change.max_shard_count_multiplier is None:
            raise HttpError(400, "give maxShardCountMultiplier")
        self.state.set_multiplier(change.max_shard_count_multiplier)
        return self.state.sharding_status()

    def list_servers(self, **_: Any) -> Any:
        return {"servers": self.state.server_statuses()}

    def server(self, name: str, **_: Any) -> Any:
        return self.state.server_status(name)

    def routes_poll(self, *, query: dict[str, str], **_: Any) -> Any:
        after, wait = _poll_args(query)
        table = self.state.wait_routes(after, wait)
        if table is None:
            raise HttpError(503, "the scheduler restarted and is waiting for server replicas to report")
        return table

    def desired_poll(self, server: str, index: str, *, query: dict[str, str], **_: Any) -> Any:
        after, wait = _poll_args(query)
        return self.state.wait_desired(server, int(index), after, wait)

    def server_report(self, server: str, index: str, *, body: bytes, **_: Any) -> Any:
        report = msgspec.json.decode(body, type=ServerReport)
        if (report.server, report.index) != (server, int(index)):
            raise HttpError(400, f"report for {report.server}-{report.index} posted to {server}-{index}")
        self.state.report_server(report)
        return {"status": "ok"}

    def worker_report(self, index: str, *, body: bytes, **_: Any) -> Any:
        report = msgspec.json.decode(body, type=WorkerReport)
        if report.index != int(index):
            raise HttpError(400, f"report for worker {report.index} posted to worker {index}")
        self.state.report_worker(report)
        return {"status": "ok"}


def _poll_args(query: dict[str, str]) -> tuple[int, float]:
    try:
        after = int(query.get("after", "0"))
        wait = float(query.get("wait", "0"))
    except ValueError:
        raise HttpError(400, "after must be an integer and wait a number of seconds") from None
    return after, min(max(wait, 0.0), MAX_WAIT_S)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlServer

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": f"body larger than {MAX_BODY} bytes"})
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        try:
            status, payload = self.server.api.dispatch(self.command, self.path, body)
        except Exception as exc:  # a bug: answer and log rather than drop the connection
            log.exception("control API %s %s failed", self.command, self.path)
            status, payload = 500, {"error": f"internal error: {exc}"}
        self._send(status, payload)

    def _send(self, status: int, payload: Any) -> None:
        data = msgspec.json.encode(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the poller went away (worker or server stopped): nothing to tell it
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control API: " + format, *args)


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # every worker and server replica holds a long-poll open: the stdlib default backlog (5) is too small
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], api: ControlApi) -> None:
        self.api = api
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("control API connection from %s failed", client_address, exc_info=True)

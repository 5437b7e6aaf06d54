"""HTTP/1.1 server protocol on httptools: keep-alive, pipelining in order, body limits, graceful close."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from headrace.gateway.telemetry.tracing import RequestIds

log = logging.getLogger("headrace.http")
_ids = RequestIds()

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}
JSON = b"application/json"


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | bytearray = b""


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: list[bytes | memoryview]
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # called once the body has been handed to the kernel (e.g. to free shared memory it points into)
    done: Callable[[], None] | None = None


Handler = Callable[[HttpRequest], "HttpResponse | Awaitable[HttpResponse]"]


def error_response(status: int, message: str) -> HttpResponse:
    import orjson

    return HttpResponse(status, [orjson.dumps({"error": message})])


def _own_error(state: ServerState, status: int, message: str) -> HttpResponse:
    """An answer this protocol makes itself (the handler never saw the request): with a request id."""
    response = error_response(status, message)
    response.headers.append((b"x-request-id", state.new_request_id().encode()))
    return response


class ServerState:
    """What all connections of one worker share: the handler, limits and the set of connections."""

    def __init__(self, handler: Handler, max_body: int, keepalive_timeout: float) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self.in_flight = 0
        self._sweeper: asyncio.TimerHandle | None = None
        # the x-request-id of answers made here (unparsable requests, handler failures)
        self.new_request_id: Callable[[], str] = _ids.new

    def start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close idle keep-alive connections and stalled half-sent requests, once a second."""
        if self.keepalive_timeout <= 0:
            return
        now = loop.time()
        for conn in list(self.connections):
            if not conn.busy and now - conn.last_active > self.keepalive_timeout:
                conn.idle_expired()
        self._sweeper = loop.call_later(min(1.0, self.keepalive_timeout / 2), self.start_sweeping, loop)

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "body",
        "busy",
        "drained",
        "headers",
        "in_message",
        "keep_alive",
        "last_active",
        "loop",
        "parser",
        "queue",
        "state",
        "task",
        "too_large",
        "transport",
        "url",
        "write_paused",
    )

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.too_large = False
        self.queue: collections.deque[tuple[HttpRequest, bool]] = collections.deque()
        self.busy = False
        self.keep_alive = True
        self.last_active = loop.time()
        self.write_paused = False
        self.drained: asyncio.Event | None = None
        self.in_message = False
        self.task: asyncio.Task[None] | None = None

    # -- connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.transport = None
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()  # nobody is waiting for the answer any more
        if self.drained is not None:
            self.drained.set()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None:
            self.drained.set()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            if not self.too_large:
                self._fail(400, f"malformed HTTP request: {exc}")

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot parse, then close: the stream position is unknown."""
        self.keep_alive = False
        self.queue.clear()
        if self.transport is not None and not self.busy:
            self._write(_own_error(self.state, status, message))
            self.transport.close()

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.headers = {}
        self.body = bytearray()
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.state.max_body:
            self.too_large = True
            self._reject_too_large()

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body += body
        if len(self.body) > self.state.max_body:
            self.too_large = True
            self._reject_too_large()

    def _reject_too_large(self) -> None:
        self.body = bytearray()
        self._fail(413, f"request body exceeds the limit of {self.state.max_body} bytes")
        raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.too_large:
            return
        parsed = httptools.parse_url(self.url)
        path = parsed.path.decode("latin-1")
        method = self.parser.get_method().decode("latin-1")
        keep_alive = self.parser.should_keep_alive()
        body = self.body
        self.body = bytearray()
        request = HttpRequest(method, path, self.headers, body)
        if self.busy:
            self.queue.append((request, keep_alive))
            return
        self._dispatch(request, keep_alive)

    # -- dispatch ---------------------------------------------------------------------------------
    def _dispatch(self, request: HttpRequest, keep_alive: bool) -> None:
        state = self.state
        try:
            result = state.handler(request)
        except Exception as exc:  # a handler bug must still answer
            log.exception("handler failed")
            result = _own_error(state, 500, f"internal error: {exc}")
        if isinstance(result, HttpResponse):
            self._respond(result, keep_alive)
            return
        self.busy = True
        state.in_flight += 1
        self.task = self.loop.create_task(self._await(result, keep_alive))

    async def _await(self, pending: Awaitable[HttpResponse], keep_alive: bool) -> None:
        try:
            try:
                response = await pending
            except Exception as exc:
                log.exception("handler failed")
                response = _own_error(self.state, 500, f"internal error: {exc}")
            if response.done is not None and self.transport is not None:
                try:
                    self._write(response, keep_alive)
                    if self.transport is not None and self.transport.get_write_buffer_size():
                        await self._drain()  # the body points into shared memory: wait until sent
                finally:
                    response.done()
                    response.done = None
                self._after_response(keep_alive)
            else:
                self._respond(response, keep_alive)
        finally:
            self.state.in_flight -= 1
            self.busy = False
            self.task = None
        self._next()

    async def _drain(self) -> None:
        """Wait until the kernel has every byte: the body may point into shared memory."""
        transport = self.transport
        if transport is None or not transport.get_write_buffer_size():
            return
        if self.drained is None:
            self.drained = asyncio.Event()
        # with a high-water mark of 0 the transport pauses us while anything is buffered and resumes
        # us once the buffer is empty: an event to wait on, not a loop to spin
        transport.set_write_buffer_limits(high=0)
        try:
            while self.transport is not None and self.transport.get_write_buffer_size():
                self.drained.clear()
                if self.write_paused:
                    await self.drained.wait()
                else:
                    await asyncio.sleep(0.001)  # not paused yet: the transport decides on its next write
        finally:
            if self.transport is not None:
                self.transport.set_write_buffer_limits()

    def _next(self) -> None:
        while self.queue and not self.busy and self.transport is not None:
            request, keep_alive = self.queue.popleft()
            self._dispatch(request, keep_alive)

    def _respond(self, response: HttpResponse, keep_alive: bool) -> None:
        self._write(response, keep_alive)
        if response.done is not None:
            response.done()
        self._after_response(keep_alive)

    def _after_response(self, keep_alive: bool) -> None:
        if self.transport is None:
            return
        if not (keep_alive and self.keep_alive) or (self.state.draining and not self.queue):
            self.transport.close()
        else:
            self.last_active = self.loop.time()

    def _write(self, response: HttpResponse, keep_alive: bool = True) -> None:
        transport = self.transport
        if transport is None:
            return
        length = 0
        for part in response.body:
            length += len(part) if isinstance(part, bytes) else part.nbytes
        close = not (keep_alive and self.keep_alive) or self.state.draining
        head = [
            _STATUS_LINES.get(response.status) or b"HTTP/1.1 %d Unknown\r\n" % response.status,
            b"content-type: ",
            response.content_type,
            b"\r\ncontent-length: %d\r\n" % length,
        ]
        for name, value in response.headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"connection: close\r\n\r\n" if close else b"\r\n")
        body = response.body
        if len(body) == 1 and isinstance(body[0], bytes) and length < 65536:
            head.append(body[0])
            transport.write(b"".join(head))
        else:
            transport.write(b"".join(head))
            transport.writelines(body)

    def idle_expired(self) -> None:
        """Idle keep-alive connections, and half-sent requests that stalled, are closed."""
        if self.transport is not None and not self.busy:
            if self.in_message:
                self._fail(408, "request not completed in time")
            self.transport.close()

    def shutdown(self) -> None:
        """Drain: idle connections close now, busy ones after their current response."""
        self.keep_alive = False
        if self.transport is not None and not self.busy and not self.queue:
            self.transport.close()


async def serve_http(
    state: ServerState, host: str, port: int, *, reuse_port: bool = True, backlog: int = 2048
) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(state, loop), host=host, port=port, reuse_port=reuse_port, backlog=backlog
    )

"""One control port, two protocols: HTTP/2 connections (gRPC) are pumped to a unix socket, HTTP/1.1 stays.

Each accepted connection already gets its own thread from the ThreadingHTTPServer; that thread peeks at
the first bytes without consuming them. A gRPC client opens with the HTTP/2 preface ``PRI * HTTP/2.0``
(RFC 9113 §3.4; no HTTP/1 method is called PRI, so four bytes decide): such a connection is copied
both ways to the gRPC server's unix socket until both sides have closed. Anything else is served by
the JSON control API in the same thread, as before: its only extra cost is one peek per connection.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from typing import Any

from headrace.engine.scheduler.api import ControlApi, ControlServer

log = logging.getLogger("headrace.scheduler")

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DECISIVE = HTTP2_PREFACE[:4]  # "PRI ": enough to tell HTTP/2 from any HTTP/1 request line
PEEK_TIMEOUT_S = 10.0  # a client that sent a partial "PRI " and stalls is dropped after this
CHUNK = 64 * 1024


def is_http2(sock: socket.socket, timeout: float = PEEK_TIMEOUT_S) -> bool:
    """Whether the connection opens with the HTTP/2 preface; nothing is consumed.

    Blocks like a read until the first bytes arrive (as the HTTP/1.1 handler would). Only when they
    are a strict prefix of "PRI " (a split first segment, rare) does it peek again until decided.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            head = sock.recv(len(_DECISIVE), socket.MSG_PEEK)
        except OSError:
            return False  # reset before a byte: let the HTTP handler see the dead socket
        if len(head) >= len(_DECISIVE) or not head or not _DECISIVE.startswith(head):
            return head[: len(_DECISIVE)] == _DECISIVE
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def pump(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until both directions have ended; an end-of-stream on one side is passed on
    as a half-close (shutdown of writing) to the other, so either side may finish first."""
    peers = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as sel:
        for sock in peers:
            sel.register(sock, selectors.EVENT_READ)
        while peers:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst = peers.get(src)
                if dst is None:
                    continue
                try:
                    data = src.recv(CHUNK)
                    if data:
                        dst.sendall(data)
                        continue
                except OSError:  # a reset on either side ends the whole connection
                    return
                sel.unregister(src)
                del peers[src]
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)


class MuxControlServer(ControlServer):
    """The control API's HTTP/1.1 server, also answering gRPC on the same port via ``grpc_socket``."""

    def __init__(self, address: tuple[str, int], api: ControlApi, grpc_socket: str) -> None:
        self.grpc_socket = grpc_socket
        super().__init__(address, api)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if not is_http2(request):
            super().finish_request(request, client_address)
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.grpc_socket)
        except OSError as exc:
            log.warning("control port: gRPC connection from %s dropped: %s", client_address, exc)
            upstream.close()
            return
        with upstream:
            # as gRPC does on its own sockets: a response is several small writes (headers, data,
            # trailers) and Nagle would hold each later one for the client's delayed ACK (~40 ms)
            with contextlib.suppress(OSError):
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pump(request, upstream)

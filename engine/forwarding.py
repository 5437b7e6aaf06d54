"""Calls forwarded between workers: a worker that serves none of a pipeline's (or a model's topics')
partitions hands the call to one that does — over a unix socket on the same instance, over TCP to
another instance — and relays the answer, or the error, to its caller.

One length-prefixed msgpack frame each way per call, the request and the answer as OIP protobuf;
calls share one connection per peer and are matched by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.engine.gateways.pipeline import Reply, Target, seconds_text
from headrace.gateway.control import WorkerAddr
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest

log = logging.getLogger("headrace.forwarding")

_HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 31


class Call(msgspec.Struct, tag="q", array_like=True):
    id: int
    name: str
    kind: str  # pipeline | model
    request: bytes  # ModelInferRequest
    headers: list[tuple[str, bytes]]
    timeout: float


class Answer(msgspec.Struct, tag="a", array_like=True, omit_defaults=True):
    id: int
    response: bytes = b""  # ModelInferResponse
    key: str = ""
    error: str = ""  # ErrorKind value
    message: str = ""


Frame = Call | Answer
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)

#: Answers a forwarded call on this worker.
Handler = Callable[[Target, InferRequest, list[tuple[str, Any]], float], Awaitable[Reply]]


def _frame(msg: Frame) -> bytes:
    body = _encoder.encode(msg)
    return _HEADER.pack(len(body)) + body


class _Stream(asyncio.Protocol):
    """Frames in and out of one connection; ``on_frame`` gets each decoded frame."""

    def __init__(
        self, on_frame: Callable[[_Stream, Frame], None], on_lost: Callable[[_Stream], None]
    ) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.transport: Any = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            try:
                msg = _decoder.decode(memoryview(buf)[pos + 4 : pos + 4 + n])
            except msgspec.DecodeError:
                log.warning("forwarding: undecodable frame, closing the connection")
                if self.transport is not None:
                    self.transport.close()
                return
            pos += 4 + n
            self.on_frame(self, msg)
        if pos:
            del buf[:pos]

    def send(self, msg: Frame) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(msg))

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self)


class ForwardServer:
    """Takes calls forwarded by other workers and answers them with ``handler``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        self.loop = loop
        self.handler = handler
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, instance: str, unix_path: str, host: str, port: int) -> WorkerAddr:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix_path)
        unix = await self.loop.create_unix_server(self._protocol, unix_path)
        tcp = await self.loop.create_server(self._protocol, host, port)
        self._servers = [unix, tcp]
        bound = tcp.sockets[0].getsockname()
        return WorkerAddr(instance=instance, unix=unix_path, tcp=f"{bound[0]}:{bound[1]}")

    def _protocol(self) -> _Stream:
        return _Stream(self._on_frame, lambda _: None)

    def _on_frame(self, stream: _Stream, msg: Frame) -> None:
        if isinstance(msg, Call):
            task = asyncio.ensure_future(self._answer(stream, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, stream: _Stream, call: Call) -> None:
        try:
            request = grpc_codec.decode_request(pb2.ModelInferRequest.FromString(call.request))
            reply = await self.handler(
                Target(call.name, call.kind), request, list(call.headers), call.timeout
            )
            body = grpc_codec.encode_response(reply.response, request).SerializeToString()
            stream.send(Answer(call.id, response=body, key=reply.key))
        except HeadraceError as exc:
            stream.send(Answer(call.id, error=exc.kind.value, message=exc.message))
        except Exception as exc:  # a bug: the caller still gets an answer
            log.exception("forwarded call failed")
            stream.send(
                Answer(call.id, error=ErrorKind.INTERNAL.value, message=f"forwarded call failed: {exc}")
            )

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()


class ForwardClient:
    """Sends calls to other workers: ``await client(peer, target, request, headers, timeout)``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, instance: str, addr_of: Callable[[str], WorkerAddr | None]
    ) -> None:
        self.loop = loop
        self.instance = instance
        self.addr_of = addr_of
        self._ids = itertools.count(1)
        self._streams: dict[str, _Stream] = {}
        self._connecting: dict[str, asyncio.Future[_Stream]] = {}
        self._waiting: dict[int, tuple[_Stream, asyncio.Future[Answer]]] = {}

    async def __call__(
        self, peer: str, target: Target, request: InferRequest, headers: list[tuple[str, Any]], timeout: float
    ) -> Reply:
        stream = await self._stream(peer)
        call_id = next(self._ids)
        fut: asyncio.Future[Answer] = self.loop.create_future()
        self._waiting[call_id] = (stream, fut)
        encoded = [(n, v if isinstance(v, bytes) else str(v).encode()) for n, v in headers if v is not None]
        body = grpc_codec.encode_request(request).SerializeToString()
        stream.send(Call(call_id, target.name, target.kind, body, encoded, timeout))
        try:
            answer = await asyncio.wait_for(fut, timeout + 1.0)
        except TimeoutError:
            raise HeadraceError(
                f"{target.kind} {target.name} did not answer within {seconds_text(timeout)} s"
                f" (via worker {peer})",
                ErrorKind.TIMEOUT,
            ) from None
        finally:
            self._waiting.pop(call_id, None)
        if answer.error:
            raise HeadraceError(answer.message, ErrorKind(answer.error))
        response = grpc_codec.decode_response(pb2.ModelInferResponse.FromString(answer.response))
        if request.id and not response.id:
            response.id = request.id
        return Reply(response, answer.key)

    async def _stream(self, peer: str) -> _Stream:
        stream = self._streams.get(peer)
        if stream is not None and stream.transport is not None and not stream.transport.is_closing():
            return stream
        pending = self._connecting.get(peer)
        if pending is None:
            pending = self._connecting[peer] = asyncio.ensure_future(self._connect(peer))
            pending.add_done_callback(lambda _: self._connecting.pop(peer, None))
        return await asyncio.shield(pending)

    async def _connect(self, peer: str) -> _Stream:
        addr = self.addr_of(peer)
        if addr is None:
            raise HeadraceError(f"worker {peer} cannot be reached: no address known", ErrorKind.UNAVAILABLE)

        def protocol() -> _Stream:
            return _Stream(self._on_frame, self._on_lost)

        try:
            if addr.instance == self.instance and addr.unix:
                _, stream = await self.loop.create_unix_connection(protocol, addr.unix)
            else:
                host, _, port = addr.tcp.rpartition(":")
                _, stream = await self.loop.create_connection(protocol, host.strip("[]"), int(port))
        except OSError as exc:
            raise HeadraceError(f"worker {peer} cannot be reached: {exc}", ErrorKind.UNAVAILABLE) from None
        self._streams[peer] = stream
        return stream

    def _on_frame(self, stream: _Stream, msg: Frame) -> None:
        if isinstance(msg, Answer):
            entry = self._waiting.get(msg.id)
            if entry is not None and not entry[1].done():
                entry[1].set_result(msg)

    def _on_lost(self, stream: _Stream) -> None:
        for peer, s in list(self._streams.items()):
            if s is stream:
                del self._streams[peer]
        for call_id, (s, fut) in list(self._waiting.items()):
            if s is stream and not fut.done():
                fut.set_exception(
                    HeadraceError(
                        "the worker a call was forwarded to closed the connection", ErrorKind.UNAVAILABLE
                    )
                )
                self._waiting.pop(call_id, None)

    def close(self) -> None:
        for stream in self._streams.values():
            if stream.transport is not None:
                stream.transport.close()

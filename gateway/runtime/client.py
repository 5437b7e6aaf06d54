"""The worker side of model servers: one connection per server replica, least-in-flight balancing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from headrace.config.errors import ErrorKind, HeadraceError, NotServedError
from headrace.config.settings import Settings
from headrace.gateway.control import ModelRoute, ReplicaAddr
from headrace.gateway.oip.types import InferRequest, InferResponse
from headrace.gateway.runtime import messages as m
from headrace.gateway.runtime.tensors import from_wire, to_wire
from headrace.shm.arena import Arena, Ref

log = logging.getLogger("headrace.client")

_KINDS = {k.value: k for k in ErrorKind}
_SWEEP_S = 0.05  # timeout precision


@dataclass(slots=True)
class InferResult:
    """A response plus the shared memory it may still point into; call ``release`` once written."""

    response: InferResponse
    _release: Callable[[], None] | None = None
    served_by: ReplicaAddr | None = None  # the replica that answered (None: inline); for metrics

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[m.InferReply]
    refs: list[Ref] = field(default_factory=list)
    abandoned: bool = False


class ReplicaConnection(asyncio.Protocol):
    """A connection to one server replica; many calls in flight, replies matched by id."""

    def __init__(self, pool: ServerPool, addr: ReplicaAddr) -> None:
        self.pool = pool
        self.addr = addr
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.reader = m.FrameReader()
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1)
        self.request_arena: Arena | None = None
        self.response_arena: Arena | None = None
        self.welcome: asyncio.Future[m.Welcome] = self.loop.create_future()
        self.out: list[bytes] = []
        self.to_release: list[tuple[int, int]] = []
        self.flush_scheduled = False
        self.closed = False
        # (deadline, call id) in send order: every call has the same timeout, so deadlines are
        # sorted and one periodic sweep replaces a timer per call
        self.deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self.sweeper: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for msg in self.reader.feed(data):
            if isinstance(msg, m.InferReply):
                pending = self.pending.pop(msg.id, None)
                if pending is None:
                    continue
                if pending.abandoned:
                    self._free(pending.refs)
                    self._release_reply(msg)
                elif not pending.future.done():
                    pending.future.set_result(msg)
            elif isinstance(msg, m.Welcome) and not self.welcome.done():
                self.welcome.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        error = HeadraceError(
            f"model server {self.addr.server}-{self.addr.index} closed the connection", ErrorKind.UNAVAILABLE
        )
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self.pending.clear()
        if not self.welcome.done():
            self.welcome.set_exception(error)
        self.pool.forget(self)
        # Both arenas die with the connection; views still held by responses keep the mapping alive.
        for arena in (self.request_arena, self.response_arena):
            if arena is not None:
                arena.close()

    # -- calls ----------------------------------------------------------------------------------
    async def start(self) -> None:
        pool = self.pool
        self.request_arena = Arena.create(
            f"{pool.shm_prefix}-{next(pool.arena_ids)}", pool.settings.arena_bytes
        )
        self._send(m.Hello(self.request_arena.name))
        welcome = await asyncio.wait_for(self.welcome, 5.0)
        self.response_arena = Arena.attach(welcome.response_arena)

    async def infer(self, request: InferRequest, timeout: float) -> InferResult:
        if self.closed:
            raise HeadraceError(
                f"model server {self.addr.server}-{self.addr.index} is gone", ErrorKind.UNAVAILABLE
            )
        call_id = next(self.ids)
        refs: list[Ref] = []
        min_bytes = self.pool.settings.shm_min_bytes
        arena = self.request_arena
        try:
            wires = [to_wire(t, arena, m.REQUEST_ARENA, min_bytes, refs) for t in request.inputs]
        except Exception:
            self._free(refs)
            raise
        release = self.to_release or None
        self.to_release = []
        call = m.InferCall(
            id=call_id,
            model=request.model_name,
            inputs=wires,
            request_id=request.id,
            parameters=request.parameters or None,
            outputs=[(o.name, o.parameters) for o in request.outputs] if request.outputs else None,
            release=release,
        )
        pending = _Pending(self.loop.create_future(), refs)
        self.pending[call_id] = pending
        self._send(call)
        self.deadlines.append((self.loop.time() + timeout, call_id))
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(_SWEEP_S, self._sweep, timeout)
        try:
            reply = await pending.future
        except asyncio.CancelledError:
            # the caller went away; the server may still read our buffers until it replies
            pending.abandoned = True
            raise
        if reply.error is not None:
            self._free(refs)
            self._release_reply(reply)
            if reply.error_kind == "not_served":
                raise NotServedError(reply.error)
            raise HeadraceError(reply.error, _KINDS.get(reply.error_kind or "", ErrorKind.INTERNAL))
        arenas = (self.request_arena, self.response_arena)
        outputs = [from_wire(w, arenas) for w in reply.outputs]
        response = InferResponse(
            model_name=request.model_name,
            outputs=outputs,
            model_version=request.model_version,
            id=request.id,
            parameters=reply.parameters or {},
        )
        if not refs and not any(w.ref is not None for w in reply.outputs):
            return InferResult(response)
        return InferResult(response, lambda: self._done(refs, reply))

    def _sweep(self, timeout: float) -> None:
        self.sweeper = None
        now = self.loop.time()
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            self._expire(deadlines.popleft()[1], timeout)
        while deadlines and deadlines[0][1] not in self.pending:
            deadlines.popleft()  # answered already
        if deadlines and not self.closed:
            self.sweeper = self.loop.call_later(_SWEEP_S, self._sweep, timeout)

    def _expire(self, call_id: int, timeout: float) -> None:
        pending = self.pending.get(call_id)
        if pending is None or pending.future.done():
            return
        # The server may still read our buffers: keep them until its late reply arrives.
        pending.abandoned = True
        pending.future.set_exception(
            HeadraceError(
                f"model server {self.addr.server}-{self.addr.index} did not answer within {timeout:g} s",
                ErrorKind.TIMEOUT,
            )
        )

    def _done(self, refs: list[Ref], reply: m.InferReply) -> None:
        self._free(refs)
        self._release_reply(reply)

    def _free(self, refs: list[Ref]) -> None:
        arena = self.request_arena
        if arena is None or arena.closed:
            return
        for ref in refs:
            with contextlib.suppress(Exception):
                arena.free(ref)

    def _release_reply(self, reply: m.InferReply) -> None:
        blocks = [
            (w.ref[1], w.ref[4]) for w in reply.outputs if w.ref is not None and w.ref[0] == m.RESPONSE_ARENA
        ]
        if blocks and not self.closed:
            self.to_release.extend(blocks)
            if not self.pending:
                self._send(m.Release(self.to_release))
                self.to_release = []

    def _send(self, msg: m.Message) -> None:
        self.out.append(m.encode(msg))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and self.out:
            self.transport.writelines(self.out)
        self.out = []

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ServerPool:
    """Connections to every model-server replica this worker uses, opened on first use."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, worker_index: int) -> None:
        self.settings = settings
        self.loop = loop
        self.shm_prefix = f"hr{os.getppid()}-w{worker_index}-{os.getpid()}"
        self.arena_ids = itertools.count(1)
        self.connections: dict[str, ReplicaConnection] = {}
        self.connecting: dict[str, asyncio.Future[ReplicaConnection]] = {}
        self.turn = 0

    def forget(self, conn: ReplicaConnection) -> None:
        if self.connections.get(conn.addr.socket) is conn:
            del self.connections[conn.addr.socket]

    async def connection(self, addr: ReplicaAddr) -> ReplicaConnection:
        conn = self.connections.get(addr.socket)
        if conn is not None:
            return conn
        fut = self.connecting.get(addr.socket)
        if fut is None:
            fut = self.loop.create_future()
            self.connecting[addr.socket] = fut
            try:
                _, proto = await self.loop.create_unix_connection(
                    lambda: ReplicaConnection(self, addr), path=addr.socket
                )
                await proto.start()
                self.connections[addr.socket] = proto
                fut.set_result(proto)
            except Exception as exc:
                error = NotServedError(f"model server {addr.server}-{addr.index} is not reachable: {exc}")
                fut.set_exception(error)
                fut.exception()  # mark retrieved
                raise error from None
            finally:
                del self.connecting[addr.socket]
        return await asyncio.shield(fut)

    async def infer(self, route: ModelRoute, request: InferRequest) -> InferResult:
        replicas = route.replicas
        if not replicas:
            raise NotServedError(f"model '{route.name}' has no ready replica")
        best: ReplicaConnection | None = None
        n = len(replicas)
        if n == 1:
            addr = replicas[0]
        else:
            # least in flight among open connections (unopened ones count as idle); ties take turns
            self.turn += 1
            addr = replicas[self.turn % n]
            best_load = 1 << 30
            for k in range(n):
                candidate = replicas[(self.turn + k) % n]
                conn = self.connections.get(candidate.socket)
                load = conn.in_flight if conn is not None else 0
                if load < best_load:
                    best_load, addr, best = load, candidate, conn
                    if load == 0:
                        break
        conn = best or self.connections.get(addr.socket) or await self.connection(addr)
        try:
            result = await conn.infer(request, self.settings.model_timeout_s)
        except HeadraceError as exc:
            exc.replica = addr
            raise
        result.response.model_version = route.version
        result.served_by = addr
        return result

    def close(self) -> None:
        for conn in list(self.connections.values()):
            conn.close()

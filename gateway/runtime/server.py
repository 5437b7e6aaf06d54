"""The model-server process: hosts models of one Server replica and answers workers over a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import cast

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.config.gc_tuning import settle_heap
from headrace.config.logs import setup_logging
from headrace.config.settings import Settings
from headrace.gateway import controlclient
from headrace.gateway.control import LoadedModel, ModelSpec, ServerDesired, ServerReport
from headrace.gateway.oip.types import InferRequest, RequestedOutput, Tensor
from headrace.gateway.runtime import messages as m
from headrace.gateway.runtime.loaders import LoadedRuntime, try_load
from headrace.gateway.runtime.tensors import buffer_address, from_wire, to_wire
from headrace.gateway.telemetry import metrics
from headrace.shm.arena import Arena, Ref

log = logging.getLogger("headrace.server")


class Models:
    """The models this replica has loaded; swapped whole on the event loop, read without locks."""

    def __init__(self) -> None:
        self.runtimes: dict[str, tuple[int, LoadedRuntime]] = {}
        self.states: dict[str, LoadedModel] = {}


class Connection(asyncio.Protocol):
    """One worker's connection: reads calls, runs the model, writes replies."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.reader = m.FrameReader()
        self.transport: asyncio.Transport | None = None
        self.request_arena: Arena | None = None
        self.response_arena: Arena | None = None
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for arena in (self.request_arena, self.response_arena):
            if arena is not None:
                arena.close()
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        for msg in self.reader.feed(data):
            if isinstance(msg, m.InferCall):
                if msg.release:
                    self._release(msg.release)
                self.out.append(m.encode(self.handle(msg)))
            elif isinstance(msg, m.Release):
                self._release(msg.blocks)
            elif isinstance(msg, m.Hello):
                self._hello(msg)
        if self.out and self.transport is not None:
            self.transport.writelines(self.out)
            self.out = []

    def _hello(self, msg: m.Hello) -> None:
        self.request_arena = Arena.attach(msg.request_arena)
        srv = self.server
        name = f"{srv.shm_prefix}-{next(srv.conn_ids)}"
        self.response_arena = Arena.create(name, srv.settings.arena_bytes)
        self.out.append(m.encode(m.Welcome(name, srv.name, srv.index)))

    def _release(self, blocks: list[tuple[int, int]]) -> None:
        arena = self.response_arena
        if arena is None:
            return
        for block, generation in blocks:
            with contextlib.suppress(Exception):
                arena.free(Ref(block, block, 0, generation))

    def handle(self, call: m.InferCall) -> m.InferReply:
        entry = self.server.models.runtimes.get(call.model)
        if entry is None:
            return m.InferReply(
                call.id,
                error=f"model '{call.model}' is not loaded on server {self.server.name}-{self.server.index}",
                error_kind="not_served",
            )
        runtime = entry[1]
        try:
            arenas = (self.request_arena, self.response_arena)
            inputs = [from_wire(w, arenas) for w in call.inputs]
            request = InferRequest(
                model_name=call.model,
                inputs=inputs,
                id=call.request_id,
                parameters=call.parameters or {},
                outputs=[RequestedOutput(n, p) for n, p in call.outputs] if call.outputs else None,
            )
            outputs = runtime.predict(request)
            return m.InferReply(call.id, outputs=self._outputs_to_wire(call.inputs, inputs, outputs))
        except HeadraceError as exc:
            return m.InferReply(call.id, error=exc.message, error_kind=exc.kind.value)
        except Exception as exc:
            log.exception("model %s raised", call.model)
            return m.InferReply(
                call.id,
                error=f"model '{call.model}' raised {type(exc).__name__}: {exc}",
                error_kind=ErrorKind.MODEL_ERROR.value,
            )

    def _outputs_to_wire(
        self, wires: list[m.WireTensor], inputs: list[Tensor], outputs: list[Tensor]
    ) -> list[m.WireTensor]:
        result: list[m.WireTensor] = []
        min_bytes = self.server.settings.shm_min_bytes
        spans: list[tuple[int, int, m.WireTensor]] | None = None
        for out in outputs:
            if not isinstance(out, Tensor):
                raise TypeError(f"predict() returned {type(out).__name__}, expected Tensor")
            aliased = self._alias(out, wires, inputs)
            if aliased is None and out.raw is not None and isinstance(out.raw, memoryview):
                if spans is None:
                    spans = [
                        (buffer_address(t.raw), t.raw.nbytes, w)
                        for w, t in zip(wires, inputs, strict=True)
                        if w.ref is not None and isinstance(t.raw, memoryview)
                    ]
                aliased = _alias_by_address(out, spans)
            if aliased is not None:
                result.append(aliased)
                continue
            result.append(to_wire(out, self.response_arena, m.RESPONSE_ARENA, min_bytes, []))
        return result

    @staticmethod
    def _alias(out: Tensor, wires: list[m.WireTensor], inputs: list[Tensor]) -> m.WireTensor | None:
        """An output that *is* an input tensor's buffer goes back as the same reference: no copy."""
        if out.raw is None and out.data is None:
            return None
        for w, t in zip(wires, inputs, strict=True):
            if (out.raw is not None and out.raw is t.raw) or (out.data is not None and out.data is t.data):
                if w.ref is None and w.data is None and w.raw is None:
                    return None
                return m.WireTensor(
                    out.name,
                    out.datatype,
                    out.shape,
                    ref=w.ref,
                    raw=w.raw,
                    data=w.data,
                    parameters=out.parameters or None,
                )
        return None


def _alias_by_address(out: Tensor, spans: list[tuple[int, int, m.WireTensor]]) -> m.WireTensor | None:
    assert isinstance(out.raw, memoryview)
    nbytes = out.raw.nbytes
    if nbytes == 0 or not out.raw.c_contiguous:
        return None
    addr = buffer_address(out.raw)
    for start, size, w in spans:
        if start <= addr and addr + nbytes <= start + size and w.ref is not None:
            arena_id, block, offset, _, generation = w.ref
            ref = (arena_id, block, offset + (addr - start), nbytes, generation)
            return m.WireTensor(out.name, out.datatype, out.shape, ref=ref, parameters=out.parameters or None)
    return None


class ModelServer:
    """One replica: a unix-socket server plus a control thread converging on the desired models."""

    def __init__(self, settings: Settings, name: str, index: int) -> None:
        self.settings = settings
        self.name = name
        self.index = index
        self.socket_path = Path(settings.run_dir) / f"{name}-{index}.sock"
        self.models = Models()
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self.shm_prefix = f"hr{os.getppid()}-{name}{index}-{os.getpid()}"
        self.conn_ids = iter(range(1, 1 << 62))
        self._stop = threading.Event()
        self._desired_version = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        # Seldon's agent metrics of this replica: loads, unloads, which models are loaded (model_internal)
        replica = str(index)
        self._loads = metrics.MODEL_LOADS.labels(name, replica)
        self._unloads = metrics.MODEL_UNLOADS.labels(name, replica)
        self._internal: dict[str, str] = {}  # loaded model -> its model_internal label ("<name>_<version>")

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = await self.loop.create_unix_server(lambda: self._connect(), path=str(self.socket_path))
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stopped.set)
        control = threading.Thread(target=self._control_loop, name="control", daemon=True)
        control.start()
        settle_heap()
        try:
            await stopped.wait()
        finally:
            self._stop.set()
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def _connect(self) -> Connection:
        conn = Connection(self)
        self.connections.add(conn)
        return conn

    # -- control thread -------------------------------------------------------------------------
    def _control_loop(self) -> None:
        base = f"{self.settings.control_url}/v1/internal/servers/{self.name}/{self.index}"
        last_report = 0.0
        announced = False

        def step() -> None:
            nonlocal last_report, announced
            if not announced:
                # tell the scheduler at once that this (new) incarnation has nothing loaded
                controlclient.post(f"{base}/report", self._report())
                announced = True
            desired = controlclient.get(
                f"{base}/desired?after={self._desired_version}&wait=2", ServerDesired, timeout=10
            )
            if desired.version != self._desired_version:
                self._converge(desired)
                self._desired_version = desired.version
                last_report = 0.0
            if time.monotonic() - last_report > 1.0:
                controlclient.post(f"{base}/report", self._report())
                last_report = time.monotonic()

        controlclient.follow(self._stop, step)

    def _converge(self, desired: ServerDesired) -> None:
        wanted = {s.name: s for s in desired.models}
        runtimes = dict(self.models.runtimes)
        states = dict(self.models.states)
        for name in list(runtimes):
            if name not in wanted:
                del runtimes[name]
                states.pop(name, None)
                self._count_unload(name)
        for name, spec in wanted.items():
            current = runtimes.get(name)
            if current is not None and current[0] == spec.generation:
                continue
            if states.get(name) is not None and states[name].generation == spec.generation:
                continue  # failed before at this generation; do not retry in a loop
            states[name] = self._load(spec, runtimes)
        self._publish(runtimes, states)

    def _load(self, spec: ModelSpec, runtimes: dict[str, tuple[int, LoadedRuntime]]) -> LoadedModel:
        runtime, state = try_load(spec)
        if runtime is None:
            log.error("loading %s failed: %s", spec.name, state.message)
            if runtimes.pop(spec.name, None) is not None:
                self._count_unload(spec.name)
        else:
            internal = f"{spec.name}_{spec.version}"
            previous = self._internal.get(spec.name)
            if previous is not None and previous != internal:
                self._count_unload(spec.name)  # a new version replaces the old one
            runtimes[spec.name] = (spec.generation, runtime)
            self._loads.inc()
            self._internal[spec.name] = internal
            metrics.LOADED_MODELS.labels(self.name, str(self.index), internal).set(1)
        return state

    def _count_unload(self, name: str) -> None:
        internal = self._internal.pop(name, None)
        if internal is None:
            return
        self._unloads.inc()
        metrics.LOADED_MODELS.labels(self.name, str(self.index), internal).set(0)

    def _publish(
        self, runtimes: dict[str, tuple[int, LoadedRuntime]], states: dict[str, LoadedModel]
    ) -> None:
        done = threading.Event()

        def swap() -> None:
            self.models.runtimes = runtimes
            self.models.states = states
            done.set()

        assert self.loop is not None
        self.loop.call_soon_threadsafe(swap)
        done.wait(5)

    def _report(self) -> ServerReport:
        return ServerReport(
            server=self.name,
            index=self.index,
            pid=os.getpid(),
            started_at=self.started_at,
            desired_version=self._desired_version,
            models=list(self.models.states.values()),
            instance=self.settings.instance_id,
            socket=str(self.socket_path),
        )


def run(settings: Settings, name: str, index: int) -> None:
    """Entry of a model-server child process."""
    import uvloop

    setup_logging(settings.log_level, f"server {name}-{index}", settings.log_format)
    uvloop.run(ModelServer(settings, name, index).serve())

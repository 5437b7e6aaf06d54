"""The gRPC floor: grpc.aio ModelInfer echo on uvloop, N processes sharing one port (SO_REUSEPORT)."""

from __future__ import annotations

import array
import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

MAX_MESSAGE = 256 << 20
READY_LINE = "floor-grpc: all processes serving"


def echo(request: Any, pb2: Any) -> Any:
    """Inputs back as outputs: raw_input_contents as they came, typed fp32_contents packed to bytes."""
    raw = list(request.raw_input_contents)
    if not raw:
        raw = [array.array("f", t.contents.fp32_contents).tobytes() for t in request.inputs]
    outputs = [
        pb2.ModelInferResponse.InferOutputTensor(name=f"output-{i}", datatype=t.datatype, shape=t.shape)
        for i, t in enumerate(request.inputs)
    ]
    return pb2.ModelInferResponse(
        model_name=request.model_name, id=request.id, outputs=outputs, raw_output_contents=raw
    )


async def serve(port: int, ready_fd: int) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return echo(request, service_pb2)

    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def child(port: int, ready_fd: int) -> None:
    import uvloop

    uvloop.run(serve(port, ready_fd))


def main() -> int:
    """Start N children (no grpc imported here, nothing forked after it), print READY_LINE, wait."""
    if sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    port, procs = int(sys.argv[1]), int(sys.argv[2])
    read_fd, write_fd = os.pipe()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "loadtests.bench.floor_grpc", "--child", str(port), str(write_fd)],
            pass_fds=(write_fd,),
        )
        for _ in range(procs)
    ]
    os.close(write_fd)
    started = 0
    while started < procs:
        got = os.read(read_fd, procs)
        if not got:  # every child closed the pipe, some without starting
            break
        started += len(got)

    def stop_children(*_: object) -> None:
        for c in children:
            c.terminate()

    signal.signal(signal.SIGTERM, stop_children)
    if started == procs:
        print(f"{READY_LINE} ({procs}) on 127.0.0.1:{port}", flush=True)
    else:
        print(f"floor-grpc: {started} of {procs} processes started", flush=True)
        stop_children()
    codes = [c.wait() for c in children]
    return 0 if started == procs else max(codes) or 1


if __name__ == "__main__":
    raise SystemExit(main())

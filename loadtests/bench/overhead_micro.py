"""The front door's own cost per call, without the network or a model: this checkout against an earlier
commit, in alternating subprocesses. Raw HTTP/1.1 requests are fed to the worker's HttpProtocol (httptools
parsing, RestApp routing and decoding, the data plane's answer, encoding, the response written to a fake
transport); the model answers synchronously (as an inline model does), or through an awaitable (as a
model server's answer comes: the handler runs as a task), with the replica that served it.

    .venv/bin/python -m loadtests.bench.overhead_micro --base 637f01a

Reported: CPU microseconds per call (process time, the minimum of the repeats: the least disturbed by
whatever else runs on the machine), and the difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.bench.overhead import unpack

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, json, sys, time
from headrace.gateway.control import ModelRoute, ReplicaAddr, RoutingTable
from headrace.gateway.frontdoor.http import HttpProtocol, ServerState
from headrace.gateway.frontdoor.rest import RestApp
from headrace.gateway.oip.types import InferResponse
from headrace.gateway.registry import ModelRegistry
from headrace.gateway.runtime.client import InferResult

addr = ReplicaAddr("headrace", 0, "/tmp/none.sock")
SERVED_BY = "served_by" in InferResult.__dataclass_fields__  # the base build has no served_by
registry = ModelRegistry()
registry.update(RoutingTable(models={"echo": ModelRoute(name="echo", ready=True, replicas=[addr])}), {})

class Plane:
    registry = registry
    kafka = None
    def server_metadata(self):
        return {"name": "headrace", "version": "0", "extensions": []}
    def infer(self, request):
        response = InferResponse(model_name="echo", outputs=request.inputs, model_version="1", id=request.id)
        result = InferResult(response, served_by=addr) if SERVED_BY else InferResult(response)
        if not remote:
            return result
        async def answered():
            return result
        return answered()

class Transport:
    n = 0
    def write(self, data): self.n += len(data)
    def writelines(self, parts): self.n += sum(len(p) for p in parts)
    def get_write_buffer_size(self): return 0
    def close(self): pass
    def is_closing(self): return False

import uvloop
loop = uvloop.new_event_loop()  # as the workers run
state = ServerState(RestApp(Plane()), 1 << 20, 75.0)
protos = []
for _ in range(64):  # 64 connections with a call each in flight: the loop runs their tasks back to back
    proto = HttpProtocol(state, loop)
    proto.connection_made(Transport())
    protos.append(proto)
body = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
raw = (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
n, repeats, remote = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "remote"

async def settle(tasks):
    for task in tasks:
        await task

def once():
    # 64 calls
    for proto in protos:
        proto.data_received(raw)
    tasks = [p.task for p in protos if p.task is not None]
    if tasks:
        loop.run_until_complete(settle(tasks))

n = max(1, n // 64)
for _ in range(50):
    once()
best = []
for _ in range(repeats):
    t = time.process_time()
    for _ in range(n):
        once()
    best.append((time.process_time() - t) / (n * 64) * 1e6)
print(json.dumps(best))
"""


def run(src: Path, n: int, repeats: int, mode: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(repeats), mode],
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hr-micro-") as tmp:
        sources = {"base": unpack(args.base, Path(tmp) / "base"), "new": REPO / "src"}
        for mode, what in (
            ("inline", "answered at once (inline model)"),
            ("remote", "awaited (model server)"),
        ):
            results: dict[str, list[float]] = {"base": [], "new": []}
            for r in range(args.rounds):
                for build in ("base", "new") if r % 2 == 0 else ("new", "base"):
                    times = run(sources[build], args.calls, args.repeats, mode)
                    results[build].append(min(times))
                    each = ", ".join(f"{t:.2f}" for t in times)
                    print(f"{mode} round {r + 1} {build:>4}: {min(times):.2f} us/call (repeats {each})")
            base, new = min(results["base"]), min(results["new"])
            print(
                f"REST direct call {what}, 200, no trace context: base {base:.2f} us, new {new:.2f} us per "
                f"call (best of {args.rounds} rounds x {args.repeats} repeats; medians "
                f"{statistics.median(results['base']):.2f} / {statistics.median(results['new']):.2f}): "
                f"{new - base:+.2f} us ({(new / base - 1) * 100:+.1f}%)"
            )


if __name__ == "__main__":
    main()

"""`python -m loadtests.bench.hop_micro`: the data plane's own cost per pipeline request, without a
broker, a model server or HTTP — so it can be compared before and after a change on a busy machine.

A worker's DataNode runs a 3-step echo chain with every unit of partition 0 held: a request goes in
through the pipeline gateway, each step's record is handed over in memory (local hops), the model
gateway calls a model that answers at once, and the answer comes back to the gateway. The records'
writes go to librdkafka's queue (no broker: they are never sent), and the Kafka copies are fed back
to the node as the consumer would (so their dispatch is counted too). Prints microseconds per
request: the best of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import msgspec

from headrace.config.gc_tuning import settle_heap
from headrace.config.settings import Settings
from headrace.engine.gateways.pipeline import Target
from headrace.engine.node import DataNode
from headrace.engine.ownership import ACTIVE
from headrace.engine.sharding import MODEL_GATEWAY, PIPELINE, Unit, slot_of
from headrace.gateway.control import ModelRoute, PipelineRoute, RoutingTable, UnitRoute
from headrace.gateway.oip.types import InferRequest, InferResponse, Tensor
from headrace.gateway.runtime.client import InferResult

MODELS = ("echo", "echo2", "echo3")
MANIFEST = """apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: chain3
spec:
  steps:
  - name: echo
  - name: echo2
    inputs: [echo]
  - name: echo3
    inputs: [echo2]
  output:
    steps: [echo3]
"""


class EchoPlane:
    """The model gateway's data plane: every model answers at once with its inputs."""

    def infer(self, request: InferRequest) -> InferResult:
        return InferResult(InferResponse(model_name=request.model_name, outputs=list(request.inputs)))


class Copies:
    """Stands in for the consumer: every record written comes back as its Kafka copy, with an offset."""

    def __init__(self, node: DataNode) -> None:
        self.node = node
        self.offsets: dict[tuple[str, int], int] = {}
        self.pending: list[Any] = []
        self.ready: list[Any] = []

    def wrap(self, producer: Any) -> None:
        real = producer.produce

        def produce(
            topic: str, partition: int, key: bytes, value: bytes, headers: Any, on_error: Any = None
        ) -> Any:
            fut = real(topic, partition, key, value, headers, on_error)
            offset = self.offsets.get((topic, partition), 0)
            self.offsets[(topic, partition)] = offset + 1
            self.pending.append(_Msg(topic, partition, offset, key, value, list(headers)))
            fut.set_result(None) if not fut.done() else None  # delivered at once
            return fut

        producer.produce = produce

    def flush(self) -> None:
        """Hand the node the copies written before the last round (they come later than the records
        handed over in memory, as from the broker)."""
        msgs, self.pending, self.ready = self.ready, [], self.pending
        if msgs:
            self.node._dispatch(msgs)  # type: ignore[arg-type]


class _Msg:
    __slots__ = ("_headers", "_key", "_offset", "_partition", "_topic", "_value")

    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes, value: bytes, headers: Any
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> Any:
        return self._headers

    def error(self) -> None:
        return None


async def run(requests: int, rounds: int, settle: bool = True) -> list[float]:
    settings = msgspec.convert(
        {"kafka_bootstrap": "127.0.0.1:1", "workers": 1, "partitions": 1, "instance_id": "bench"}, Settings
    )
    loop = asyncio.get_running_loop()
    node = DataNode(settings, loop, 0, EchoPlane())  # type: ignore[arg-type]
    copies = Copies(node)
    for producer in node._producers():
        copies.wrap(producer)
    node._started = True
    units = {str(Unit(PIPELINE, "chain3", 0)): UnitRoute(owner=node.me, active=True)}
    for m in MODELS:
        units[str(Unit(MODEL_GATEWAY, str(slot_of(m, 100)), 0))] = UnitRoute(owner=node.me, active=True)
    table = RoutingTable(
        version=1,
        models={m: ModelRoute(name=m, ready=True) for m in MODELS},
        pipelines={"chain3": PipelineRoute(name="chain3", version=1, manifest=MANIFEST, ready=True)},
        units=units,
    )
    node.table = table
    node.update(table)
    # take every unit at once (no broker to ask for offsets)
    for held in list(node.holdings):
        if held.task is not None:
            held.task.cancel()
        grouped, replies = node.keeper.reads_of(held.unit)
        held.reads = dict.fromkeys(grouped, 0)
        held.replies = set(replies)
        node.holdings.set_state(held, ACTIVE)
    node._mark_running()
    if settle:
        settle_heap()
    tensor = Tensor(name="x", datatype="FP32", shape=[1, 4], data=[1.0, 2.0, 3.0, 4.0])
    request = InferRequest(model_name="chain3", inputs=[tensor])
    target = Target("chain3", "pipeline")
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(requests):
            call = asyncio.ensure_future(node.call(target, request, [("x-request-id", f"r{i}".encode())]))
            while not call.done():
                await asyncio.sleep(0)
                copies.flush()
            call.result()
        times.append((time.perf_counter() - start) / requests * 1e6)
        copies.flush()
        copies.flush()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.hop_micro", description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--gc-defaults", action="store_true", help="keep Python's collector settings")
    args = p.parse_args(argv)
    import uvloop

    times = uvloop.run(run(args.requests, args.rounds, settle=not args.gc_defaults))
    print(
        f"3-step chain, in memory: best {min(times):.1f} us/request, median {statistics.median(times):.1f} "
        f"({', '.join(f'{t:.0f}' for t in times)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

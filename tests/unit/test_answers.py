"""A model's answer written twice (its input handled again after a takeover) reaches a pipeline once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from records import FakeRecord

from headrace.config.pipelines import parse_pipelines
from headrace.engine import topics as t
from headrace.engine.backbone.loopback import HOP_HEADER
from headrace.engine.dataflow.answers import SeenAnswers
from headrace.engine.dataflow.graph import compile_pipeline
from headrace.engine.dataflow.runner import DataflowRunner
from headrace.engine.gateways.model import ModelGateway
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse
from headrace.gateway.runtime.client import InferResult

pytestmark = pytest.mark.timeout(10)

TOPICS = t.Topics()
A_OUT = TOPICS.model_outputs("a")
PIPELINES = """apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: {name}
spec:
  steps:
  - name: a
  - name: b
    inputs: [a]
  - name: c
    inputs: [a]
  output:
    steps: [b, c]
"""


class Written:
    """A writer that keeps what is written and acknowledges it at once."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes, list[tuple[str, Any]]]] = []

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: Any, on_error: Any = None
    ) -> asyncio.Future[None]:
        self.records.append((topic, partition, key, list(headers)))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def answer(offset: int, headers: list[tuple[str, Any]]) -> FakeRecord:
    """A record of a's outputs topic, partition 3: a's answer to one request."""
    resp = pb2.ModelInferResponse(model_name="a")
    resp.outputs.add(name="y", datatype="INT64", shape=[1]).contents.int64_contents.append(5)
    return FakeRecord(
        A_OUT, resp.SerializeToString(), partition=3, offset=offset, key=b"3.p.r1", headers=headers
    )


class Echo:
    def infer(self, request: InferRequest) -> InferResult:
        return InferResult(InferResponse(model_name=request.model_name, outputs=request.inputs))


def test_seen_answers_per_pipeline_and_partition_forgotten_when_it_leaves() -> None:
    seen = SeenAnswers(cap=3)
    assert seen.first("p", A_OUT, 3, b"@7")
    assert not seen.first("p", A_OUT, 3, b"@7")
    assert seen.first("q", A_OUT, 3, b"@7")  # another pipeline takes the same answer for itself
    assert seen.first("p", A_OUT, 4, b"@7")  # another partition's offset 7 is another record
    seen.forget("p", 3)
    assert seen.first("p", A_OUT, 3, b"@7")  # a later owner of the partition sees it afresh
    for offset in (8, 9, 10):
        assert seen.first("p", A_OUT, 3, b"@%d" % offset)
    assert seen.first("p", A_OUT, 3, b"@7")  # the oldest is forgotten past the cap
    assert not seen.first("p", A_OUT, 3, b"@10")


def test_the_model_gateway_names_the_input_each_answer_is_for() -> None:
    async def run() -> list[list[tuple[str, Any]]]:
        out = Written()
        gw = ModelGateway(TOPICS, out, Echo())  # type: ignore[arg-type]
        inputs = TOPICS.model_inputs("a")
        req = pb2.ModelInferRequest(model_name="a")
        req.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
        value = req.SerializeToString()
        plain = FakeRecord(inputs, value, partition=3, offset=41, headers=[("pipeline", b"p")])
        stamped = FakeRecord(  # handed over in memory
            inputs, value, partition=3, offset=-1, headers=[(HOP_HEADER, b"9f2:17"), ("pipeline", b"p")]
        )
        done = asyncio.Event()
        count = [0]

        def finished() -> None:
            count[0] += 1
            if count[0] == 2:
                done.set()

        gw.submit("a", plain, finished)
        gw.submit("a", stamped, finished)
        await asyncio.wait_for(done.wait(), 5)
        gw.close()
        return [headers for _, _, _, headers in out.records]

    first, second = asyncio.run(run())
    assert dict(first)[t.SOURCE_HEADER] == b"@41"
    assert dict(second)[t.SOURCE_HEADER] == b"9f2:17"  # the stamp: its copy in Kafka has it too


def test_a_pipeline_takes_a_model_answer_written_twice_once() -> None:
    async def run() -> tuple[list[tuple[str, int, bytes, list[tuple[str, Any]]]], int]:
        out = Written()
        runner = DataflowRunner(out, 8, lambda m, e: None, asyncio.get_running_loop(), TOPICS.errors)
        graphs = {}
        for name in ("p", "q"):
            [manifest] = parse_pipelines(PIPELINES.format(name=name))
            graphs[name] = (compile_pipeline(manifest, TOPICS), "1")
        runner.set_pipelines(graphs)
        first_answer = [("pipeline", b"p"), (t.SOURCE_HEADER, b"@7")]
        runner.on_record(answer(100, first_answer))
        first = len(out.records)
        runner.on_record(answer(101, first_answer))  # the same answer again, after a takeover
        runner.on_record(answer(102, [("pipeline", b"p"), (t.SOURCE_HEADER, b"@8")]))
        runner.release("p", 3)
        runner.on_record(answer(103, first_answer))
        return out.records, first

    records, first = asyncio.run(run())
    sinks = sorted(topic for topic, _, _, _ in records[:first])
    assert sinks == [TOPICS.model_inputs("b"), TOPICS.model_inputs("c")]  # both steps reading a: one answer
    assert len(records) == 3 * first  # @7, @8, then @7 again once the partition had left and come back
    assert all(t.SOURCE_HEADER not in dict(h) for _, _, _, h in records)  # not passed on downstream
    assert {p for _, p, _, _ in records} == {3}

"""A worker before its first routing table: it says "not yet" (503) or waits, never "no such model" (404)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.gateway.control import ModelRoute, PipelineRoute, ReplicaAddr, RoutingTable
from headrace.gateway.dataplane import PIPELINE, DataPlane
from headrace.gateway.oip.types import InferRequest, InferResponse
from headrace.gateway.registry import ModelRegistry
from headrace.gateway.runtime.client import InferResult

pytestmark = pytest.mark.timeout(10)

ROUTE = ModelRoute(name="m", ready=True, state="ModelAvailable", replicas=[ReplicaAddr("s", 0, "/none")])
TABLE = RoutingTable(
    version=3, models={"m": ROUTE}, pipelines={"p": PipelineRoute(name="p", version=1, manifest="")}
)


class FakePool:
    """Answers every call at once, as a model server would."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def infer(self, route: ModelRoute, request: InferRequest) -> InferResult:
        self.calls.append(route.name)
        return InferResult(InferResponse(model_name=route.name, outputs=[]))


class FakeKafka:
    """The node's view follows the registry, as DataNode.update does (a registry listener)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.table = RoutingTable()
        registry.listeners.append(self.update)

    def update(self, table: RoutingTable) -> None:
        self.table = table

    def pipeline_known(self, name: str) -> bool:
        return name in self.table.pipelines

    def pipeline_ready(self, name: str) -> bool:
        return True

    async def call_via_kafka(
        self, name: str, kind: str, request: InferRequest, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[InferResponse, str]:
        return InferResponse(model_name=name, outputs=[]), f"0.{name}.k"


def dataplane(timeout: float = 5.0) -> tuple[DataPlane, ModelRegistry, FakePool]:
    registry = ModelRegistry()
    pool = FakePool()
    dp = DataPlane(registry, pool, timeout)  # type: ignore[arg-type]
    dp.kafka = FakeKafka(registry)
    return dp, registry, pool


def test_before_the_first_table_lookups_are_unavailable_not_unknown() -> None:
    dp, registry, _ = dataplane()
    for call in (lambda: dp.model_ready("m", None), lambda: dp.model_metadata("m", None)):
        with pytest.raises(HeadraceError) as caught:
            call()
        assert caught.value.kind is ErrorKind.UNAVAILABLE, caught.value.message
    with pytest.raises(HeadraceError) as caught:
        dp.pipeline_ready("p")
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    registry.update(TABLE, {})
    assert dp.model_ready("m", None) and dp.pipeline_ready("p")
    with pytest.raises(HeadraceError) as caught:
        dp.model_ready("nope", None)
    assert caught.value.kind is ErrorKind.NOT_FOUND  # with a table, unknown is unknown


def test_a_call_before_the_first_table_is_answered_once_it_comes() -> None:
    async def main() -> None:
        dp, registry, pool = dataplane()
        pending = dp.infer(InferRequest(model_name="m", inputs=[]))
        assert not isinstance(pending, InferResult)
        kafka_call = asyncio.ensure_future(dp.infer_kafka(PIPELINE, "p", InferRequest("p", []), []))
        model_call = asyncio.ensure_future(pending)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert not model_call.done() and not kafka_call.done()  # waiting, not answered 404
        asyncio.get_running_loop().call_soon(registry.update, TABLE, {})
        result: Any = await asyncio.wait_for(model_call, 2)
        assert result.response.model_name == "m" and pool.calls == ["m"]
        response, key = await asyncio.wait_for(kafka_call, 2)
        assert response.model_name == "p" and key == "0.p.k"

    asyncio.run(main())


def test_no_table_within_the_timeout_is_a_503_naming_why() -> None:
    async def main() -> None:
        dp, _, _ = dataplane(timeout=0.2)
        for call in (
            dp.infer(InferRequest(model_name="m", inputs=[])),
            dp.infer_kafka(PIPELINE, "p", InferRequest("p", []), []),
        ):
            with pytest.raises(HeadraceError) as caught:
                await call  # type: ignore[misc]
            assert caught.value.kind is ErrorKind.UNAVAILABLE
            assert "no routing table yet" in caught.value.message

    asyncio.run(main())

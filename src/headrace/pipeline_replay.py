"""`headrace pipeline replay`: re-submit a pipeline's recorded inputs and show new outputs beside the old."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from headrace.config.errors import ConfigError
from headrace.config.settings import Settings
from headrace.engine import topics as t
from headrace.gateway.oip.pb import pb2, pb2_grpc
from headrace.pipeline_inspect import SEARCH_DEPTH, Target, matches, readable, scan


@dataclass(frozen=True, slots=True)
class Selection:
    """Which recorded inputs: by request id, the last N, or an offset range of one partition."""

    request_ids: tuple[str, ...] = ()
    last: int | None = None
    partition: int | None = None
    start: int = 0
    end: int | None = None  # exclusive; None: to the end


@dataclass(slots=True)
class Replayed:
    request_id: str
    source: str  # topic [partition:offset] of the recorded input
    recorded: dict[str, Any] | None  # the recorded answer's tensors, None if none was found
    recorded_error: str | None
    replayed: dict[str, Any] | None
    replayed_error: str | None
    replay_id: str

    @property
    def same(self) -> bool:
        return (self.recorded, self.recorded_error) == (self.replayed, self.replayed_error)


def recorded_inputs(settings: Settings, topics: t.Topics, pipeline: str, sel: Selection) -> list[Any]:
    """The pipeline's recorded input records (its inputs topic, under its header), as selected."""
    target = Target(topics.pipeline_inputs(pipeline), pipeline)
    if sel.request_ids:
        wanted = set(sel.request_ids)
        return scan(
            settings,
            target.topic,
            lambda _p, low, high: (max(low, high - SEARCH_DEPTH), high),
            lambda msg: matches(msg, target, None) and _request_id(msg) in wanted,
        )
    if sel.partition is not None:
        return scan(
            settings,
            target.topic,
            lambda p, _low, high: (
                (sel.start, high if sel.end is None else sel.end) if p == sel.partition else None
            ),
            lambda msg: matches(msg, target, None),
        )
    last = sel.last or 1
    found = scan(
        settings,
        target.topic,
        lambda _p, low, high: (max(low, high - last), high),
        lambda msg: matches(msg, target, None),
    )
    return found[-last:]


def recorded_outputs(
    settings: Settings, topics: t.Topics, pipeline: str, keys: set[bytes]
) -> dict[bytes, Any]:
    """The pipeline's answer records for ``keys`` (the first one of each key)."""
    target = Target(topics.pipeline_outputs(pipeline), pipeline)
    partitions = {t.partition_of(key, settings.partitions) for key in keys}
    found = scan(
        settings,
        target.topic,
        lambda p, low, high: (max(low, high - SEARCH_DEPTH), high) if p in partitions else None,
        lambda msg: (msg.key() or b"") in keys and matches(msg, target, None),
    )
    out: dict[bytes, Any] = {}
    for msg in found:
        out.setdefault(msg.key() or b"", msg)
    return out


def replay(
    settings: Settings, pipeline: str, sel: Selection, grpc_target: str, to: str | None = None,
    timeout_s: float = 60.0,
) -> list[Replayed]:  # fmt: skip
    """Re-submit the selected inputs of ``pipeline`` to pipeline ``to`` (itself by default, e.g. after
    loading a new version) through the gRPC gateway; each with the recorded and the new answer."""
    topics = t.Topics(settings.topic_prefix, settings.namespace)
    inputs = recorded_inputs(settings, topics, pipeline, sel)
    if not inputs:
        raise ConfigError(f"replay: no recorded inputs of pipeline {pipeline} match")
    answers = recorded_outputs(settings, topics, pipeline, {m.key() or b"" for m in inputs})
    target = to or pipeline
    results = []
    with grpc.insecure_channel(grpc_target) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        for msg in inputs:
            request_id = _request_id(msg) or "-"
            old, old_error = _answer(answers.get(msg.key() or b""))
            replay_id = f"{request_id}-replay-{uuid.uuid4().hex[:8]}"
            new, new_error = _resubmit(stub, msg.value() or b"", target, replay_id, _passed(msg), timeout_s)
            source = f"{msg.topic()} [{msg.partition()}:{msg.offset()}]"
            results.append(Replayed(request_id, source, old, old_error, new, new_error, replay_id))
    return results


def _request_id(msg: Any) -> str | None:
    parts = t.split_key((msg.key() or b"").decode("utf-8", "replace"))
    return parts[2] if parts is not None else None


def _passed(msg: Any) -> list[tuple[str, str]]:
    """The client's x-* headers, sent again (not the request id: the replay gets its own)."""
    out = []
    for name, value in msg.headers() or ():
        if t.is_passthrough(name) and name != t.REQUEST_ID_HEADER:
            out.append((name, (value or b"").decode("utf-8", "replace")))
    return out


def _answer(msg: Any) -> tuple[dict[str, Any] | None, str | None]:
    if msg is None:
        return None, None
    failed = dict(msg.headers() or []).get(t.ERROR_HEADER)
    if failed is not None:
        return (
            None,
            f"{failed.decode('utf-8', 'replace')} : {(msg.value() or b'').decode('utf-8', 'replace')}",
        )
    return _outputs(pb2.ModelInferResponse.FromString(msg.value() or b"")), None


def _outputs(response: Any) -> dict[str, Any]:
    doc = readable(response, False, None, False)
    return {"outputs": doc.get("outputs", [])}


def _resubmit(
    stub: Any,
    value: bytes,
    pipeline: str,
    replay_id: str,
    headers: Iterable[tuple[str, str]],
    timeout_s: float,
) -> tuple[dict[str, Any] | None, str | None]:
    request = pb2.ModelInferRequest.FromString(value)
    request.model_name = pipeline
    request.id = replay_id  # the gateway keys a request by its id: the replay gets a key of its own
    metadata = [("seldon-model", f"{pipeline}.pipeline"), ("x-request-id", replay_id), *headers]
    try:
        response = stub.ModelInfer(request, metadata=metadata, timeout=timeout_s)
    except grpc.RpcError as exc:
        return None, str(exc.details() or exc.code())
    return _outputs(response), None

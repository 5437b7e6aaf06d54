"""`headrace pipeline inspect`: the last records of a pipeline's topics, decoded (Seldon's inspect)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from google.protobuf import json_format, text_format

from headrace.config.errors import ConfigError
from headrace.config.settings import Settings
from headrace.engine import topics as t
from headrace.engine.backbone.offload import AlreadyHandled, HopOffload, PayloadGone, offload_header
from headrace.engine.kafka.config import consumer_config
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, Tensor

#: With --request-id and no --offset: how far back each partition is searched.
SEARCH_DEPTH = 1000
TRUNCATE_ELEMENTS = 8
_READER = HopOffload("inspect", 0, 0)  # reads parked payloads; never parks any


@dataclass(frozen=True, slots=True)
class Target:
    topic: str
    gate: str  # the pipeline header records must carry ("" for the pipeline's own topics)
    tensor: str | None = None


def resolve(expr: str, steps: list[str], topics: t.Topics) -> list[Target]:
    """EXPR (``p``, ``p.inputs``, ``p.outputs``, ``p.step``, ``p.step.inputs``, ``p.step.outputs``,
    ``p.step.outputs.tensor``) as the topics to read, in pipeline order."""
    parts = expr.split(".", 3)
    name = parts[0]
    if not name or any(not p for p in parts):
        raise ConfigError(f"inspect: {expr!r} is not <pipeline>[.<step>][.inputs|.outputs[.<tensor>]]")
    if len(parts) == 1:
        out = [Target(topics.pipeline_inputs(name), "")]
        for step in steps:
            out += [Target(topics.model_inputs(step), name), Target(topics.model_outputs(step), name)]
        return [*out, Target(topics.pipeline_outputs(name), "")]
    if len(parts) == 2 and parts[1] in (t.INPUTS, t.OUTPUTS):
        return [Target(topics.pipeline(name, parts[1]), "")]
    step = parts[1]
    if step not in steps:
        raise ConfigError(f"inspect: pipeline {name} has no step {step!r} (steps: {', '.join(steps)})")
    if len(parts) == 2:
        return [Target(topics.model_inputs(step), name), Target(topics.model_outputs(step), name)]
    if parts[2] not in (t.INPUTS, t.OUTPUTS):
        raise ConfigError(f"inspect: {expr!r} has {parts[2]!r} where inputs or outputs is expected")
    return [Target(topics.model(step, parts[2]), name, parts[3] if len(parts) == 4 else None)]


def read_last(
    settings: Settings, target: Target, last: int, request_id: str | None, timeout_s: float = 10.0
) -> list[Any]:
    """The last ``last`` records of the target's topic (over all partitions, by timestamp) that carry
    its pipeline header and, if given, the request id."""
    depth = last if request_id is None else max(last, SEARCH_DEPTH)
    found = scan(
        settings,
        target.topic,
        lambda _p, low, high: (max(low, high - depth), high),
        lambda msg: matches(msg, target, request_id),
        timeout_s,
    )
    return found[-last:]


#: (partition, low watermark, high watermark) -> the offsets [start, end) to read
Ranges = Callable[[int, int, int], tuple[int, int] | None]


def scan(
    settings: Settings, topic: str, ranges: Ranges, wanted: Callable[[Any], bool], timeout_s: float = 10.0
) -> list[Any]:
    """The records of ``topic`` in each partition's range that ``wanted`` keeps, by timestamp."""
    conf = consumer_config(settings, None, {"enable.auto.commit": False, "group.id": "headrace-inspect"})
    consumer = Consumer(conf)
    found: list[Any] = []
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ConfigError(f"topic {topic} does not exist")
        ends: dict[int, int] = {}
        assign = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            span = ranges(p, low, high)
            if span is not None and max(span[0], low) < min(span[1], high):
                ends[p] = min(span[1], high)
                assign.append(TopicPartition(topic, p, max(span[0], low)))
        if assign:
            consumer.assign(assign)
            deadline = time.monotonic() + timeout_s
            while ends and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                partition, offset = msg.partition() or 0, msg.offset() or 0
                end = ends.get(partition)
                if end is None or offset >= end:
                    continue
                if offset + 1 >= end:
                    ends.pop(partition, None)
                if wanted(msg):
                    found.append(msg)
    except KafkaException as exc:
        raise ConfigError(f"Kafka at {conf['bootstrap.servers']}: {exc}") from None
    finally:
        consumer.close()
    found.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
    return found


def matches(msg: Any, target: Target, request_id: str | None) -> bool:
    headers = dict(msg.headers() or [])
    if target.gate and headers.get(t.PIPELINE_HEADER) != target.gate.encode():
        return False
    if request_id is None:
        return True
    key = (msg.key() or b"").decode("utf-8", "replace")
    parts = t.split_key(key)
    return headers.get(t.REQUEST_ID_HEADER) == request_id.encode() or (
        parts is not None and parts[2] == request_id
    )


def render(msg: Any, target: Target, *, fmt: str, verbose: bool, truncate: bool) -> str:
    """One record: topic, key and the message — decoded tensors (json) or protobuf text (raw)."""
    value = msg.value() or b""
    is_request = target.topic.endswith("." + t.INPUTS)
    head = f"{msg.topic()} [{msg.partition()}:{msg.offset()}] {(msg.key() or b'').decode('utf-8', 'replace')}"
    lines = [head]
    if verbose:
        headers = {n: (v or b"").decode("utf-8", "replace") for n, v in msg.headers() or []}
        lines.append("headers " + orjson.dumps(headers).decode())
    error = dict(msg.headers() or []).get(t.ERROR_HEADER)
    if error is not None:
        lines.append(value.decode("utf-8", "replace"))
        return "\n".join(lines)
    parked = offload_header(msg.headers())
    if parked is not None:  # a step's large payload, parked in its worker's shared memory
        try:
            value = _READER.fetch(parked)
        except (PayloadGone, AlreadyHandled):
            lines.append(
                f"(payload parked in its worker's shared memory, no longer there: {parked.decode()})"
            )
            return "\n".join(lines)
    try:
        pb = (pb2.ModelInferRequest if is_request else pb2.ModelInferResponse).FromString(value)
    except Exception:
        lines.append(f"(not an OIP {'request' if is_request else 'response'}: {len(value)} bytes)")
        return "\n".join(lines)
    if fmt == "raw":
        lines.append(text_format.MessageToString(pb, as_one_line=True))
        return "\n".join(lines)
    lines.append(orjson.dumps(readable(pb, is_request, target.tensor, truncate)).decode())
    return "\n".join(lines)


def readable(pb: Any, is_request: bool, tensor: str | None, truncate: bool) -> dict[str, Any]:
    try:
        decoded = grpc_codec.decode_request(pb) if is_request else grpc_codec.decode_response(pb)
    except Exception:  # not decodable as tensors: show the message as protobuf JSON
        out: dict[str, Any] = json_format.MessageToDict(pb)
        return out
    tensors: list[Tensor] = decoded.inputs if isinstance(decoded, InferRequest) else decoded.outputs
    shown = []
    for item in tensors:
        if tensor is not None and item.name != tensor:
            continue
        data = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in item.to_list()]
        if truncate and len(data) > TRUNCATE_ELEMENTS:
            data = [*data[:TRUNCATE_ELEMENTS], "..."]
        shown.append({"name": item.name, "datatype": item.datatype, "shape": item.shape, "data": data})
    doc: dict[str, Any] = {"id": decoded.id or ""}
    doc["inputs" if is_request else "outputs"] = shown
    return doc

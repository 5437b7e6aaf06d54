"""References inside a pipeline (``m``, ``m.outputs.t``, ``<pipeline>.inputs``) resolved to Kafka topics."""

from __future__ import annotations

from collections.abc import Mapping

from headrace.config.pipelines import Ref, parse_ref, parse_tensor_key
from headrace.engine.topics import Topics

__all__ = ["Ref", "parse_ref", "qualify_tensor_map", "ref_topic", "resolve"]


def ref_topic(ref: Ref, topics: Topics) -> str:
    """The topic a reference reads: the pipeline's own topics for its name, else the step model's."""
    if ref.pipeline:
        return topics.pipeline(ref.name, ref.direction)
    return topics.model(ref.name, ref.direction)


def resolve(ref: str | Ref, pipeline: str, topics: Topics) -> tuple[str, str | None]:
    """(topic, tensor or None) for a reference written in pipeline ``pipeline``."""
    parsed = parse_ref(ref, pipeline) if isinstance(ref, str) else ref
    return ref_topic(parsed, topics), parsed.tensor


def qualify_tensor_map(tensor_map: Mapping[str, str], pipeline: str, topics: Topics) -> dict[str, str]:
    """tensorMap keys as ``"<source topic>.<tensor>"``, the lookup key the chain transforms use.

    ``{"m1.outputs.OUTPUT0": "INPUT0"}`` → ``{"seldon.default.model.m1.outputs.OUTPUT0": "INPUT0"}``.
    """
    out: dict[str, str] = {}
    for key, new_name in tensor_map.items():
        ref = parse_tensor_key(key, pipeline)
        out[f"{ref_topic(ref, topics)}.{ref.tensor}"] = new_name
    return out

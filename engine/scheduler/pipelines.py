"""Pipelines in the scheduler: the record, parsing a request's YAML, and the Kafka topics each one needs."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from headrace.config.errors import ConfigError
from headrace.config.pipelines import (
    PipelineManifest,
    parse_external_ref,
    parse_pipelines,
    validate_for_chains,
)
from headrace.engine.dataflow.refs import ref_topic
from headrace.engine.topics import Topics

MODEL_OWNER = "model:"
PIPELINE_OWNER = "pipeline:"


@dataclass
class Pipeline:
    manifest: PipelineManifest
    text: str  # this pipeline's YAML document, as workers receive it
    version: int
    updated_at: float
    terminating: bool = False

    @property
    def name(self) -> str:
        return self.manifest.name


def parse_pipeline_docs(text: str) -> list[tuple[PipelineManifest, str]]:
    """Every Pipeline in ``text`` with its own YAML document, checked for what this release runs.

    Raises ConfigError naming the pipeline and field; nothing is returned unless every document is good.
    """
    manifests = parse_pipelines(text)
    if not manifests:
        raise ConfigError("no Pipeline manifest in the request")
    for manifest in manifests:
        validate_for_chains(manifest)
    docs = [d for d in yaml.safe_load_all(text) if d is not None]  # parse_pipelines read them all
    return [(m, yaml.safe_dump(d, sort_keys=False)) for m, d in zip(manifests, docs, strict=True)]


def parse_stored(text: str) -> PipelineManifest:
    """A stored pipeline document, parsed again (the store keeps the YAML workers get)."""
    [manifest] = parse_pipelines(text)
    validate_for_chains(manifest)
    return manifest


def model_topics(name: str, topics: Topics) -> list[str]:
    return [topics.model_inputs(name), topics.model_outputs(name)]


def pipeline_topics(manifest: PipelineManifest, topics: Topics) -> list[str]:
    """What the pipeline reads and writes: its own inputs/outputs, its steps' model topics, errors, and
    what its externalInputs read (created if their pipeline is not loaded yet, so that this one's
    workers can start; deleting this pipeline never deletes them)."""
    out = [topics.pipeline_inputs(manifest.name), topics.pipeline_outputs(manifest.name)]
    for step in manifest.steps:
        out += model_topics(step.name, topics)
    external = [*manifest.input.external_inputs, *manifest.input.external_triggers] if manifest.input else []
    for text in external:
        out.append(ref_topic(parse_external_ref(text)[1], topics))
    out.append(topics.errors)
    return list(dict.fromkeys(out))


def own_topics(owner: str, topics: Topics) -> list[str]:
    """The topics named after one owner ("model:<m>" or "pipeline:<p>"): deleted on cleanTopicsOnDelete."""
    if owner.startswith(MODEL_OWNER):
        return model_topics(owner[len(MODEL_OWNER) :], topics)
    name = owner[len(PIPELINE_OWNER) :]
    return [topics.pipeline_inputs(name), topics.pipeline_outputs(name)]


def model_owner(name: str) -> str:
    return MODEL_OWNER + name


def pipeline_owner(name: str) -> str:
    return PIPELINE_OWNER + name

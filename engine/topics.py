"""Seldon's Kafka naming: topics per model and pipeline, composite record keys, header names."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

from headrace.config.errors import ConfigError

DEFAULT_PREFIX: Final = "seldon"
DEFAULT_NAMESPACE: Final = "default"
MODEL: Final = "model"
PIPELINE: Final = "pipeline"
ERRORS: Final = "errors"
INPUTS: Final = "inputs"
OUTPUTS: Final = "outputs"

# Record headers (Seldon §3.3).
PIPELINE_HEADER: Final = "pipeline"
PIPELINE_VERSION_HEADER: Final = "x-pipeline-version"
REQUEST_ID_HEADER: Final = "x-request-id"
ERROR_HEADER: Final = "seldon-pipeline-errors"  # on error-topic records: the failing model's name
INFER_TYPE_HEADER: Final = "seldon-infer-type"
ROUTE_HEADER: Final = "x-seldon-route"  # never passed on: it would confuse the routing
EXTERNAL_HEADER_PREFIX: Final = "x-"
# headrace's own: on a model's answer, the input record it answers (engine/dataflow/answers.py)
SOURCE_HEADER: Final = "headrace-source"

_TOPIC_PART = re.compile(r"^[A-Za-z0-9._-]+$")
_INT = re.compile(r"[+-]?\d+")  # Kotlin's String.toIntOrNull, Unicode digits included
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class TopicRef(NamedTuple):
    """A topic read back: kind is model/pipeline/errors, direction inputs/outputs/errors."""

    kind: str
    name: str
    direction: str


class Topics:
    """Topic names for one prefix and namespace: ``<prefix>.<ns>.model.<m>.inputs`` and the like."""

    __slots__ = ("_base", "errors", "namespace", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX, namespace: str = DEFAULT_NAMESPACE) -> None:
        prefix = prefix or DEFAULT_PREFIX
        namespace = namespace or DEFAULT_NAMESPACE
        for what, value in (("topic prefix", prefix), ("namespace", namespace)):
            if not _TOPIC_PART.match(value):
                raise ConfigError(f"Kafka {what} {value!r} may only use A-Z, a-z, 0-9, '.', '_' and '-'")
        self.prefix = prefix
        self.namespace = namespace
        self._base = f"{prefix}.{namespace}."
        self.errors = f"{self._base}{ERRORS}.{ERRORS}"

    def model(self, name: str, direction: str) -> str:
        return f"{self._base}{MODEL}.{name}.{direction}"

    def pipeline(self, name: str, direction: str) -> str:
        return f"{self._base}{PIPELINE}.{name}.{direction}"

    def model_inputs(self, name: str) -> str:
        return self.model(name, INPUTS)

    def model_outputs(self, name: str) -> str:
        return self.model(name, OUTPUTS)

    def pipeline_inputs(self, name: str) -> str:
        return self.pipeline(name, INPUTS)

    def pipeline_outputs(self, name: str) -> str:
        return self.pipeline(name, OUTPUTS)

    def parse(self, topic: str) -> TopicRef | None:
        """(kind, name, direction) of one of these topics; None for any other topic."""
        if not topic.startswith(self._base):
            return None
        kind, _, rest = topic[len(self._base) :].partition(".")
        name, _, direction = rest.rpartition(".")
        if kind == ERRORS and rest == ERRORS:
            return TopicRef(ERRORS, ERRORS, ERRORS)
        if kind in (MODEL, PIPELINE) and name and direction in (INPUTS, OUTPUTS):
            return TopicRef(kind, name, direction)
        return None

    def __repr__(self) -> str:
        return f"Topics(prefix={self.prefix!r}, namespace={self.namespace!r})"


# ---------------------------------------------------------------------------------------------- keys


def make_key(partition: int, resource: str, request_id: str) -> str:
    """The composite key ``<partition>.<resource>.<requestId>`` every hop of a request keeps."""
    return f"{partition}.{resource}.{request_id}"


def split_key(key: str) -> tuple[str, str, str] | None:
    """(partition tag, resource, request id) of a composite key (the id may contain dots), or None."""
    parts = key.split(".", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def partition_of(key: str | bytes | None, partitions: int) -> int:
    """Seldon's SamePartitionForwarder: the integer before the first '.', clamped to [0, partitions-1].

    0 when that prefix is not a 32-bit integer (as Kotlin's toIntOrNull), or the key is missing.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    if key is None:
        return 0
    if isinstance(key, bytes):
        head = key.partition(b".")[0]
        if 0 < len(head) < 10 and head.isdigit():  # every key headrace writes: ASCII digits, no sign
            return min(int(head), partitions - 1)
        key = key.decode("utf-8", "replace")
    tag = key.partition(".")[0]
    if not _INT.fullmatch(tag):
        return 0
    value = int(tag)
    if not _INT_MIN <= value <= _INT_MAX:
        return 0
    return min(max(value, 0), partitions - 1)


# ------------------------------------------------------------------------------------------- headers


def is_passthrough(name: str) -> bool:
    """Whether a client header travels with the request: any ``x-*`` except x-seldon-route."""
    name = name.lower()
    return name.startswith(EXTERNAL_HEADER_PREFIX) and name != ROUTE_HEADER


def passthrough_headers(headers: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, bytes]]:
    """The client headers to carry on Kafka records: ``x-*`` names lower-cased, values as bytes."""
    out: list[tuple[str, bytes]] = []
    for name, value in headers:
        if is_passthrough(name):
            out.append((name.lower(), value.encode() if isinstance(value, str) else value))
    return out


def pipeline_matches(headers: Iterable[tuple[str, bytes | None]] | None, pipeline: str) -> bool:
    """Seldon's PipelineNameFilter: some ``pipeline`` header equals the name (records without one fail)."""
    wanted = pipeline.encode()
    return any(name == PIPELINE_HEADER and value == wanted for name, value in headers or ())

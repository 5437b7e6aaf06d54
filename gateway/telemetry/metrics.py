"""Prometheus metrics of every headrace process, summed over processes by the metrics child.

Each process records into its own files in the per-start metrics folder (``<run_dir>/metrics``, see
:mod:`slab`); the ``headrace: metrics`` child serves their sum on ``/metrics`` with
prometheus_client's ``MultiProcessCollector``. Counters and histograms of a process that died stay
in its files (they keep counting in the sum); its gauges are removed by the supervisor
(``mark_process_dead``), because every gauge here is a ``livesum`` gauge.

Recording is cheap on purpose (the front door records every call): a family's children are bound
once per label values and cached; recording is a dict lookup and a few stores into shared memory.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from typing import Any

import grpc
from prometheus_client.utils import floatToGoString as _go_float

from headrace.config.errors import ErrorKind
from headrace.gateway.telemetry.slab import Slab

#: Seldon's buckets (scheduler/pkg/metrics): 5 ms to 10 s.
SELDON_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Hops and Kafka writes take well under Seldon's first bucket with local hops (about 0.15 ms).
FINE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

PIPELINE_GATEWAY = "pipeline-gateway"  # Seldon's `server` label of the pipeline metrics
INLINE_SERVER = "inline"  # the `server` label of a model running inside the workers
REST, GRPC = "rest", "grpc"


class _Process:
    """This process's files: one Slab per kind of file, opened on first use (after any fork)."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.slabs: dict[str, Slab] = {}

    def slab(self, prefix: str) -> Slab:
        slab = self.slabs.get(prefix)
        if slab is None:
            path = None
            if self.directory is not None:
                path = os.path.join(self.directory, f"{prefix}_{os.getpid()}.db")
            slab = self.slabs[prefix] = Slab(path)
        return slab


_process = _Process()
_families: list[Family] = []


def configure(directory: str | None) -> None:
    """Record into ``directory`` (None: record nowhere, at the same cost). Children forked after this
    record into files of their own pid."""
    _process.directory = directory
    _forget()


def directory() -> str | None:
    return _process.directory


def _forget() -> None:
    _process.slabs = {}
    for family in _families:
        family.children.clear()
    for recorder in _recorders:
        recorder.clear()


os.register_at_fork(after_in_child=_forget)


def _le(bound: float) -> str:
    return str(_go_float(bound))  # type: ignore[no-untyped-call]


def _key(metric: str, sample: str, labels: dict[str, str], help_text: str) -> str:
    return json.dumps([metric, sample, labels, help_text], sort_keys=True)


class Family:
    prefix = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], Any] = {}  # label values -> bound child
        _families.append(self)

    def _labels(self, values: tuple[str, ...]) -> dict[str, str]:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        return dict(zip(self.labelnames, values, strict=True))


class CounterChild:
    __slots__ = ("_i", "_v")

    def __init__(self, view: Any, index: int) -> None:
        self._v = view
        self._i = index

    def inc(self, amount: float = 1.0) -> None:
        self._v[self._i] += amount

    def get(self) -> float:
        return float(self._v[self._i])


class Counter(Family):
    """A counter; ``name`` ends in ``_total`` (prometheus_client's naming)."""

    prefix = "counter"

    def metric_name(self) -> str:
        return self.name[: -len("_total")] if self.name.endswith("_total") else self.name

    def labels(self, *values: str) -> CounterChild:
        child = self.children.get(values)
        if child is None:
            slab = _process.slab(self.prefix)
            key = _key(self.metric_name(), self.name, self._labels(values), self.help)
            child = self.children[values] = CounterChild(*slab.slot(key))
        return child


class Untyped(Counter):
    """A counter exposed under a name without ``_total`` (Seldon's ``seldon_load_model_counter``):
    prometheus_client would append ``_total`` to a counter, so it is served untyped."""

    prefix = "unknown"

    def metric_name(self) -> str:
        return self.name


class GaugeChild(CounterChild):
    __slots__ = ()

    def set(self, value: float) -> None:
        self._v[self._i] = value


class Gauge(Family):
    """A gauge summed over live processes (``livesum``): a dead process's values go with it."""

    prefix = "gauge_livesum"

    def labels(self, *values: str) -> GaugeChild:
        child = self.children.get(values)
        if child is None:
            slab = _process.slab(self.prefix)
            key = _key(self.name, self.name, self._labels(values), self.help)
            child = self.children[values] = GaugeChild(*slab.slot(key))
        return child


class HistogramChild:
    __slots__ = ("_bounds", "_buckets", "_sum", "_sv")

    def __init__(
        self, bounds: tuple[float, ...], buckets: list[tuple[Any, int]], total: tuple[Any, int]
    ) -> None:
        self._bounds = bounds
        self._buckets = tuple(
            buckets
        )  # (view, index) per bucket, +Inf last (not cumulative: summed at scrape)
        self._sv, self._sum = total

    def observe(self, value: float) -> None:
        view, index = self._buckets[bisect.bisect_left(self._bounds, value)]
        view[index] += 1.0
        self._sv[self._sum] += value


class Histogram(Family):
    prefix = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = SELDON_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.bounds = tuple(float(b) for b in buckets)

    def labels(self, *values: str) -> HistogramChild:
        child = self.children.get(values)
        if child is None:
            slab = _process.slab(self.prefix)
            labels = self._labels(values)
            slots = []
            for bound in (*self.bounds, float("inf")):
                key = _key(self.name, self.name + "_bucket", {**labels, "le": _le(bound)}, self.help)
                slots.append(slab.slot(key))
            total = slab.slot(_key(self.name, self.name + "_sum", labels, self.help))
            child = self.children[values] = HistogramChild(self.bounds, slots, total)
        return child


# -- label values, as Seldon's ------------------------------------------------------------------


def _go_code_name(code: grpc.StatusCode) -> str:
    """grpc-go's spelling of a status code (``InvalidArgument``), which Seldon's metrics carry."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


GRPC_OK = "OK"
GRPC_CODE_NAMES = {code: _go_code_name(code) for code in grpc.StatusCode}
_HTTP_LABELS: dict[int, str] = {}


def http_label(status: int) -> str:
    label = _HTTP_LABELS.get(status)
    if label is None:
        label = _HTTP_LABELS[status] = str(status)
    return label


# -- the metrics --------------------------------------------------------------------------------

_MODEL = ("server", "server_replica", "model", "model_internal", "method_type", "code")
MODEL_API = Histogram(
    "seldon_model_infer_api_seconds",
    "A histogram of latencies for inference server",
    ("server", "server_replica", "method", "code"),
)
MODEL_TOTAL = Counter("seldon_model_infer_total", "A count of server inference calls", _MODEL)
MODEL_SECONDS = Counter(
    "seldon_model_infer_seconds_total", "A sum of server inference call latencies", _MODEL
)
MODEL_AGG_TOTAL = Counter(
    "seldon_model_aggregate_infer_total",
    "A count of server inference calls (aggregate)",
    ("server", "server_replica", "method_type"),
)
MODEL_AGG_SECONDS = Counter(
    "seldon_model_aggregate_infer_seconds_total",
    "A sum of server inference call latencies (aggregate)",
    ("server", "server_replica", "method_type"),
)
_PIPELINE = ("server", "pipeline", "method_type", "code")
PIPELINE_API = Histogram(
    "seldon_pipeline_infer_api_seconds",
    "A histogram of latencies for pipeline gateway",
    ("server", "pipeline", "method", "code"),
)
PIPELINE_TOTAL = Counter("seldon_pipeline_infer_total", "A count of pipeline gateway calls", _PIPELINE)
PIPELINE_SECONDS = Counter(
    "seldon_pipeline_infer_seconds_total", "A sum of pipeline gateway call latencies", _PIPELINE
)
PIPELINE_AGG_TOTAL = Counter(
    "seldon_pipeline_aggregate_infer_total",
    "A count of pipeline gateway calls (aggregate)",
    ("server", "method_type"),
)
PIPELINE_AGG_SECONDS = Counter(
    "seldon_pipeline_aggregate_infer_seconds_total",
    "A sum of pipeline gateway call latencies (aggregate)",
    ("server", "method_type"),
)
LOADED_MODELS = Gauge(
    "seldon_loaded_model_gauge",
    "A gauge of models loaded in the system",
    ("server", "server_replica", "model_internal"),
)
MODEL_LOADS = Untyped("seldon_load_model_counter", "A count of model load", ("server", "server_replica"))
MODEL_UNLOADS = Untyped(
    "seldon_unload_model_counter", "A count of model unload", ("server", "server_replica")
)

PIPELINE_HOP = Histogram(
    "headrace_pipeline_hop_seconds",
    "Seconds from the previous record's write (the pipeline gateway's input, or the previous step's "
    "output) to this step's output write; step=reply: from the last output to the gateway's answer",
    ("pipeline", "step"),
    FINE_BUCKETS,
)
GATEWAY_IN_FLIGHT = Gauge(
    "headrace_modelgateway_inflight_records",
    "Records queued or being called per model-gateway slot, per worker (sampled every second)",
    ("worker", "slot"),
)
PIPELINE_PENDING = Gauge(
    "headrace_pipeline_gateway_pending_calls",
    "Pipeline calls waiting for their answer, per worker (sampled every second)",
    ("worker",),
)
OPEN_JOINS = Gauge(
    "headrace_dataflow_open_joins",
    "Joins waiting for more sources (join state held), per worker and pipeline (sampled every second)",
    ("worker", "pipeline"),
)
KAFKA_DELIVERY = Histogram(
    "headrace_kafka_produce_delivery_seconds",
    "Seconds from producing a record to the broker's acknowledgement, per worker and producer",
    ("worker", "producer"),
    FINE_BUCKETS,
)
KAFKA_LAG = Gauge(
    "headrace_kafka_consumer_lag_records",
    "Records behind the partitions' high watermarks, per worker and topic (librdkafka statistics)",
    ("worker", "topic"),
)
REQUEST_ERRORS = Counter(
    "headrace_request_errors_total",
    "Calls answered with an error, by error kind (timeout, unavailable, ...), target and transport",
    ("kind", "target", "method_type"),
)
PROCESS_RESTARTS = Counter(
    "headrace_process_restarts_total",
    "Children restarted by the supervisor after they died (worker N, server NAME-N, scheduler, ...)",
    ("process",),
)


# -- recorders of the front door ----------------------------------------------------------------


class _Bound:
    """One call's five values (Seldon's histogram, count, seconds, aggregate count and seconds), bound
    once per label values: recording is a bisect and six stores, no method calls."""

    __slots__ = ("_a", "_as", "_bounds", "_buckets", "_c", "_cs", "_h", "_hs", "_ia", "_ias", "_ic", "_ics")

    def __init__(
        self,
        api: HistogramChild,
        total: CounterChild,
        seconds: CounterChild,
        agg: CounterChild,
        agg_s: CounterChild,
    ) -> None:
        self._bounds = api._bounds
        self._buckets = api._buckets
        self._h, self._hs = api._sv, api._sum
        self._c, self._ic = total._v, total._i
        self._cs, self._ics = seconds._v, seconds._i
        self._a, self._ia = agg._v, agg._i
        self._as, self._ias = agg_s._v, agg_s._i

    def record(self, seconds: float) -> None:
        view, index = self._buckets[bisect.bisect_left(self._bounds, seconds)]
        view[index] += 1.0
        self._h[self._hs] += seconds
        self._c[self._ic] += 1.0
        self._cs[self._ics] += seconds
        self._a[self._ia] += 1.0
        self._as[self._ias] += seconds


_recorders: list[InferMetrics] = []


class InferMetrics:
    """Seldon's model and pipeline call metrics, as one worker records them."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, str, str, str, str], _Bound] = {}

        self._pipelines: dict[tuple[str, str, str], _Bound] = {}
        self._errors: dict[tuple[ErrorKind, str, str], CounterChild] = {}
        _recorders.append(self)

    def clear(self) -> None:
        self._models.clear()
        self._pipelines.clear()
        self._errors.clear()

    def model(
        self, model: str, version: str, server: str, replica: str, method_type: str, code: str, seconds: float
    ) -> None:
        self.bound_model(model, version, server, replica, method_type, code).record(seconds)

    def bound_model(
        self, model: str, version: str, server: str, replica: str, method_type: str, code: str
    ) -> _Bound:
        key = (model, version, server, replica, method_type, code)
        bound = self._models.get(key)
        if bound is None:
            bound = self._models[key] = _Bound(
                MODEL_API.labels(server, replica, "post" if method_type == REST else GRPC, code),
                MODEL_TOTAL.labels(server, replica, model, f"{model}_{version}", method_type, code),
                MODEL_SECONDS.labels(server, replica, model, f"{model}_{version}", method_type, code),
                MODEL_AGG_TOTAL.labels(server, replica, method_type),
                MODEL_AGG_SECONDS.labels(server, replica, method_type),
            )
        return bound

    def pipeline(self, pipeline: str, method_type: str, code: str, seconds: float) -> None:
        key = (pipeline, method_type, code)
        bound = self._pipelines.get(key)
        if bound is None:
            bound = self._pipelines[key] = _Bound(
                PIPELINE_API.labels(PIPELINE_GATEWAY, pipeline, method_type, code),
                PIPELINE_TOTAL.labels(PIPELINE_GATEWAY, pipeline, method_type, code),
                PIPELINE_SECONDS.labels(PIPELINE_GATEWAY, pipeline, method_type, code),
                PIPELINE_AGG_TOTAL.labels(PIPELINE_GATEWAY, method_type),
                PIPELINE_AGG_SECONDS.labels(PIPELINE_GATEWAY, method_type),
            )
        bound.record(seconds)

    def error(self, kind: ErrorKind, target: str, method_type: str) -> None:
        key = (kind, target, method_type)
        child = self._errors.get(key)
        if child is None:
            child = self._errors[key] = REQUEST_ERRORS.labels(kind.value, target, method_type)
        child.inc()

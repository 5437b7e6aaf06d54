"""Metric files: what processes record is what prometheus_client's MultiProcessCollector sums."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from headrace.config.errors import ErrorKind
from headrace.gateway.telemetry import metrics as m
from headrace.gateway.telemetry.slab import Slab


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    m.configure(str(tmp_path))
    yield tmp_path
    m.configure(None)


def scrape(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_histograms_and_gauges_are_read_by_the_collector(folder: Path) -> None:
    rec = m.InferMetrics()
    for seconds in (0.001, 0.003, 0.2, 20.0):
        rec.model("echo", "1", "headrace", "0", m.REST, "200", seconds)
    rec.pipeline("demo", m.GRPC, "OK", 0.004)
    rec.error(ErrorKind.TIMEOUT, "model", m.REST)
    m.LOADED_MODELS.labels("headrace", "0", "echo_1").set(1)
    m.MODEL_LOADS.labels("headrace", "0").inc()
    got = scrape(folder)
    labels = (("code", "200"), ("method", "post"), ("server", "headrace"), ("server_replica", "0"))
    assert got[("seldon_model_infer_api_seconds_count", labels)] == 4
    assert got[("seldon_model_infer_api_seconds_bucket", tuple(sorted((*labels, ("le", "0.005")))))] == 2
    assert got[("seldon_model_infer_api_seconds_bucket", tuple(sorted((*labels, ("le", "+Inf")))))] == 4
    assert got[("seldon_model_infer_api_seconds_sum", labels)] == pytest.approx(20.204)
    model = (
        ("code", "200"),
        ("method_type", "rest"),
        ("model", "echo"),
        ("model_internal", "echo_1"),
        ("server", "headrace"),
        ("server_replica", "0"),
    )
    assert got[("seldon_model_infer_total", model)] == 4
    assert got[("seldon_model_infer_seconds_total", model)] == pytest.approx(20.204)
    agg = (("method_type", "rest"), ("server", "headrace"), ("server_replica", "0"))
    assert got[("seldon_model_aggregate_infer_total", agg)] == 4
    pipe = (("code", "OK"), ("method_type", "grpc"), ("pipeline", "demo"), ("server", "pipeline-gateway"))
    assert got[("seldon_pipeline_infer_total", pipe)] == 1
    assert (
        got[
            (
                "headrace_request_errors_total",
                (("kind", "timeout"), ("method_type", "rest"), ("target", "model")),
            )
        ]
        == 1
    )
    gauge = (("model_internal", "echo_1"), ("server", "headrace"), ("server_replica", "0"))
    assert got[("seldon_loaded_model_gauge", gauge)] == 1
    assert got[("seldon_load_model_counter", (("server", "headrace"), ("server_replica", "0")))] == 1


def test_untyped_counter_keeps_seldons_name(folder: Path) -> None:
    m.MODEL_UNLOADS.labels("s", "1").inc(2)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    text = generate_latest(registry).decode()
    assert "# TYPE seldon_unload_model_counter untyped" in text
    assert 'seldon_unload_model_counter{server="s",server_replica="1"} 2.0' in text


def test_counts_of_a_killed_process_stay_and_its_gauges_go(folder: Path) -> None:
    """A child killed with SIGKILL right after recording: its counts are in the sum, its gauges are
    dropped by mark_process_dead, and the parent's own values add up with them."""
    m.MODEL_LOADS.labels("s", "0").inc()
    pid = os.fork()
    if pid == 0:  # the child records into files of its own pid, then dies without any clean-up
        m.MODEL_LOADS.labels("s", "0").inc(2)
        m.LOADED_MODELS.labels("s", "0", "a_1").set(1)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert (folder / f"counter_{os.getpid()}.db").exists() is False  # the parent's untyped file only
    got = scrape(folder)
    assert got[("seldon_load_model_counter", (("server", "s"), ("server_replica", "0")))] == 3
    assert (
        got[
            (
                "seldon_loaded_model_gauge",
                (("model_internal", "a_1"), ("server", "s"), ("server_replica", "0")),
            )
        ]
        == 1
    )
    mark_process_dead(pid, str(folder))
    got = scrape(folder)
    assert got[("seldon_load_model_counter", (("server", "s"), ("server_replica", "0")))] == 3
    assert not any(name == "seldon_loaded_model_gauge" for name, _ in got)


def test_a_slab_grows_and_reopens(tmp_path: Path) -> None:
    path = str(tmp_path / "counter_1.db")
    slab = Slab(path)
    views = []
    for n in range(3000):  # far past the first mapping
        view, index = slab.slot(f'["x", "x_total", {{"n": "{n}"}}, "h"]')
        view[index] += n
        views.append((view, index))
    views[0][0][views[0][1]] += 0.5  # a view of the first mapping still writes the file
    again = Slab(path)
    view, index = again.slot('["x", "x_total", {"n": "2999"}, "h"]')
    assert view[index] == 2999
    view, index = again.slot('["x", "x_total", {"n": "0"}, "h"]')
    assert view[index] == 0.5
    values = {k: v for k, v, _, _ in _read(path)}
    assert len(values) == 3000


def _read(path: str) -> list[tuple[str, float, float, int]]:
    from prometheus_client.mmap_dict import MmapedDict

    return [(k, v, ts, 0) for k, v, ts, _ in MmapedDict.read_all_values_from_file(path)]


def test_go_code_names() -> None:
    import grpc

    assert m.GRPC_CODE_NAMES[grpc.StatusCode.INVALID_ARGUMENT] == "InvalidArgument"
    assert m.GRPC_CODE_NAMES[grpc.StatusCode.DEADLINE_EXCEEDED] == "DeadlineExceeded"
    assert m.GRPC_CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"
    assert m.GRPC_CODE_NAMES[grpc.StatusCode.OK] == "OK"

"""`python -m loadtests.bench.pipelines`: per-step overhead of headrace pipelines (1- to 5-step echo chains
through the embedded Kafka), with a Triton ensemble and a Ray Serve handle chain as anchors.

Cells (REST, wrk -t1, small JSON body, closed loop):
- light load: c=1 against the direct echo model and chain1..chain5;
- peak: the 3-step chain at c=16, 32 and 64 (a system's peak is its best of the three);
- half of peak: every chain at the smallest concurrency whose 3-step RPS reaches half the 3-step peak;
- batching gain (headrace): a one-step pipeline over a model that costs 10 ms per call whatever its rows,
  without and with ``batch: {size: 8, windowMs: 5}``, at c=1 and c=32.
"Added per step" = (chainN p50 - direct p50) / N; "slope" = least-squares slope of p50 over N = 1..5.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from rich.console import Console
from rich.table import Table

from loadtests.bench import ASSETS_DIR, CACHE_DIR, REPO_DIR, RESULTS_DIR
from loadtests.bench.__main__ import machine_line
from loadtests.bench.loadgen import LoadError, Measurement, run_wrk
from loadtests.bench.payloads import INPUT_NAME, JSON_HEADERS, SMALL_BODY, RestBody, rest_body
from loadtests.bench.peers import TritonPeer, triton_command
from loadtests.bench.procs import (
    Server,
    SetupError,
    free_ports,
    post,
    run_quiet,
    start_server,
    wait_log_line,
    wait_ready,
)
from loadtests.bench.tools import ensure_wrk

console = Console(width=200, highlight=False)
HEADRACE = REPO_DIR / ".venv" / "bin" / "headrace"
ECHO_REPO = REPO_DIR / "config" / "samples" / "model-repo" / "echo"
ECHO_MANIFEST = REPO_DIR / "config" / "samples" / "models" / "echo.yaml"
RAY_VENV = CACHE_DIR / "ray-venv"
PNG = REPO_DIR / "docs" / "pipeline-latency.png"
PEAK_CONNS = 32
#: the 3-step peak is the best of these concurrencies, for every system alike
PEAK_SWEEP = (16, 32, 64)
HALF_CANDIDATES = (1, 2, 4, 8, 16)

ECHO_NAMES = ("echo", "echo2", "echo3", "echo4", "echo5")
BATCH = {"size": 8, "windowMs": 5}
#: a model whose cost is per call, not per row (a GPU kernel launch, a remote call): 10 ms a call
PER_CALL_MODEL = """
import time


class Model:
    def predict(self, inputs):
        time.sleep(0.010)
        return dict(inputs)
"""


def write_echo_chains(models: Path, pipes: Path, lengths: Iterable[int], *, diamond: bool) -> None:
    """Echo models and the pipelines chain<N> for each N of ``lengths`` (echo, then echo2, ...), and
    with ``diamond`` the diamond: echo -> (echo2, echo3) -> echo4, an inner join (critical path 3
    steps, like chain3). Only the models they use are written."""
    chains = list(lengths)
    names = ECHO_NAMES[: max([*chains, 4 if diamond else 0])]
    base_doc = yaml.safe_load(ECHO_MANIFEST.read_text())
    for name in names:
        doc = dict(base_doc)
        doc["metadata"] = {"name": name}
        doc["spec"] = {**base_doc["spec"], "storageUri": str(ECHO_REPO)}
        (models / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for n in chains:
        steps: list[dict[str, Any]] = [{"name": names[0]}]
        steps += [{"name": names[i], "inputs": [names[i - 1]]} for i in range(1, n)]
        doc = {
            "apiVersion": "mlops.seldon.io/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": f"chain{n}"},
            "spec": {"steps": steps, "output": {"steps": [names[n - 1]]}},
        }
        (pipes / f"chain{n}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    if diamond:
        doc = {
            "apiVersion": "mlops.seldon.io/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "diamond"},
            "spec": {
                "steps": [
                    {"name": "echo"},
                    {"name": "echo2", "inputs": ["echo"]},
                    {"name": "echo3", "inputs": ["echo"]},
                    {
                        "name": "echo4",
                        "inputs": ["echo2", "echo3"],
                        "tensorMap": {f"echo2.outputs.{INPUT_NAME}": "a", f"echo3.outputs.{INPUT_NAME}": "b"},
                    },
                ],
                "output": {"steps": ["echo4"]},
            },
        }
        (pipes / "diamond.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@dataclass
class Row:
    """One server/target/load cell with all its repeats."""

    system: str  # headrace | triton | ray
    target: str  # direct | chainN
    steps: int  # 0 = direct model
    load: str  # light | half | peak
    conns: int
    runs: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def p50(self) -> float | None:
        return statistics.fmean(r.p50_ms for r in self.runs) if self.runs else None

    def p99(self) -> float | None:
        return statistics.fmean(r.p99_ms for r in self.runs) if self.runs else None

    def rps(self) -> float | None:
        return statistics.fmean(r.rps for r in self.runs) if self.runs else None

    def spread(self) -> str:
        if len(self.runs) < 2:
            return ""
        p = [r.p50_ms for r in self.runs]
        return f"p50 {min(p):.2f}-{max(p):.2f}"


class Results:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, int], Row] = {}
        self.notes: list[str] = []
        self.unavailable: dict[str, str] = {}

    def row(self, system: str, target: str, steps: int, load: str, conns: int) -> Row:
        key = (system, target, load, conns)
        if key not in self.rows:
            self.rows[key] = Row(system, target, steps, load, conns)
        return self.rows[key]

    def get(self, system: str, target: str, load: str, conns: int) -> Row | None:
        r = self.rows.get((system, target, load, conns))
        return r if r and r.runs else None


def fit_slope(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, results: Results) -> None:
        self.args = args
        self.work = work
        self.res = results
        self.wrk = ensure_wrk()
        self.body = work / "body.json"
        self.body.write_bytes(SMALL_BODY)
        self.half_c: dict[str, int] = {}

    def measure(
        self,
        row: Row,
        url: str,
        headers: dict[str, str],
        server: Server,
        seconds: float | None = None,
        body: RestBody | None = None,
    ) -> Measurement | None:
        """Check one request answers 200, warm up, measure; a non-2xx or socket error fails the cell."""
        body_path = body.path if body is not None else self.body
        body_headers = body.headers if body is not None else JSON_HEADERS
        status, reply = post(url, body_path.read_bytes(), {**body_headers, **headers})
        label = f"{row.system} {row.target} {row.load} c={row.conns}"
        if status != 200:
            msg = f"sanity request answered {status}: {reply[:200]!r}"
            row.failures.append(msg)
            console.print(f"  {label:<34} [red]FAILED: {msg}[/red]")
            return None
        dur = seconds if seconds is not None else self.args.duration

        def go(d: float) -> Measurement:
            return run_wrk(
                self.wrk,
                url,
                body_path,
                {**body_headers, **headers},
                conns=row.conns,
                duration=d,
                threads=1,
                timeout_s=10.0,
                workdir=self.work,
            )

        try:
            if self.args.warmup > 0:
                go(self.args.warmup)
            m = go(dur)
        except LoadError as exc:
            alive = "" if server.alive() else f" (server exited: {server.log_tail(3)})"
            row.failures.append(f"{exc}{alive}")
            console.print(f"  {label:<34} [red]FAILED: {exc}{alive}[/red]")
            return None
        if m.errors:
            msg = f"{m.errors} errors ({m.error_detail}) of {m.requests} requests"
            row.failures.append(msg)
            console.print(f"  {label:<34} [red]FAILED: {msg}[/red]")
            return None
        row.runs.append(m)
        console.print(f"  {label:<34} {m.rps:8,.0f} rps  p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms")
        return m

    # ---------------------------------------------------------------- headrace
    def headrace(self, rep: int) -> None:
        self._headrace(rep, "headrace", [])

    def headrace_kafka(self, rep: int) -> None:
        self._headrace(rep, "headrace-kafka", ["--local-hops", "false"])

    def headrace_inline(self, rep: int) -> None:
        """Only the 4 MiB cells, with every step's record carrying its payload (no shm references)."""
        self._headrace(rep, "headrace-inline", ["--hop-shm-min-bytes", "0"], only_large=True)

    def _headrace(self, rep: int, system: str, flags: list[str], only_large: bool = False) -> None:
        wd = self.work / f"{system}-{rep}"
        models = wd / "models"
        pipes = wd / "pipelines"
        models.mkdir(parents=True)
        pipes.mkdir(parents=True)
        write_echo_chains(models, pipes, range(1, 6), diamond=True)
        base_doc = yaml.safe_load(ECHO_MANIFEST.read_text())
        batching = system == "headrace"
        if batching:  # the batching gain: one model costing 10 ms per call, without and with batch
            (wd / "percall").mkdir()
            (wd / "percall" / "model.py").write_text(PER_CALL_MODEL)
            doc = dict(base_doc)
            doc["metadata"] = {"name": "percall"}
            doc["spec"] = {**base_doc["spec"], "storageUri": str(wd / "percall")}
            (models / "percall.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            for pipe, step in (
                ("unbatched", {"name": "percall"}),
                ("batched", {"name": "percall", "batch": BATCH}),
            ):
                doc = {
                    "apiVersion": "mlops.seldon.io/v1alpha1",
                    "kind": "Pipeline",
                    "metadata": {"name": pipe},
                    "spec": {"steps": [step], "output": {"steps": ["percall"]}},
                }
                (pipes / f"{pipe}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        http, grpc, control, kafka, kctl = free_ports(5)
        cmd = [
            str(HEADRACE),
            "serve",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--control-port",
            str(control),
            "--kafka-port",
            str(kafka),
            "--kafka-controller-port",
            str(kctl),
            "--data-dir",
            str(wd / "data"),
            "--workers",
            str(self.args.workers),
            "--load",
            str(models),
            *flags,
        ]
        console.print(f"[bold]run {rep + 1}: starting {system} (embedded Kafka {' '.join(flags)})[/bold]")
        server = start_server("headrace", cmd, log_path=wd / "headrace.log", cwd=wd)
        try:
            base = f"http://127.0.0.1:{http}"
            for name in [*ECHO_NAMES, *(["percall"] if batching else [])]:
                wait_ready(server, f"{base}/v2/models/{name}/ready", 180.0)
            env = dict(os.environ, HEADRACE_CONTROL_URL=f"http://127.0.0.1:{control}")
            run_quiet([str(HEADRACE), "pipeline", "load", "-f", str(pipes)], timeout=120, env=env)
            pipelines = [f"chain{n}" for n in range(1, 6)] + ["diamond"]
            for pipe in pipelines + (["unbatched", "batched"] if batching else []):
                run_quiet(
                    [
                        str(HEADRACE),
                        "pipeline",
                        "status",
                        pipe,
                        "-w",
                        "PipelineReady",
                        "--timeout",
                        "120",
                    ],
                    timeout=150,
                    env=env,
                )
            if not only_large:
                self._chain_cells(system, server, base, 5, pipeline_header=True)
                self._diamond_cells(system, server, base)
            self._large_cells(system, server, base)
            if batching:
                self._batching_cells(system, server, base)
        except SetupError as exc:
            console.print(f"[yellow]  {system}: did not start: {exc}[/yellow]")
            self.res.notes.append(f"{system} run {rep + 1} did not start: {exc}")
        finally:
            server.stop()

    def _chain_cells(
        self, system: str, server: Server, base: str, max_steps: int, *, pipeline_header: bool
    ) -> None:
        def target(n: int) -> tuple[str, dict[str, str]]:
            if n == 0:
                return f"{base}/v2/models/echo/infer", {}
            name = f"chain{n}"
            hdr = {"Seldon-Model": f"{name}.pipeline"} if pipeline_header else {}
            return f"{base}/v2/models/{name}/infer", hdr

        for n in range(0, max_steps + 1):
            url, hdr = target(n)
            self.measure(
                self.res.row(system, "direct" if n == 0 else f"chain{n}", n, "light", 1), url, hdr, server
            )
        if max_steps < 3:
            return
        url, hdr = target(3)
        peaks = [
            self.measure(self.res.row(system, "chain3", 3, "peak", c), url, hdr, server) for c in PEAK_SWEEP
        ]
        peak = max((m for m in peaks if m is not None), key=lambda m: m.rps, default=None)
        if not system.startswith("headrace") or peak is None:
            return
        # half of peak: smallest concurrency whose 3-step RPS reaches half the 3-step peak, chosen in
        # the first repeat and kept for the others so that repeats of a cell are comparable
        if system in self.half_c:
            self.measure_half(system, server, target, max_steps, self.half_c[system])
            return
        half_c = HALF_CANDIDATES[-1]
        for c in HALF_CANDIDATES:
            probe = Row(system, "chain3", 3, "probe", c)
            m = self.measure(probe, url, hdr, server, seconds=max(2.0, self.args.duration / 2))
            if m is not None and m.rps >= peak.rps / 2:
                half_c = c
                break
        self.half_c[system] = half_c
        self.res.notes.append(
            f"{system}: 3-step peak {peak.rps:,.0f} rps (best of c={PEAK_SWEEP}); half-peak load = "
            f"c={half_c} "
            "(smallest of 1,2,4,8,16 reaching half the peak on chain3 in the first repeat), same c for "
            "every chain and every repeat"
        )
        self.measure_half(system, server, target, max_steps, half_c)

    def _diamond_cells(self, system: str, server: Server, base: str) -> None:
        """The join's cost: the diamond (3 steps on its critical path, 4 models) beside chain3, at c=1 and
        with 50 concurrent callers."""
        url, hdr = f"{base}/v2/models/diamond/infer", {"Seldon-Model": "diamond.pipeline"}
        self.measure(self.res.row(system, "diamond", 3, "light", 1), url, hdr, server)
        self.measure(self.res.row(system, "diamond", 3, "many", 50), url, hdr, server)
        url3, hdr3 = f"{base}/v2/models/chain3/infer", {"Seldon-Model": "chain3.pipeline"}
        self.measure(self.res.row(system, "chain3", 3, "many", 50), url3, hdr3, server)

    def _large_cells(self, system: str, server: Server, base: str) -> None:
        """A 4 MiB FP32 tensor (REST binary extension) at c=1: the echo model direct (through shm to its
        server process) and the 3-step chain: the pipeline's inputs and outputs records carry the 4 MiB;
        the steps' records carry a reference to shared memory (headrace), or the 4 MiB too
        (headrace-inline, and headrace-kafka where every hop goes through the broker)."""
        body = rest_body("4MiB", binary=True, out_dir=self.work)
        direct = self.res.row(system, "direct", 0, "4MiB", 1)
        self.measure(direct, f"{base}/v2/models/echo/infer", {}, server, body=body)
        self.measure(
            self.res.row(system, "chain3", 3, "4MiB", 1),
            f"{base}/v2/models/chain3/infer",
            {"Seldon-Model": "chain3.pipeline"},
            server,
            body=body,
        )

    def _batching_cells(self, system: str, server: Server, base: str) -> None:
        """The batching gain: the per-call-cost model behind a one-step pipeline, unbatched and batched
        (size 8, window 5 ms), alone (c=1: the window's cost) and with 32 callers (the gain)."""
        for pipe in ("unbatched", "batched"):
            url, hdr = f"{base}/v2/models/{pipe}/infer", {"Seldon-Model": f"{pipe}.pipeline"}
            self.measure(self.res.row(system, pipe, 1, "batch", 1), url, hdr, server)
            self.measure(self.res.row(system, pipe, 1, "batch", PEAK_CONNS), url, hdr, server)

    def measure_half(
        self,
        system: str,
        server: Server,
        target: Callable[[int], tuple[str, dict[str, str]]],
        max_steps: int,
        half_c: int,
    ) -> None:
        for n in range(0, max_steps + 1):
            url, hdr = target(n)
            row = self.res.row(system, "direct" if n == 0 else f"chain{n}", n, "half", half_c)
            self.measure(row, url, hdr, server)

    # ---------------------------------------------------------------- triton
    def triton(self, rep: int) -> None:
        peer = TritonPeer()
        try:
            peer.prepare()
        except SetupError as exc:
            self.res.unavailable["triton"] = str(exc)
            return
        wd = self.work / f"triton-{rep}"
        repo = wd / "models"
        names = ["echo", "echo2", "echo3"]
        tpl = (ASSETS_DIR / "triton" / "config.pbtxt").read_text()
        for name in names:
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "config.pbtxt").write_text(tpl.replace('name: "echo"', f'name: "{name}"'))
            shutil.copy(ASSETS_DIR / "triton" / "model.py", repo / name / "1" / "model.py")
        for n in range(1, 4):
            (repo / f"chain{n}" / "1").mkdir(parents=True)
            (repo / f"chain{n}" / "config.pbtxt").write_text(ensemble_config(f"chain{n}", names[:n]))
        http, grpc = free_ports(2)
        env = dict(os.environ, LD_LIBRARY_PATH=str(peer.home / "libs"))
        cmd = triton_command(peer.home, repo, http, grpc)
        console.print(f"[bold]run {rep + 1}: starting Triton (ensembles chain1..chain3)[/bold]")
        server = start_server("triton", cmd, log_path=wd / "triton.log", cwd=wd, env=env)
        try:
            base = f"http://127.0.0.1:{http}"
            wait_ready(server, f"{base}/v2/models/chain3/ready", 120.0)
            self._chain_cells("triton", server, base, 3, pipeline_header=False)
        except SetupError as exc:
            console.print(f"[yellow]  triton: did not start: {exc}[/yellow]")
            self.res.unavailable["triton"] = str(exc)
        finally:
            server.stop()

    # ---------------------------------------------------------------- ray
    def ray(self, rep: int) -> None:
        py = RAY_VENV / "bin" / "python"
        if "ray" in self.res.unavailable:
            return
        try:
            if not py.exists() or subprocess.run([str(py), "-c", "import ray.serve"], check=False).returncode:
                run_quiet([sys.executable, "-m", "venv", str(RAY_VENV)], timeout=120)
                run_quiet([str(py), "-m", "pip", "install", "-q", "ray[serve]"], timeout=480)
        except SetupError as exc:
            self.res.unavailable["ray"] = f"install failed: {exc}"
            return
        wd = self.work / f"ray-{rep}"
        wd.mkdir(parents=True)
        (port,) = free_ports(1)
        cmd = [str(py), str(ASSETS_DIR / "ray" / "chain.py"), str(port), "3"]
        console.print(f"[bold]run {rep + 1}: starting Ray Serve (3 deployments by handle)[/bold]")
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        server = start_server("ray", cmd, log_path=wd / "ray.log", cwd=wd, env=env)
        try:
            wait_log_line(server, "READY", 240.0)
            url = f"http://127.0.0.1:{port}/"
            self.measure(self.res.row("ray", "chain3", 3, "light", 1), url, {}, server)
            for c in PEAK_SWEEP:
                self.measure(self.res.row("ray", "chain3", 3, "peak", c), url, {}, server)
            version = subprocess.run(
                [str(py), "-c", "import ray; print(ray.__version__)"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            note = (
                f"Ray Serve {version} (own venv): 3 deployments, 1 replica each, ray_actor_options "
                "num_cpus=0.1 (the default 1 CPU per replica cannot place 3 replicas on 2 cores), "
                "HTTP ingress is deployment 1; it returns the inputs as outputs in JSON."
            )
            if note not in self.res.notes:
                self.res.notes.append(note)
        except SetupError as exc:
            console.print(f"[yellow]  ray: did not start: {exc}[/yellow]")
            self.res.unavailable["ray"] = f"did not start: {exc}"
        finally:
            server.stop(timeout=30)


def ensemble_config(name: str, steps: list[str]) -> str:
    parts = []
    for i, model in enumerate(steps):
        src = "input-0" if i == 0 else f"t{i}"
        dst = "output-0" if i == len(steps) - 1 else f"t{i + 1}"
        parts.append(
            f'    {{ model_name: "{model}" model_version: -1 '
            f'input_map {{ key: "input-0" value: "{src}" }} '
            f'output_map {{ key: "output-0" value: "{dst}" }} }}'
        )
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
        'input [ { name: "input-0" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
        'output [ { name: "output-0" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
        "ensemble_scheduling {\n  step [\n" + ",\n".join(parts) + "\n  ]\n}\n"
    )


# -------------------------------------------------------------------- report
def fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def table_rows(res: Results) -> list[list[str]]:
    out = []
    for system in SYSTEMS:
        for load in ("light", "half", "peak", "many", "4MiB", "batch"):
            for row in sorted(
                (r for r in res.rows.values() if r.system == system and r.load == load),
                key=lambda r: (r.conns, r.steps),
            ):
                direct = res.get(system, "direct", load, row.conns)
                added = "—"
                p50 = row.p50()
                if direct and row.steps and p50 is not None:
                    d = direct.p50()
                    assert d is not None
                    added = f"{(p50 - d) / row.steps:.2f}"
                status = "; ".join(row.failures)[:80] if row.failures else ""
                out.append(
                    [
                        system,
                        row.target,
                        str(row.steps),
                        f"{load} c={row.conns}",
                        fmt(row.rps(), ",.0f"),
                        fmt(p50),
                        fmt(row.p99()),
                        added,
                        f"{len(row.runs)} {row.spread()}".strip(),
                        status,
                    ]
                )
    return out


SYSTEMS = ("headrace", "headrace-kafka", "headrace-inline", "triton", "ray")

HEADER = [
    "system",
    "target",
    "steps",
    "load",
    "RPS",
    "p50 ms",
    "p99 ms",
    "added/step ms",
    "runs (spread)",
    "failures",
]


def slopes(res: Results) -> list[str]:
    lines = []
    for system in ("headrace", "headrace-kafka", "triton"):
        for load in ("light", "half"):
            pts = [
                (r.steps, r.p50() or 0.0)
                for r in res.rows.values()
                if r.system == system and r.load == load and r.steps and r.runs
            ]
            s = fit_slope(sorted(pts))
            if s is not None:
                lines.append(
                    f"{system} {load}: p50 slope {s:.2f} ms per step "
                    f"(least squares over N={min(pts)[0]}..{max(pts)[0]})"
                )
    return lines


def best_peak(res: Results, system: str) -> tuple[float, int] | None:
    """(mean RPS over repeats, concurrency) of the system's best 3-step peak cell."""
    cells = [
        (r.rps() or 0.0, r.conns)
        for r in res.rows.values()
        if r.system == system and r.load == "peak" and r.runs
    ]
    return max(cells, default=None)


def peak_ratios(res: Results) -> list[str]:
    ours = best_peak(res, "headrace")
    if ours is None:
        return []
    parts = []
    for peer in ("headrace-kafka", "triton", "ray"):
        theirs = best_peak(res, peer)
        if theirs is not None and theirs[0]:
            parts.append(f"{peer} {theirs[0]:,.0f} (c={theirs[1]}): {ours[0] / theirs[0]:.2f}x")
    return [
        f"3-step peak, best of c={PEAK_SWEEP}: headrace {ours[0]:,.0f} rps (c={ours[1]}) vs "
        + "; ".join(parts)
    ]


def large_transport(res: Results) -> list[str]:
    shm = res.get("headrace", "chain3", "4MiB", 1)
    inline = res.get("headrace-inline", "chain3", "4MiB", 1)
    if shm is None or inline is None or shm.p50() is None or inline.p50() is None:
        return []
    return [
        f"4 MiB through chain3 at c=1: steps' records as shm references p50 {shm.p50():.1f} ms vs "
        f"inline {inline.p50():.1f} ms ({(inline.p50() or 0) / (shm.p50() or 1):.1f}x)"
    ]


def batching_gain(res: Results) -> list[str]:
    plain = res.get("headrace", "unbatched", "batch", PEAK_CONNS)
    batched = res.get("headrace", "batched", "batch", PEAK_CONNS)
    if plain is None or batched is None or not plain.rps() or not batched.rps():
        return []
    gain = (batched.rps() or 0.0) / (plain.rps() or 1.0)
    return [
        f"batching gain (model costing 10 ms per call, c={PEAK_CONNS}): batch size 8 / window 5 ms "
        f"{batched.rps():,.0f} rps vs unbatched {plain.rps():,.0f} rps = {gain:.1f}x"
    ]


def _matplotlib_on_path() -> None:
    """matplotlib lives in the harness's tools venv, not the runtime deps: installed there if missing."""
    venv = CACHE_DIR / "tools-venv"
    if importlib.util.find_spec("matplotlib") is None:
        py = venv / "bin" / "python"
        if not py.exists():
            run_quiet([sys.executable, "-m", "venv", str(venv)], timeout=120)
        has = subprocess.run(
            [str(py), "-c", "import matplotlib"], capture_output=True, timeout=60, check=False
        )
        if has.returncode != 0:
            run_quiet([str(py), "-m", "pip", "install", "-q", "matplotlib"], timeout=900)
    for site in sorted((venv / "lib").glob("python3*/site-packages")):
        if str(site) not in sys.path:
            sys.path.append(str(site))


def load_results(path: Path) -> Results:
    """The rows of a results file written by main()."""
    res = Results()
    for doc in orjson.loads(path.read_bytes())["rows"]:
        row = res.row(doc["system"], doc["target"], doc["steps"], doc["load"], doc["conns"])
        row.runs = [Measurement(**m) for m in doc["runs"]]
        row.failures = list(doc.get("failures", []))
    return res


def plot(res: Results, path: Path) -> str | None:
    try:
        _matplotlib_on_path()
    except SetupError as exc:
        return f"no plot: {exc}"
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        ("headrace", "light"): ("o-", "headrace, c=1"),
        ("headrace", "half"): ("s--", "headrace, half of peak"),
        ("headrace-kafka", "light"): ("v:", "headrace --local-hops false, c=1"),
        ("triton", "light"): ("^-", "Triton ensemble (Python backend), c=1"),
        ("ray", "light"): ("D", "Ray Serve handles, c=1"),
    }
    for (system, load), (style, label) in styles.items():
        pts = sorted(
            (r.steps, r.p50() or 0.0)
            for r in res.rows.values()
            if r.system == system and r.load == load and r.runs and r.target.startswith(("direct", "chain"))
        )
        half = next((r.conns for r in res.rows.values() if r.system == system and r.load == load), 0)
        if load == "half":
            label += f" (c={half})"
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.set_xlabel("pipeline steps (0 = the echo model called directly)")
    ax.set_ylabel("p50 latency, ms (REST, small JSON body)")
    ax.set_yscale("log")
    ax.set_xticks(range(0, 6))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Echo chain latency vs step count")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.pipelines", description=__doc__)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (default 8)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load before each run")
    p.add_argument("--repeats", type=int, default=1, help="runs per cell, each on a fresh server")
    p.add_argument("--workers", type=int, default=2, help="headrace --workers (default 2)")
    p.add_argument(
        "--only",
        default="headrace,headrace-kafka,headrace-inline,triton,ray",
        help="subset of headrace,headrace-kafka (every hop through the broker),headrace-inline (4 MiB "
        "cells with payloads inline in every step's record),triton,ray",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--png", type=Path, default=PNG)
    p.add_argument(
        "--replot", type=Path, metavar="RESULTS.json", help="only draw --png again from a run's results file"
    )
    args = p.parse_args(argv)
    if args.replot is not None:
        problem = plot(load_results(args.replot), args.png)
        console.print(problem or f"plot {args.png}")
        return 1 if problem else 0
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    res = Results()
    machine = machine_line()
    console.print(machine)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pipelines-", dir=CACHE_DIR))
    bench = Bench(args, work, res)
    runners: list[tuple[str, Callable[[int], None]]] = [
        ("headrace", bench.headrace),
        ("headrace-kafka", bench.headrace_kafka),
        ("headrace-inline", bench.headrace_inline),
        ("triton", bench.triton),
        ("ray", bench.ray),
    ]
    try:
        for rep in range(args.repeats):
            for key, fn in runners:
                if key in only:
                    fn(rep)
    except KeyboardInterrupt:
        res.notes.append("interrupted: partial results")
    res.notes += slopes(res)
    res.notes += peak_ratios(res)
    res.notes += batching_gain(res)
    res.notes += large_transport(res)
    res.notes.append(
        "added/step = (chainN p50 - direct echo p50 at the same load) / N. headrace chains write every hop "
        "to the embedded Apache Kafka (N steps = 2N+2 records); headrace hands each hop to the next step "
        "in memory (local hops, the default), headrace-kafka waits for every hop to come back from the "
        f"broker (--local-hops false, Seldon's way); --workers {args.workers}; Triton: ensemble of "
        "Python-backend echo steps; Ray Serve: 3 deployments calling each other by DeploymentHandle, "
        "max_ongoing_requests=64. All REST via wrk -t1 on the same cores; a cell with any non-2xx or "
        "socket error is marked failed."
    )
    problem = plot(res, args.png)
    if problem:
        res.notes.append(problem)
    rows = table_rows(res)
    table = Table(title="Pipeline latency: echo chains")
    for h in HEADER:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    for n in res.notes:
        console.print(f"- {n}")
    for k, v in res.unavailable.items():
        console.print(f"- [yellow]{k}: not available: {v}[/yellow]")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / f"pipelines-{stamp}.md"
    config = f"{args.duration:g} s per run after {args.warmup:g} s warm-up, {args.repeats} repeat(s)"
    lines = [f"# Pipeline benchmark {stamp}", "", f"Machine: {machine}", "", f"Config: {config}", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in res.notes]
    lines += [f"- {k}: not available: {v}" for k, v in res.unavailable.items()]
    if not problem:
        lines += [
            "",
            f"Plot: `{args.png.relative_to(REPO_DIR) if args.png.is_relative_to(REPO_DIR) else args.png}`",
        ]
    md.write_text("\n".join(lines) + "\n")
    js = md.with_suffix(".json")
    js.write_bytes(
        orjson.dumps(
            {
                "machine": machine,
                "config": config,
                "rows": [
                    {
                        **{k: v for k, v in asdict(r).items() if k != "runs"},
                        "runs": [m.to_json() for m in r.runs],
                    }
                    for r in res.rows.values()
                ],
                "notes": res.notes,
                "unavailable": res.unavailable,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    console.print(f"written: {md} and {js.name}; plot {args.png}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

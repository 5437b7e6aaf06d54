"""Benchmark results: per-cell aggregation, ratios to same-run baselines, table, markdown + JSON files."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from loadtests.bench.loadgen import Measurement


@dataclass(frozen=True, order=True)
class Cell:
    proto: str  # "rest" | "grpc"
    payload: str  # "small" | "1MiB" | "16MiB"
    conns: int

    def title(self) -> str:
        return f"{self.proto.upper()} {self.payload} c={self.conns}"


@dataclass
class CellResult:
    """All repeats of one server in one cell."""

    peer: str
    label: str
    cell: Cell
    encoding: str = ""
    runs: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def mean_rps(self) -> float | None:
        return statistics.fmean(r.rps for r in self.runs) if self.runs else None

    @property
    def spread(self) -> float | None:
        """(max - min) / mean of RPS over the runs."""
        if len(self.runs) < 2 or not self.mean_rps:
            return None
        rps = [r.rps for r in self.runs]
        return (max(rps) - min(rps)) / self.mean_rps

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "label": self.label,
            "proto": self.cell.proto,
            "payload": self.cell.payload,
            "conns": self.cell.conns,
            "encoding": self.encoding,
            "runs": [r.to_json() for r in self.runs],
            "failures": self.failures,
            "skipped": self.skipped,
            "mean_rps": self.mean_rps,
            "spread": self.spread,
        }


@dataclass
class Report:
    machine: str
    config: str
    peers: list[tuple[str, str]]  # (key, label) in display order
    versions: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # key -> reason
    results: dict[tuple[str, Cell], CellResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def result(self, peer: str, label: str, cell: Cell) -> CellResult:
        key = (peer, cell)
        if key not in self.results:
            self.results[key] = CellResult(peer, label, cell)
        return self.results[key]

    def cells(self) -> list[Cell]:
        order = {"rest": 0, "grpc": 1}
        sizes = {"small": 0, "1MiB": 1, "16MiB": 2}
        return sorted(
            {c for _, c in self.results},
            key=lambda c: (order.get(c.proto, 9), sizes.get(c.payload, 9), c.conns),
        )

    def _baseline(self, peer: str, cell: Cell) -> float | None:
        res = self.results.get((peer, cell))
        return res.mean_rps if res else None

    def rows(self) -> list[list[str]]:
        """One row per (cell, server): the table printed and written."""
        rows = []
        for cell in self.cells():
            mls = self._baseline("mlserver", cell)
            tri = self._baseline("triton", cell)
            floor_key = FLOOR_KEYS.get(cell.proto, "floor")
            flo = self._baseline(floor_key, cell)
            for key, label in self.peers:
                res = self.results.get((key, cell))
                if res is None:
                    continue
                rows.append(_row(cell, label, res, key, mls, tri, flo if key != floor_key else None))
        return rows

    def target_lines(self) -> list[str]:
        """The issue's targets for each headrace mode, from this run's numbers (report only, no asserts)."""
        lines = []
        for key, label in self.peers:
            if not key.startswith("headrace"):
                continue
            if key in self.unavailable:
                lines.append(f"{label}: not available: {self.unavailable[key]}")
                continue
            for cell in self.cells():
                if cell.payload != "small" and cell.proto != "grpc":
                    continue
                res = self.results.get((key, cell))
                rps = res.mean_rps if res else None
                if rps is None:
                    continue
                checks = []
                if cell.payload == "small":
                    mls = self._baseline("mlserver", cell)
                    goal = 10.0 if cell.proto == "rest" else 5.0
                    checks.append(_check(f">= {goal:g}x MLServer", rps / mls if mls else None, goal, "x"))
                if cell.proto == "rest":
                    tri = self._baseline("triton", cell)
                    checks.append(_check(">= Triton", rps / tri if tri else None, 1.0, "x"))
                    flo = self._baseline("floor", cell)
                    checks.append(_check(">= 25% of floor", rps / flo if flo else None, 0.25, "%"))
                else:
                    checks += self._grpc_floor_shares(rps, cell)
                if not checks:
                    continue
                lines.append(f"{label}, {cell.title()}: " + "; ".join(checks))
        for cell in self.cells():
            inline = self._baseline("headrace-inline", cell)
            process = self._baseline("headrace-process", cell)
            if inline and process:
                lines.append(f"headrace inline / process, {cell.title()}: {inline / process:.2f}x")
        return lines

    def _grpc_floor_shares(self, rps: float, cell: Cell) -> list[str]:
        """`rps` as a share of each gRPC floor measured in this cell (no goal: the floor is a ceiling)."""
        out = []
        for key, label in self.peers:
            if key in GRPC_FLOOR_KEYS:
                base = self._baseline(key, cell)
                size = label.rsplit(", ", 1)[-1]  # "2 processes"
                share = f"{math.floor(rps / base * 100)}%" if base else "n/a (no baseline)"
                out.append(f"{share} of gRPC floor ({size})")
        return out

    def print(self, console: Console) -> None:
        console.print(self.machine)
        console.print(self.config)
        table = Table(title="headrace benchmark", show_lines=False)
        for col in HEADERS:
            table.add_column(col, overflow="fold", max_width=48 if col == "notes" else None)
        for row in self.rows():
            table.add_row(*row)
        console.print(table)
        for key, reason in self.unavailable.items():
            console.print(f"[yellow]{key}: not available: {reason}[/yellow]")
        for line in self.target_lines():
            console.print(f"target: {line}")
        for note in self.notes:
            console.print(f"note: {note}")

    def markdown(self) -> str:
        out = [
            f"# Benchmark {self.started.strftime('%Y-%m-%d %H:%M')} UTC",
            "",
            f"- machine: {self.machine}",
            f"- run: {self.config}",
        ]
        out += [f"- {k}: {v}" for k, v in self.versions.items()]
        out += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in self.rows()]
        if self.unavailable:
            out += ["", "## Not available", ""]
            out += [f"- {k}: {v}" for k, v in self.unavailable.items()]
        lines = self.target_lines()
        if lines:
            out += ["", "## Targets (from this run)", ""] + [f"- {line}" for line in lines]
        out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started.isoformat(),
            "machine": self.machine,
            "config": self.config,
            "versions": self.versions,
            "unavailable": self.unavailable,
            "notes": self.notes,
            "results": [r.to_json() for r in self.results.values()],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Report:
        """Rebuild a report from its JSON file (to re-render the markdown)."""
        report = cls(
            machine=doc["machine"],
            config=doc["config"],
            peers=[],
            versions=doc.get("versions", {}),
            unavailable=doc.get("unavailable", {}),
            notes=doc.get("notes", []),
            started=datetime.fromisoformat(doc["started"]),
        )
        for item in doc["results"]:
            if (item["peer"], item["label"]) not in report.peers:
                report.peers.append((item["peer"], item["label"]))
            res = report.result(
                item["peer"], item["label"], Cell(item["proto"], item["payload"], item["conns"])
            )
            res.encoding, res.failures, res.skipped = item["encoding"], item["failures"], item["skipped"]
            res.runs = [Measurement(**m) for m in item["runs"]]
        return report

    def write(self, out_dir: Path, tag: str = "") -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"bench-{self.started.strftime('%Y%m%dT%H%M%SZ')}{tag}"
        md = out_dir / f"{stem}.md"
        js = out_dir / f"{stem}.json"
        md.write_text(self.markdown())
        js.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2))
        return md, js


# Whose RPS the "% floor" column divides by: the REST floor for REST, the N-process gRPC floor for gRPC.
FLOOR_KEYS = {"rest": "floor", "grpc": "floor-grpc"}
GRPC_FLOOR_KEYS = ("floor-grpc", "floor-grpc-1")

HEADERS = [
    "cell",
    "server",
    "body",
    "RPS per run",
    "RPS mean",
    "spread",
    "p50 ms",
    "p99 ms",
    "x MLServer",
    "x Triton",
    "% floor",
    "CPU cl/srv/other",
    "notes",
]


def _row(
    cell: Cell,
    label: str,
    res: CellResult,
    key: str,
    mls: float | None,
    tri: float | None,
    flo: float | None,
) -> list[str]:
    notes = list(dict.fromkeys(res.failures))
    if res.skipped:
        notes.insert(0, res.skipped)
    errs = sum(r.errors for r in res.runs)
    if errs:
        details = "; ".join(dict.fromkeys(r.error_detail for r in res.runs if r.error_detail))
        notes.append(f"{errs} errors ({details[:100]})")  # in full in the JSON file
    rps = res.mean_rps
    if rps is None:
        return [
            cell.title(),
            label,
            res.encoding or "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "; ".join(notes),
        ]
    runs = res.runs
    return [
        cell.title(),
        label,
        res.encoding,
        " / ".join(f"{r.rps:,.0f}" for r in runs),
        f"{rps:,.0f}",
        f"{res.spread:.0%}" if res.spread is not None else "-",
        f"{statistics.median(r.p50_ms for r in runs):.2f}",
        f"{max(r.p99_ms for r in runs):.2f}",
        _ratio(rps, mls, key == "mlserver"),
        _ratio(rps, tri, key == "triton"),
        f"{rps / flo:.0%}" if flo else "-",
        "/".join(
            f"{statistics.fmean(getattr(r, a) for r in runs):.2f}"
            for a in ("client_cpu", "server_cpu", "other_cpu")
        ),
        "; ".join(notes),
    ]


def _ratio(rps: float, base: float | None, is_self: bool) -> str:
    if is_self or not base:
        return "-"
    return f"{rps / base:.2f}x"


def _check(name: str, value: float | None, goal: float, unit: str) -> str:
    if value is None:
        return f"{name}: n/a (no baseline)"
    # Rounded down, so a value shown as the goal has met it (9.996x shows as 9.99x, not 10.00x).
    shown = f"{math.floor(value * 100)}%" if unit == "%" else f"{math.floor(value * 100) / 100:.2f}x"
    return f"{name}: {shown} {'met' if value >= goal else 'NOT met'}"


def main(argv: list[str]) -> int:
    """`python -m loadtests.bench.report RESULTS.json...`: rewrite each .md next to its .json."""
    for name in argv:
        path = Path(name)
        report = Report.from_json(orjson.loads(path.read_bytes()))
        path.with_suffix(".md").write_text(report.markdown())
        print(f"rewrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))

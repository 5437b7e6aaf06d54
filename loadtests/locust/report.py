"""The runner's table: requests, failures, RPS, p50/p90/p99 per request type, from locust's stats files."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

PERCENTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Row:
    type: str
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Failure:
    type: str
    name: str
    error: str
    occurrences: int


@dataclass
class Summary:
    scenario: str
    target: str
    users: int
    duration_s: float
    rows: list[Row]
    total: Row
    failures: list[Failure] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)  # errors in the locustfile itself
    locust_exit_code: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.locust_exit_code == 0
            and self.total.requests > 0
            and self.total.failures == 0
            and not self.failures
            and not self.exceptions
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)


def read(out_dir: Path, scenario: str, target: str, users: int, exit_code: int) -> Summary:
    """What locust wrote with `--json-file OUT/stats --errors-file OUT/errors.json`."""
    stats_file = out_dir / "stats.json"
    errors_file = out_dir / "errors.json"
    errors: dict[str, Any] = json.loads(errors_file.read_text()) if errors_file.exists() else {}
    entries: list[dict[str, Any]] = json.loads(stats_file.read_text()) if stats_file.exists() else []
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    ends = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    duration = max(ends) - min(starts) if starts and ends else 0.0
    rows = sorted(
        (_row(e["method"], e["name"], [e], duration) for e in entries), key=lambda r: (r.type, r.name)
    )
    return Summary(
        scenario=scenario,
        target=target,
        users=users,
        duration_s=duration,
        rows=rows,
        total=_row("", "total", entries, duration),
        failures=sorted(
            (Failure(f["type"], f["name"], f["error"], f["occurrences"]) for f in errors.get("failures", [])),
            key=lambda f: -f.occurrences,
        ),
        exceptions=[
            f"{x['message']} ({x['count']} times)\n{x['traceback']}" for x in errors.get("exceptions", [])
        ],
        locust_exit_code=exit_code,
    )


def _row(type_: str, name: str, entries: list[dict[str, Any]], duration: float) -> Row:
    buckets: Counter[float] = Counter()
    for e in entries:
        buckets.update({float(ms): count for ms, count in e["response_times"].items()})
    requests = sum(e["num_requests"] for e in entries)
    max_ms = max((float(e["max_response_time"] or 0) for e in entries), default=0.0)
    # buckets round to two digits, possibly up: no percentile above the (exact) slowest request
    p50, p90, p99 = (min(_percentile(buckets, p), max_ms) for p in PERCENTILES)
    return Row(
        type=type_,
        name=name,
        requests=requests,
        failures=sum(e["num_failures"] for e in entries),
        rps=requests / duration if duration > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=max_ms,
    )


def _percentile(buckets: Counter[float], fraction: float) -> float:
    """Nearest rank: the smallest response time that ``fraction`` of the requests did not exceed."""
    total = sum(buckets.values())
    if total == 0:
        return 0.0
    rank, seen = math.ceil(fraction * total), 0
    for ms in sorted(buckets):
        seen += buckets[ms]
        if seen >= rank:
            return ms
    return max(buckets)


def print_summary(summary: Summary, console: Console) -> None:
    title = f"{summary.scenario} against {summary.target}: {summary.users} users, {summary.duration_s:.1f} s"
    table = Table("type", "name", "requests", "failures", "RPS", "p50 ms", "p90 ms", "p99 ms", "max ms")
    table.title = title
    for column in table.columns[2:]:
        column.justify = "right"
    for row in [*summary.rows, summary.total]:
        table.add_row(
            escape(row.type),
            escape(row.name),
            f"{row.requests:,}",
            f"{row.failures:,}",
            f"{row.rps:,.1f}",
            *(_ms(v) for v in (row.p50_ms, row.p90_ms, row.p99_ms, row.max_ms)),
            style="bold" if row is summary.total else None,
            end_section=row is summary.rows[-1] if summary.rows else False,
        )
    console.print(table)
    for f in summary.failures:
        console.print(f"[red]failed {f.occurrences:,} times[/red]: {escape(f'{f.type} {f.name}: {f.error}')}")
    for e in summary.exceptions:
        console.print(f"[red]locustfile error[/red] {escape(e)}")
    if summary.ok:
        console.print(f"[green]OK[/green]: {summary.total.requests:,} requests, no failures")
    elif summary.total.requests == 0:
        console.print(
            f"[red]FAILED[/red]: no requests were made (locust exit code {summary.locust_exit_code})"
        )
    else:
        console.print(
            f"[red]FAILED[/red]: {summary.total.failures:,} of {summary.total.requests:,} requests failed"
            f" (locust exit code {summary.locust_exit_code})"
        )


def _ms(value: float) -> str:
    """Two significant digits, as measured (see buckets.py)."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"

"""The rebalance bench's instrument: wrk with the per-request timeline script, against a small real
HTTP server that answers each request's x-request-id inside a key (as a pipeline's answer carries
it) and holds one request back. Every request wrk counts is in the timeline with its own latency,
and only those answered from a given moment count "from the change on"."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests.bench.loadgen import read_timeline, run_wrk
from loadtests.bench.sharding import During
from loadtests.bench.tools import ensure_wrk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HELD_S = 0.25


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = 0
    held: list[str] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        rid = self.headers.get("x-request-id", "")
        with self.lock:
            type(self).seen += 1
            hold = self.seen == 20
        if hold:
            self.held.append(rid)
            time.sleep(HELD_S)
        body = b"{}"
        self.send_response(200)
        self.send_header("x-request-id", f"3.demo.{rid}")  # the id inside a Kafka key
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_every_request_is_timed_once_and_the_held_one_is_slow(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = tmp_path / "body.json"
        body.write_bytes(b'{"inputs":[]}')
        timeline = tmp_path / "timeline.txt"
        began = time.monotonic()
        measured = run_wrk(
            ensure_wrk(), f"http://127.0.0.1:{server.server_port}/v2/models/demo/infer", body,
            {"Content-Type": "application/json"}, conns=4, duration=2.0, threads=1, timeout_s=5.0,
            workdir=tmp_path, timeline=timeline,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    answers = read_timeline(timeline)
    assert measured.errors == 0
    assert len(answers) == measured.requests > 20
    assert all(a.status == 200 for a in answers)
    # times are the caller's monotonic clock, within the run
    assert all(began <= a.sent <= a.answered <= time.monotonic() for a in answers)
    slow = [a for a in answers if a.latency_ms >= HELD_S * 1000]
    assert len(slow) == 1 and len(_Handler.held) == 1

    since = sorted(a.answered for a in answers)[len(answers) // 2]
    later = During.of(answers, since)
    assert later.requests == sum(1 for a in answers if a.answered >= since)
    everything = During.of(answers, began)
    assert everything.requests == len(answers)
    assert everything.max_ms == max(a.latency_ms for a in answers) >= HELD_S * 1000
    assert everything.p50_ms <= everything.p99_ms <= everything.max_ms

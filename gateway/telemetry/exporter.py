"""The `headrace: metrics` child: serves the sum of every process's metric files on /metrics.

A child of its own rather than a thread of the supervisor: the supervisor forks (restarted workers,
added workers), and a fork while another thread holds a lock (logging, an import, a socket buffer)
can leave the child stuck on it. The supervisor restarts this child like any other if it dies.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from headrace.config.logs import setup_logging
from headrace.config.settings import Settings

log = logging.getLogger("headrace.metrics")

RETRY_BIND_S = 5.0


def registry_for(directory: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def make_server(host: str, port: int, directory: str) -> ThreadingHTTPServer:
    registry = registry_for(directory)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/metrics", "/"):
                self.send_error(404, "only /metrics here")
                return
            try:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                body = encoder(registry)
            except Exception as exc:  # a file being written mid-read, a bad file: say so, keep serving
                log.exception("collecting metrics failed")
                self.send_error(500, f"collecting metrics failed: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # one line per scrape would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def run(settings: Settings) -> None:
    """Entry of the metrics child: bind (retrying while the port is taken), serve until SIGTERM."""
    setup_logging(settings.log_level, "metrics", settings.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    warned = 0.0
    server: ThreadingHTTPServer | None = None
    while not stop.is_set():
        try:
            server = make_server(settings.metrics_host, settings.metrics_port, str(settings.metrics_dir))
            break
        except OSError as exc:
            if time.monotonic() - warned > 60:
                log.error(
                    "metrics endpoint %s:%d unavailable (%s); retrying every %.0f s",
                    settings.metrics_host,
                    settings.metrics_port,
                    exc,
                    RETRY_BIND_S,
                )
                warned = time.monotonic()
            stop.wait(RETRY_BIND_S)
    if server is None:
        return
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    server.server_close()

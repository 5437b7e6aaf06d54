"""A real embedded Apache Kafka broker for the integration tier, started once per session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of an embedded Apache Kafka (KRaft) run as `headrace serve` runs it."""
    from headrace.engine.kafka.ready import wait_ready

    data = tmp_path_factory.mktemp("kafka")
    port, controller = free_port(), free_port()
    code = (
        "from headrace.config.settings import load_settings\n"
        "from headrace.engine.kafka.broker import run_embedded_broker\n"
        f"run_embedded_broker(load_settings(overrides=dict(data_dir={str(data)!r}, kafka_port={port}, "
        f"kafka_controller_port={controller})))\n"
    )
    log = open(Path(data) / "broker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        wait_ready(bootstrap, timeout=90, alive=lambda: proc.poll() is None)
        yield bootstrap
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()

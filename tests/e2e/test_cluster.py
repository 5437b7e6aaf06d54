"""Several instances on one Kafka cluster: one runs the scheduler (and here the broker), the others join
it; instances join and leave, and the scheduler is killed, under load — no request fails."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SAMPLES, Serve, children, http_get
from test_rebalance import PIPELINES, Load, check_every_answer, control, grow_while_loaded, settle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def joining(first: Serve, data_dir: Path) -> Serve:
    """An instance joining ``first``'s scheduler and Kafka (it runs neither)."""
    return Serve(
        data_dir,
        workers=2,
        extra=["--join", f"127.0.0.1:{first.control_port}", "--kafka-bootstrap", first.bootstrap],
    )


def instances(status: dict) -> dict[str, int]:
    """Units per instance, of the workers holding any."""
    out: dict[str, int] = {}
    for w in status["workers"]:
        if w["units"]:
            out[w["instance"]] = out.get(w["instance"], 0) + w["units"]
    return out


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Serve, Serve]]:
    first = Serve(
        tmp_path / "a", kafka=True, workers=2, extra=["--load", str(SAMPLES), "--load", str(PIPELINES)]
    )
    started = [first]
    try:
        first.start()
        second = joining(first, tmp_path / "b")
        started.append(second)
        second.start()
        settle(first, lambda st: len(instances(st)) == 2, "two instances")
        yield first, second
    finally:
        for s in reversed(started):
            s.stop()


def test_both_instances_serve_models_and_pipelines(two: tuple[Serve, Serve]) -> None:
    first, second = two
    status = json.loads(control(first, "pipeline", "status", "demo", "-o", "json"))
    assert {w["worker"].split("/")[0] for w in status["workers"] if w["active"]} == set(
        instances(json.loads(control(first, "sharding", "status", "-o", "json")))
    )
    assert status["workersUsed"] == 4
    assert status["dataflowReplicas"] == 4  # Seldon's min(4 workers, 1 pipeline x 8 partitions)
    assert status["pipelineGatewayReplicas"] == 4
    for s in two:
        code, _ = http_get(s.url + "/v2/pipelines/demo/ready")
        assert code == 200
    with Load(first, callers=3) as on_first, Load(second, callers=3) as on_second:
        grow_while_loaded(on_first, 0, more=60)
        grow_while_loaded(on_second, 0, more=60)
    check_every_answer(first, on_first)
    check_every_answer(first, on_second)


def test_an_instance_joining_and_one_leaving_under_load_fail_no_request(
    two: tuple[Serve, Serve], tmp_path: Path
) -> None:
    first, second = two
    third = joining(first, tmp_path / "c")
    try:
        with Load(first) as load:
            grow_while_loaded(load, 0)
            third.start()
            # every worker of the three counted: Seldon's min(6 workers, 1 pipeline x 8 partitions)
            settle(
                first,
                lambda st: len(instances(st)) == 3 and st["dataflow"]["formula"] == 6,
                "three instances, six workers",
            )
            grow_while_loaded(load, load.count())
            gone = (second.data_dir / "instance-id").read_text().strip()
            assert second.stop() == 0  # it leaves: its units go to the others first
            settle(first, lambda st: len(instances(st)) == 2 and gone not in instances(st), "two again")
            grow_while_loaded(load, load.count())
        check_every_answer(first, load)
    finally:
        third.stop()


def test_killing_the_scheduler_under_load_fails_no_request(two: tuple[Serve, Serve]) -> None:
    first, second = two
    with Load(first, callers=3) as on_first, Load(second, callers=3) as on_second:
        grow_while_loaded(on_first, 0, more=60)
        os.kill(children(first)["scheduler"], signal.SIGKILL)
        time.sleep(1.0)  # the data plane carries on with the units it holds
        grow_while_loaded(on_first, on_first.count(), more=60)
        grow_while_loaded(on_second, on_second.count(), more=60)
        settle(first, lambda st: len(instances(st)) == 2, "after the scheduler's restart")
        grow_while_loaded(on_first, on_first.count(), more=60)
    check_every_answer(first, on_first)
    check_every_answer(first, on_second)


def test_an_instance_killed_outright_fails_no_request_made_through_the_others(
    two: tuple[Serve, Serve],
) -> None:
    first, second = two
    gone = (second.data_dir / "instance-id").read_text().strip()
    with Load(first) as load:
        grow_while_loaded(load, 0)
        assert second.proc is not None
        os.killpg(second.proc.pid, signal.SIGKILL)  # no handover: its units move once it is silent
        second.proc.wait(10)
        grow_while_loaded(load, load.count())
        settle(first, lambda st: gone not in instances(st), "its units taken over", timeout=90)
        grow_while_loaded(load, load.count())
    check_every_answer(first, load)

"""Rebalancing under constant load: workers added and removed, the multiplier changed, pipelines loaded
and unloaded — every request is answered once, with its own body, and nothing is written twice."""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support import HEADRACE, SAMPLES, Serve, children

from headrace.engine.gateways.model import slot_of
from headrace.gateway.oip.pb import pb2

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PIPELINES = Path(__file__).resolve().parents[2] / "config" / "samples" / "pipelines"
OUTPUTS = "seldon.default.pipeline.demo.outputs"


class Load:
    """Callers sending `demo` requests (echo then sum) back to back, each with its own id and numbers;
    every answer is checked against what that request asked."""

    def __init__(self, s: Serve, callers: int = 6) -> None:
        self.s = s
        self.callers = callers
        self.stop = threading.Event()
        self.answered: list[str] = []
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(callers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, caller: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.s.http_port, timeout=30)
        n = 0
        while not self.stop.is_set():
            n += 1
            rid = f"c{caller}-{n}-{uuid.uuid4().hex[:8]}"
            values = [caller, n, 7]
            body = json.dumps(
                {"id": rid, "inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": values}]}
            )
            started = time.monotonic()
            try:
                conn.request(
                    "POST",
                    "/v2/models/demo/infer",
                    body,
                    {"Content-Type": "application/json", "Seldon-Model": "demo.pipeline"},
                )
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._fail(f"{rid}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.s.http_port, timeout=30)
                continue
            took = time.monotonic() - started
            if resp.status != 200:
                self._fail(f"{rid}: HTTP {resp.status} {data[:300]!r}")
                continue
            answer = json.loads(data)
            got = answer["outputs"][0]["data"]
            if answer.get("id") != rid or got != [sum(values)]:
                self._fail(f"{rid}: wrong answer {answer}")
                continue
            with self._lock:
                self.answered.append(rid)
                self.latencies.append(took)
        conn.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def count(self) -> int:
        with self._lock:
            return len(self.answered)


def control(s: Serve, *args: str) -> str:
    env = {**os.environ, "HEADRACE_CONTROL_URL": s.control}
    proc = subprocess.run([HEADRACE, *args], capture_output=True, text=True, env=env, timeout=90)
    if proc.returncode != 0:
        units = subprocess.run([HEADRACE, "sharding", "status"], capture_output=True, text=True, env=env)
        raise AssertionError(f"{args}: {proc.stdout}{proc.stderr}\n{units.stdout}\n{s.log_text()}")
    return proc.stdout


def sharding(s: Serve) -> dict:
    return json.loads(control(s, "sharding", "status", "-o", "json"))


def settle(s: Serve, check: Callable[[dict], bool], what: str, timeout: float = 60) -> dict:
    """Wait until the placement satisfies ``check`` and no unit is moving."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = sharding(s)
        if (
            status["moving"] == 0
            and check(status)
            and all(w["active"] == w["units"] for w in status["workers"])
        ):
            pipeline = json.loads(control(s, "pipeline", "status", "demo", "-o", "json"))
            if pipeline["state"] == "PipelineReady":
                return status
        time.sleep(0.2)
    raise AssertionError(f"not settled ({what}) within {timeout}s: {status}\n{s.log_text()}")


def grow_while_loaded(load: Load, before: int, more: int = 150, timeout: float = 60) -> None:
    """Let the callers get at least ``more`` answers past ``before`` (traffic across the change)."""
    deadline = time.monotonic() + timeout
    while load.count() < before + more and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load.count() >= before + more, f"traffic stalled: {load.count() - before} answers"


def answers_on_topic(s: Serve, topic: str = OUTPUTS) -> collections.Counter[str]:
    """How many records each request id has on a topic, demo's outputs unless told (read from the start)."""
    consumer = Consumer(
        {
            "bootstrap.servers": s.bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        seen: collections.Counter[str] = collections.Counter()
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                headers = dict(msg.headers() or [])
                seen[(headers.get("x-request-id") or b"").decode()] += 1
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
        assert len(done) == len(ends), "could not read the outputs topic to its end"
        return seen
    finally:
        consumer.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(
        tmp_path / "data", kafka=True, workers=2, extra=["--load", str(SAMPLES), "--load", str(PIPELINES)]
    )
    try:
        s.start()
        s.wait_ready("/v2/pipelines/demo/ready")
        settle(s, lambda st: len(st["workers"]) == 2, "start")
        yield s
    finally:
        s.stop()


def check_every_answer(s: Serve, load: Load) -> None:
    assert load.failures == [], load.failures[:10]
    assert len(load.answered) == len(set(load.answered))
    on_topic = answers_on_topic(s)
    twice = {rid: n for rid, n in on_topic.items() if n > 1}
    assert not twice, f"answers written more than once: {list(twice.items())[:10]}"
    missing = [rid for rid in load.answered if rid not in on_topic]
    assert not missing, f"answered but not on the outputs topic: {missing[:10]}"


def test_adding_and_removing_workers_under_load_fails_no_request(cluster: Serve) -> None:
    assert cluster.proc is not None
    with Load(cluster) as load:
        grow_while_loaded(load, 0)
        os.kill(cluster.proc.pid, signal.SIGTTIN)  # a third worker joins: a third of the units move to it
        status = settle(
            cluster, lambda st: len(st["workers"]) == 3 and all(w["units"] for w in st["workers"]), "3"
        )
        assert status["dataflow"] == {"formula": 3, "used": 3}
        grow_while_loaded(load, load.count())
        os.kill(cluster.proc.pid, signal.SIGTTOU)  # the newest leaves again, handing its units back first
        settle(cluster, lambda st: sum(1 for w in st["workers"] if w["units"]) == 2, "2")
        grow_while_loaded(load, load.count())
    check_every_answer(cluster, load)
    # drain-first: the worker that left handed over every unit it had taken (none just dropped)
    log = cluster.log_text()
    taken = set(re.findall(r"worker 2 INFO headrace\.node: unit (\S+) taken in", log))
    handed = set(re.findall(r"worker 2 INFO headrace\.node: unit (\S+) handed over in", log))
    assert taken and taken == handed, f"taken {sorted(taken)}, handed over {sorted(handed)}"


def test_changing_the_multiplier_under_load_fails_no_request(cluster: Serve) -> None:
    with Load(cluster) as load:
        grow_while_loaded(load, 0)
        control(cluster, "sharding", "set", "--max-shard-count-multiplier", "1")
        status = settle(cluster, lambda st: st["shards"] == 1, "multiplier 1")
        pipeline = json.loads(control(cluster, "pipeline", "status", "demo", "-o", "json"))
        assert pipeline["workersUsed"] == 1
        assert status["dataflow"]["formula"] == 1  # min(2 workers, 1 pipeline x 1)
        grow_while_loaded(load, load.count())  # calls reaching the other worker are forwarded
        control(cluster, "sharding", "set", "--max-shard-count-multiplier", "0")
        settle(
            cluster, lambda st: st["shards"] == 8 and sum(1 for w in st["workers"] if w["units"]) == 2, "0"
        )
        grow_while_loaded(load, load.count())
    check_every_answer(cluster, load)


def test_changing_the_multiplier_back_and_forth_under_load_fails_no_request(cluster: Serve) -> None:
    """Every change crosses units both ways on every partition, so each worker takes units on
    partitions it already reads for others: the takes that once skipped a record (an old copy of
    the partition, still queued, moved the unit past what the rewind delivered again).
    $HEADRACE_TEST_MULTIPLIER_CHANGES (default 6) makes it a stress run."""
    with Load(cluster) as load:
        grow_while_loaded(load, 0)
        for change in range(int(os.environ.get("HEADRACE_TEST_MULTIPLIER_CHANGES", "6"))):
            multiplier = "1" if change % 2 == 0 else "0"
            control(cluster, "sharding", "set", "--max-shard-count-multiplier", multiplier)
            settle(cluster, lambda st, m=multiplier: st["shards"] == (1 if m == "1" else 8), multiplier)
            grow_while_loaded(load, load.count(), more=60)
    check_every_answer(cluster, load)


def test_loading_and_unloading_pipelines_under_load_fails_no_request(cluster: Serve, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: other\n"
        "spec:\n  steps:\n  - name: echo\n  output:\n    steps: [echo]\n"
    )
    with Load(cluster) as load:
        for _ in range(3):
            grow_while_loaded(load, load.count(), more=80)
            control(cluster, "pipeline", "load", "-f", str(other))
            control(cluster, "pipeline", "status", "other", "-w", "PipelineReady", "--timeout", "60")
            grow_while_loaded(load, load.count(), more=80)
            control(cluster, "pipeline", "unload", "other")
        grow_while_loaded(load, load.count(), more=80)
    check_every_answer(cluster, load)


def test_a_worker_killed_outright_leaves_no_answer_written_twice(cluster: Serve) -> None:
    """Async requests into demo, whose partitions (multiplier 1) are all on one worker while a step's
    model is served by the other: that one is killed outright mid-load. Its successor calls the model
    again for the records since the last commit, writing those answers twice to the model's outputs
    topic, and demo's worker takes each once: its outputs topic has every request's answer once."""
    control(cluster, "sharding", "set", "--max-shard-count-multiplier", "1")
    settle(cluster, lambda st: st["shards"] == 1 and st["dataflow"]["used"] == 1, "multiplier 1")
    deadline = time.monotonic() + 30
    while True:  # the table the workers serve by (written once they take it)
        owners = {unit: route.get("owner") for unit, route in cached_routes(cluster)["units"].items()}
        demo = {w for u, w in owners.items() if u.startswith("pipeline:demo:")}
        if len(demo) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [kept] = demo
    slots = {f"modelgw:{slot_of(m, 100)}:" for m in ("echo", "sum")}
    # a worker holds at most two of the three resources' shares: the other holds a step's model
    [victim] = {w for u, w in owners.items() if w != kept and any(u.startswith(s) for s in slots)}
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 1})
    sent: list[str] = []

    def send(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rid = f"kill-{len(sent)}-{uuid.uuid4().hex[:8]}"
            req = pb2.ModelInferRequest(model_name="demo", id=rid)
            req.inputs.add(name="x", datatype="INT64", shape=[1, 2]).contents.int64_contents.extend([1, 2])
            partition = len(sent) % 8
            producer.produce(
                "seldon.default.pipeline.demo.inputs",
                req.SerializeToString(),
                key=f"{partition}.demo.{rid}",
                partition=partition,
                headers=[("pipeline", b"demo"), ("x-request-id", rid.encode())],
            )
            sent.append(rid)
            producer.poll(0)
            time.sleep(0.004)

    try:
        send(2.0)
        pid = children(cluster)[f"worker {victim.rsplit('/', 1)[1]}"]
        os.kill(pid, signal.SIGKILL)  # no drain, no handover: what it had not committed is handled again
        send(2.0)
        assert producer.flush(10) == 0
    finally:
        producer.close()
    deadline = time.monotonic() + 90
    on_topic = answers_on_topic(cluster)
    while any(rid not in on_topic for rid in sent) and time.monotonic() < deadline:
        time.sleep(1.0)
        on_topic = answers_on_topic(cluster)
    missing = [rid for rid in sent if rid not in on_topic]
    assert not missing, f"{len(missing)} of {len(sent)} never answered: {missing[:5]}\n{cluster.log_text()}"
    twice = {rid: n for rid, n in on_topic.items() if n > 1}
    assert not twice, f"answers written more than once: {list(twice.items())[:10]}"
    # the replay did happen: the victim's model has answers written twice on its own topic
    model = next(m for m in ("echo", "sum") if owners[f"modelgw:{slot_of(m, 100)}:0"] == victim)
    answered = answers_on_topic(cluster, f"seldon.default.model.{model}.outputs")
    ours = set(sent)
    assert any(n > 1 for rid, n in answered.items() if rid in ours), "nothing was handled again"


def cached_routes(s: Serve) -> dict:
    routes: dict = json.loads((s.data_dir / "run" / "routes.json").read_text())
    return routes

# headrace: `make run` and `make test` do all the set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=

KAFKA_POM := engine/kafka/pom.xml
KAFKA_LIBS := $(VENV)/kafka-libs
KAFKA_STAMP := $(KAFKA_LIBS)/.stamp

DIST_DIR ?= dist
DIST_BUILD ?= build/pyz
DIST := $(DIST_DIR)/headrace.pyz

.PHONY: install run test test-tansu lint fmt bench bench-models bench-pipelines bench-sharding bench-overhead loadtest clean kafka-jars dist proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) $(KAFKA_STAMP)

## The embedded Apache Kafka broker's jars, from Maven Central (found at <venv>/kafka-libs).
$(KAFKA_STAMP): $(KAFKA_POM)
	rm -rf $(KAFKA_LIBS)
	mvn -q -B -f $(KAFKA_POM) dependency:copy-dependencies -DoutputDirectory=$(abspath $(KAFKA_LIBS)) -DincludeScope=runtime
	touch $(KAFKA_STAMP)

kafka-jars: $(KAFKA_STAMP)

## One file: dist/headrace.pyz (shiv) runs `python3.11 dist/headrace.pyz serve` on a Linux x86_64 machine
## with only Python 3.11: every dependency's wheel and the Kafka broker's jars are inside (the
## embedded Kafka needs Java 17+ there; else --embedded-broker none or --kafka-bootstrap).
dist: install
	rm -rf $(DIST_BUILD) build/lib  # setuptools would put stale files of build/lib in the wheel
	$(BIN)/pip install -q --no-compile --target $(DIST_BUILD)/site .
	rm -rf $(DIST_BUILD)/site/bin
	mkdir -p $(DIST_BUILD)/site/headrace/engine/kafka/kafka-libs $(DIST_DIR)
	cp $(KAFKA_LIBS)/*.jar $(DIST_BUILD)/site/headrace/engine/kafka/kafka-libs/
	$(BIN)/shiv --site-packages $(DIST_BUILD)/site -e headrace.cli:main -p '/usr/bin/env python3.11' -o $(DIST)
	rm -rf $(DIST_BUILD)
## The Python modules of Seldon's scheduler API (engine/scheduler/seldon/scheduler.proto), committed;
## tests/unit/test_seldon_proto.py checks that they match the .proto.
SELDON_PROTO := headrace/engine/scheduler/seldon/scheduler.proto
proto: install
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src $(SELDON_PROTO)

## Start the server with the sample models (echo, sum) and pipeline (demo: echo then sum) loaded:
## REST 127.0.0.1:9000, gRPC 9500, control 9004, embedded Kafka 9092.
run: install
	$(BIN)/headrace serve --load config/samples/models --load config/samples/pipelines $(RUN_ARGS)

test: install
	$(BIN)/pytest -q

## The pipeline smoke set on the zero-JVM embedded broker (Tansu), so the fallback keeps working:
## 1-3 step chains over REST, gRPC/tritonclient, the async topic path, a model that raises, an unknown
## pipeline, readiness, concurrent requests (and the other tests these words select), with hops in
## memory and through the broker. HEADRACE_TEST_BROKER makes tests/support.py's Serve run
## `--embedded-broker tansu`; the pipelines' fixture fails unless the broker process is the tansu
## binary, and the run's summary names it. Nothing is left out for Tansu's sake: the whole of
## test_pipelines.py passes on it too (53 tests, ~3 min on 2 cores against ~45 s for this set).
test-tansu: install
	HEADRACE_TEST_BROKER=tansu $(BIN)/pytest -q tests/e2e/test_pipelines.py \
		-k "chains or readiness or error or grpc or async or unknown or concurrent"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Benchmarks: every suite below, one after the other (BENCH_ARGS goes to each but the overhead one).
bench: bench-models bench-pipelines bench-sharding bench-overhead

## Models: headrace against MLServer, Triton and the REST and gRPC floors (about 20 minutes).
bench-models: install
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

## Pipelines: 1- to 5-step chains, a diamond, batching, 4 MiB, against a Triton ensemble and Ray Serve.
bench-pipelines: install
	$(BIN)/python -m loadtests.bench.pipelines $(BENCH_ARGS)

## Sharding: simulated placement of 100 x 16 workers; p99 while workers join and leave under load.
bench-sharding: install
	$(BIN)/python -m loadtests.bench.sharding $(BENCH_ARGS)

## Recording's cost: this checkout with metrics on and off against the last commit without them.
OVERHEAD_ARGS ?= --base 637f01a --rounds 3
bench-overhead: install
	$(BIN)/python -m loadtests.bench.overhead --metrics-off $(OVERHEAD_ARGS)

## A locust scenario, headless, against a running server (REST at TARGET, gRPC :9500, control :9004 on
## its host); prints requests, failures, RPS and p50/p90/p99 per request type; fails if any request did.
## Scenarios: rest_model grpc_model pipeline mixed load_unload. More options: LOADTEST_ARGS="--help".
SCENARIO ?= rest_model
TARGET ?= 127.0.0.1
USERS ?= 10
SPAWN_RATE ?= $(USERS)
DURATION ?= 30s
loadtest: install
	$(BIN)/python -m loadtests.locust $(SCENARIO) --target $(TARGET) --users $(USERS) \
		--spawn-rate $(SPAWN_RATE) --run-time $(DURATION) $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .headrace .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info

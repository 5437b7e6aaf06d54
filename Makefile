# headrace: `make run` and `make test` do all the set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=

KAFKA_POM := engine/kafka/pom.xml
KAFKA_LIBS := $(VENV)/kafka-libs
KAFKA_STAMP := $(KAFKA_LIBS)/.stamp

.PHONY: install run test test-tansu lint fmt bench clean kafka-jars proto

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

## The pipeline smoke set on the zero-JVM embedded broker (Tansu), so the fallback keeps working.
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

## Benchmarks: headrace against MLServer, Triton and a raw uvloop+httptools floor, in one run.
bench: install
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

bench-pipelines: install
	$(BIN)/python -m loadtests.bench.pipelines $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .headrace .pytest_cache .mypy_cache .ruff_cache build *.egg-info

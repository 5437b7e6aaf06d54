# headrace: `make run` and `make test` do all the set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=

.PHONY: install run test lint fmt bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the server with the sample models (echo, sum) loaded, on 127.0.0.1:9000 (REST) / 9500 (gRPC).
run: install
	$(BIN)/headrace serve --load config/samples/models $(RUN_ARGS)

test: install
	$(BIN)/pytest -q

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

clean:
	rm -rf $(VENV) .headrace .pytest_cache .mypy_cache .ruff_cache build *.egg-info

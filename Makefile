# `make run`: set up and serve sessionary on the embedded SQLite default (http://127.0.0.1:8000).
# `make test`: set up and run the whole test suite (starts a local Redis if none answers).
# `make bench`: the benchmarks at full size; `make bench-smoke`: each at a CI size (seconds).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := src tests benchmarks

.PHONY: run test lint bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sessionary serve

test: $(STAMP)
	scripts/ensure-redis
	scripts/ensure-postgres
	scripts/ensure-clickhouse
	scripts/ensure-rabbitmq
	scripts/ensure-chromium
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

bench: $(STAMP)
	scripts/ensure-redis
	scripts/ensure-postgres
	scripts/ensure-clickhouse
	scripts/ensure-rabbitmq
	scripts/ensure-wrk
	$(BIN)/python benchmarks/store_ops.py
	$(BIN)/python benchmarks/middleware.py
	$(BIN)/python benchmarks/runs.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/analytics_parts.py
	$(BIN)/python benchmarks/analytics_stress.py
	$(BIN)/python benchmarks/track_http.py
	$(BIN)/python benchmarks/serve_workers.py
	$(BIN)/python benchmarks/edge.py
	$(BIN)/python benchmarks/handoff.py
	$(BIN)/python benchmarks/session_limits.py
	$(BIN)/python benchmarks/run_dispatch.py
	$(BIN)/python benchmarks/tracing.py

# every benchmark at its smoke size (`--smoke`, seconds each), as CI runs them
bench-smoke: $(STAMP)
	scripts/ensure-redis
	scripts/ensure-postgres
	scripts/ensure-clickhouse
	scripts/ensure-rabbitmq
	$(BIN)/pytest benchmarks/test_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

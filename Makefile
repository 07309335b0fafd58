# One entry point per routine. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install deps demo test lint typecheck unit bench clean

$(BIN)/tickvault: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/tickvault

install: $(BIN)/tickvault

demo: install
	$(BIN)/tickvault demo

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

# The servers the tests start themselves (Debian packages, QuestDB and Kafka jars); idempotent.
deps:
	bash scripts/ci-deps.sh

unit: install deps
	$(BIN)/pytest -q

test: lint typecheck unit

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/vs_script.py
	$(BIN)/python bench/cryptofeed_redis.py
	$(BIN)/python bench/latency.py --seconds 15 --warmup 5
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

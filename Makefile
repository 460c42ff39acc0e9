# Two commands do all the set-up on a fresh machine with Python >= 3.10:
#   make demo   the main job (creates .venv, installs segprune, runs it)
#   make test   the test suite (same environment; slow and GPU tests are skipped)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segprune flops --preset llava-1.5-7b-336
	$(BIN)/segprune flops --preset llava-1.5-7b-336 --method fastv --layer 2 --keep-ratio 0.25
	$(BIN)/segprune flops --preset llava-1.5-7b-336 --method pdrop --layers 8,16,24 --ratio 0.5

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

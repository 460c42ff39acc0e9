# Two commands do all the set-up on a fresh machine with Python >= 3.10:
#   make demo   the main job (creates .venv, installs segprune, runs it)
#   make test   the test suite (same environment; slow and GPU tests are skipped)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The two ends of the supported torch/transformers range, as pip constraint files. PIP_CONSTRAINT
# replaces any machine-wide constraint, so each environment gets exactly the versions CI tests.
NEWEST := .ci/newest.txt
OLDEST := .ci/oldest.txt
OLD_VENV := .venv-oldest
OLD_STAMP := $(OLD_VENV)/.installed

.PHONY: demo test test-oldest lint clean

$(STAMP): pyproject.toml $(NEWEST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=$(NEWEST) $(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python .ci/check_versions.py $(NEWEST)
	touch $(STAMP)

$(OLD_STAMP): pyproject.toml $(OLDEST)
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=$(OLDEST) $(OLD_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(OLD_VENV)/bin/python .ci/check_versions.py $(OLDEST)
	touch $(OLD_STAMP)

demo: $(STAMP)
	$(BIN)/segprune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The oldest supported versions, in an environment of their own: the code that meets transformers.
test-oldest: $(OLD_STAMP)
	$(OLD_VENV)/bin/python -m pytest -q -m "not slow and not gpu" \
		tests/patch tests/methods tests/models tests/test_graph.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks .ci
	$(BIN)/ruff format --check src tests benchmarks .ci

clean:
	rm -rf $(VENV) $(OLD_VENV) build src/*.egg-info .pytest_cache .ruff_cache

# Two commands do all the set-up on a fresh machine with Python >= 3.10:
#   make demo   the main job (creates .venv, installs segprune, runs it)
#   make test   the test suite (same environment; slow and GPU tests are skipped)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-oldest lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segprune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The oldest transformers we support (the GPU machine's), side by side with the newest in .venv.
OLDEST_TRANSFORMERS := 5.17.0
test-oldest: $(STAMP)
	test -d .compat/transformers-$(OLDEST_TRANSFORMERS) || $(BIN)/python -m pip install --quiet \
		--target .compat/transformers-$(OLDEST_TRANSFORMERS) transformers==$(OLDEST_TRANSFORMERS)
	PYTHONPATH=.compat/transformers-$(OLDEST_TRANSFORMERS) $(BIN)/python -c \
		"import transformers; assert transformers.__version__ == '$(OLDEST_TRANSFORMERS)', transformers.__version__"
	PYTHONPATH=.compat/transformers-$(OLDEST_TRANSFORMERS) $(BIN)/python -m pytest -q -m "not slow and not gpu" tests/patch tests/methods tests/test_graph.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .compat build src/*.egg-info .pytest_cache .ruff_cache

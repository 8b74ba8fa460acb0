# The door to the project: `make run`, `make test`, `make lint`, `make proto`, `make bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/gpulet/v1/*.proto)
GEN    := client

.PHONY: venv proto proto-check lint test run bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Regenerates the committed stubs in client/gpulet/v1 from protos/.
proto: $(STAMP)
	$(BIN)/python tools/protogen.py --out $(GEN)

# Fails when the committed stubs differ from what `make proto` would write.
proto-check: $(STAMP)
	$(BIN)/python tools/protogen.py --check $(GEN)

lint: $(STAMP) proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

test: $(STAMP)
	$(BIN)/python -m pytest

# Runs the daemon in the foreground on its embedded defaults (built-in profiles, example
# registry). Without a GPU it auto-detects `development`; try GPULET_SIMULATED_GPUS=16384.
run: $(STAMP)
	$(BIN)/gpuletd $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Set-up and everyday commands. `make run` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first, so the project's torch range installs nothing more.
# Elsewhere, point pip at a CPU wheel index (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL) before `make`.
TORCH ?= torch==2.13.0
EXTRAS ?= cpu,predict,reports,parquet,postgres,gpu,dev
MODEL ?= mobilenet_v2
RUNTIMES ?= onnxruntime,torch
PYTEST_ARGS ?=

.PHONY: setup run test overhead clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

run: setup
	$(BIN)/bench run --device cpu --runtime $(RUNTIMES) --model $(MODEL) --batch 1

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

overhead: setup
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .costmeter .pytest_cache

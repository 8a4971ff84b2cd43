# Set-up and everyday commands. `make run` and `make test` create the environments on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first, so the project's torch range installs nothing more.
# Elsewhere, point pip at a CPU wheel index (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL) before `make`.
TORCH ?= torch==2.13.0
EXTRAS ?= cpu,predict,reports,parquet,postgres,gpu,nas,dev
# The test suite also runs every edge runtime for real, and the device farm on a local Ray cluster.
TEST_EXTRAS ?= $(EXTRAS),edge,tvm,farm
LITERT_VENV ?= .venv-litert
MODEL ?= mobilenet_v2
RUNTIMES ?= onnxruntime,torch
PYTEST_ARGS ?=
PIN := $(VENV)/torch-pin.txt

.PHONY: setup setup-test run test test-all overhead runtimes clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	echo "$(TORCH)" > $(PIN)
	$(BIN)/python -m pip install --quiet -c $(PIN) -e ".[$(EXTRAS)]"
	touch $@

# The torch -> .tflite converter (litert-torch) in its own environment; costmeter finds it beside .venv.
$(LITERT_VENV)/.setup-done:
	$(PYTHON) -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LITERT_VENV)/bin/python -m pip install --quiet "$(TORCH)" numpy
	echo "$(TORCH)" > $(LITERT_VENV)/torch-pin.txt
	$(LITERT_VENV)/bin/python -m pip install --quiet -c $(LITERT_VENV)/torch-pin.txt litert-torch
	touch $@

$(VENV)/.setup-test-done: $(VENV)/.setup-done $(LITERT_VENV)/.setup-done
	$(BIN)/python -m pip install --quiet -c $(PIN) -e ".[$(TEST_EXTRAS)]"
	touch $@

setup-test: $(VENV)/.setup-test-done

run: setup
	$(BIN)/bench run --device cpu --runtime $(RUNTIMES) --model $(MODEL) --batch 1

# The default run leaves out the tests marked slow (under 15 minutes on 2 CPUs); test-all runs them too (CI).
test: setup-test
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

overhead: setup
	$(BIN)/python benchmarks/overhead.py

runtimes: setup-test
	$(BIN)/python benchmarks/runtimes.py

clean:
	rm -rf $(VENV) $(LITERT_VENV) .costmeter .pytest_cache

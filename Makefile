# First contact: `make demo` runs the CPU demo, `make test` the README's test
# command. Both first set up the environment with tools/setup_env.sh (the
# script .ci/run uses too), which skips what is already installed.
#
# Settings: VENV (default: the active virtual environment, else .venv),
# PYTHON (creates a new one; default python3), TORCH_SPEC / TORCH_INDEX_URL
# (which torch + torchvision pair to install; README, "Choosing a CUDA
# build"), FORCE=1 (redo the set-up), DEMO (fundus or prostate).

PYTHON ?= python3
VENV ?= $(or $(VIRTUAL_ENV),.venv)
TORCH_SPEC ?=
TORCH_INDEX_URL ?=
FORCE ?= 0
DEMO ?= fundus

PY := $(VENV)/bin/python

.PHONY: help env demo test lint clean distclean

help:
	@echo 'make demo       set up $(VENV), then python tools/demo.py $(DEMO)'
	@echo 'make test       set up $(VENV), then python -m pytest tests -q'
	@echo 'make env        only the set-up (tools/setup_env.sh)'
	@echo 'make lint       ruff format --check + ruff check'
	@echo 'make clean      remove demo data, work_dirs, results, preds and caches'
	@echo 'make distclean  clean, and remove .venv'
	@echo ''
	@echo 'settings (make VAR=value TARGET):'
	@echo '  VENV=DIR            environment to use (default: the active one, else .venv)'
	@echo '  PYTHON=python3.X    interpreter for a new environment (default python3)'
	@echo '  TORCH_SPEC=...      torch + torchvision to install (README, "Choosing a CUDA build")'
	@echo '  TORCH_INDEX_URL=... the index to install them from'
	@echo '  DEMO=prostate       the demo to run (default fundus)'
	@echo '  FORCE=1             redo the set-up'

env:
	PYTHON='$(PYTHON)' VENV='$(VENV)' TORCH_SPEC='$(TORCH_SPEC)' \
	TORCH_INDEX_URL='$(TORCH_INDEX_URL)' FORCE='$(FORCE)' \
	bash tools/setup_env.sh

demo: env
	$(PY) tools/demo.py $(DEMO)

test: env
	$(PY) -m pytest tests -q

lint: env
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

clean:
	rm -rf demo_data work_dirs results preds .pytest_cache .ruff_cache
	find mmseg_dfq tests tools configs -name __pycache__ -type d -prune \
		-exec rm -rf {} +

distclean: clean
	rm -rf .venv

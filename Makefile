# tokenprune-repro: every table and figure has a target here. SCALE=toy|mini|paper (default toy).
# The virtual environment lives in .venv; `make setup` creates it (idempotent, re-runs when pyproject.toml changes).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= toy
export PYTHONHASHSEED := 0

.PHONY: setup test test-all flops-tables bench-reduction table1 tables figures all clean-cache help

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --user --name tokenprune-repro >/dev/null 2>&1 || true
	@touch $@

setup: $(VENV)/.installed  ## create .venv and install the project (CPU torch)

test: setup  ## fast test suite (what CI runs)
	$(PY) -m pytest -q -m "not slow"

test-all: setup  ## the whole suite, slow end-to-end runs included
	$(PY) -m pytest -q

flops-tables: setup  ## FLOPs / token / memory numbers of every paper, ours beside theirs -> figures/<paper>/flops.*
	$(PY) -m common.flops_tables

bench-reduction: setup  ## prefill wall time, keep-all vs FastV 33/22/11% on a small LLaVA-architecture model
	$(PY) -m common.bench_reduction

# Aggregates: extended as each paper's tables land.
table1: flops-tables  ## Table 1 of every paper that has one ready (for now: the FLOPs tables)
tables: flops-tables  ## every table
figures:  ## every figure
all: tables figures  ## everything

clean-cache:  ## drop cached evaluation results
	rm -rf .cache

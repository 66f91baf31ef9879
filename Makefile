# tprop_exp — every command sets up its own virtual environment on first use.
# `make demo` trains on the offline sample corpus; `make test` runs the tests.

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
PROFILE ?= sample
JOBS ?= 1
STAMP := $(BIN)/.tprop_exp-installed
RUN := $(PY) -m tprop_exp
REPORT := $(PY) -m tprop_exp.report

.PHONY: setup demo test test-all bench bench-scaling plan table1 table2 table3 figure methods all-tables clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(RUN) -m experiment=demo
	$(REPORT) sweeps/demo/sample --table demo --out results/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# Throughput against a bare PyTorch loop: results/bench/<size>.md (SIZE=gpu on a GPU).
SIZE ?= $(if $(shell $(PY) -c "import torch; print(torch.cuda.is_available() or '')" 2>/dev/null),gpu,cpu)
bench: $(STAMP)
	$(PY) scripts/bench.py --size $(SIZE)

bench-scaling: $(STAMP)
	$(PY) scripts/bench.py --size $(SIZE) --scaling

# Runs and estimated hours of a sweep on this device: make plan EXP=table1_main PROFILE=paper
EXP ?= demo
plan: $(STAMP)
	$(PY) -m tprop_exp.plan experiment=$(EXP) profile=$(PROFILE)

# The paper's tables: a sweep, then its report. PROFILE=paper for the real data on a GPU.
OUT = results$(if $(filter-out sample,$(PROFILE)),/$(PROFILE))
LAUNCHER = $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS))
table1: EXP = table1_main
table2: EXP = table2_regularization
table3: EXP = table3_minibatch
figure: EXP = figure_hidden
methods: EXP = methods

table1 table2 table3 figure methods: $(STAMP)
	$(RUN) -m experiment=$(EXP) profile=$(PROFILE) $(LAUNCHER)
	$(REPORT) sweeps/$(EXP)/$(PROFILE) --out $(OUT)

all-tables: table1 table2 table3 figure methods
	$(REPORT) $(foreach e,table1_main table2_regularization table3_minibatch figure_hidden methods,sweeps/$(e)/$(PROFILE)) --out $(OUT)

clean:
	rm -rf runs sweeps outputs multirun

# Two commands set everything up on a fresh machine: `make demo` and `make test` both create .venv and install
# the package with its test extras when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nnunet-sparseattn-installed
MSD    ?=

.PHONY: install lint test test-fast test-py312 demo bench-attention bench-speed bench-accuracy bench-memory bench-curves \
	clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing nnunet-sparseattn and nnU-Net into $(VENV) (first time: a few minutes, ~6 GB with torch)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# ruff (lint rules and the formatter's check) and mypy on the package, its tests and benchmarks, as configured in
# pyproject.toml (benchmarks checked inside unannotated functions too); the tests' reference-network script in a
# second mypy run (pyproject.toml says why)
LINTED := nnunet_sparseattn nnunet_sparseattn_autodiscovery.py tests benchmarks
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests/data/make_reference_networks.py

# OpenMP threads that spin while waiting cost up to 10x on 2 shared cores when the tests' nnU-Net subprocesses and
# the pytest process compete (measured: a 2.7 s training step took 25.9 s); passive waiting costs nothing here.
# Two pytest-xdist workers (TEST_WORKERS=1 runs one process): most end-to-end time is process start-up, file work and
# single-threaded Python, so two overlap well on 2 cores. A test module runs on one worker (--dist loadfile: its
# module-scoped fixtures build once; xdist_group marks do not group under pytest 9.2, whose node ids xdist cannot
# rename); prepared data and trained _debug models are shared by the workers (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST) --durations=30

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# The fresh-install tests under Python 3.12 as well (containers and GPU machines run it). The first run makes .venv312,
# a full install of our dependencies for 3.12 (minutes, several GB); PY312=/path/to/python3.12 if not on PATH.
PY312 ?= python3.12
test-py312: $(STAMP)
	@test -x .venv312/bin/python || ($(PY312) -m venv .venv312 && .venv312/bin/pip install -q --disable-pip-version-check .)
	NNUNET_SPARSEATTN_TEST_PY312_VENV=$(CURDIR)/.venv312 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q --durations=10 \
		tests/test_fresh_install.py

demo: $(STAMP)
	$(VENV)/bin/nnunet-sparseattn demo --work demo_work $(if $(MSD),--msd "$(MSD)")

bench-attention: $(STAMP)
	$(PY) -m benchmarks.attention

# One nnU-Net training step of stock nnU-Net and each of our networks on three real plans, side by side (CPU: batch
# capped at 2, the 128^3 plan at 1; ~1.5 h on 2 cores). BEFORE=<git ref> also times our networks as that commit built
# them, interleaved in the same rounds. Writes benchmarks/results/network-speed-cpu-eager.json and BENCHMARKS.md.
bench-speed: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.network_speed --plan-batch six_stage_128_3d=1 \
		--inference --inference-plans hippocampus_3d_fullres,isic2017_2d $(if $(BEFORE),--before $(BEFORE)) --update-docs

# BUDGET=cpu (default, ~1 h on 2 cores) or gpu (a CUDA machine); run again to resume a killed benchmark
bench-accuracy: $(STAMP)
	$(PY) -m benchmarks.accuracy --budget $(or $(BUDGET),cpu) --update-docs

# Training memory predicted for the GPU (fake CUDA tensors, fp16 autocast) per network and plan, with and without
# activation checkpointing, held against CPU measurements; writes benchmarks/results/training-memory.json and
# BENCHMARKS.md (~15 min on 2 busy cores, most of it the CPU measurements)
bench-memory: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.training_memory --update-docs

# Learning curves (issue 21): five trainers x two budgets x three datasets on the CPU, in pieces of at most ~1.5 h,
# ~13 h in all on 2 quiet cores; run again to resume (finished pieces are skipped). --dry-run lists pieces and hours.
bench-curves: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.curves --all --update-docs

clean-demo:
	rm -rf demo_work

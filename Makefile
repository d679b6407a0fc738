# The single entry point: `make generate sae evaluate` on a fresh machine, and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/default
# torch: the CPU build that lies on this machine's disk, installed only where the venv has
# no torch yet, so a user's CUDA build is kept.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
# the dev extra (pytest, ruff, ray) only for the targets that test or lint
DEV_STAMP := $(VENV)/.installed-dev-stamp
# SAELens, for the tests that load our export in the real library (SAELENS_TESTS): a side venv,
# since sae-lens brings transformer-lens, transformers and wandb (1.9 GB) that nothing else needs.
# Reused while it imports sae-lens at this version beside the pinned torch; CI moves it out of
# the clone to keep it between runs (.ci/run).
SAELENS_VERSION ?= 6.54.12
SAELENS_VENV ?= .venv-saelens
SAELENS_PY := $(SAELENS_VENV)/bin/python
TORCH_VERSION := $(patsubst torch==%,%,$(TORCH_PIN))
SAELENS_TESTS := tests/sae/test_saelens_interop.py::test_our_export_loads_in_saelens

GRID ?= evaluate/sweep/grids/example.json

.PHONY: install generate sae evaluate sweep paper test test-fast test-saelens saelens-venv lint bench \
	bench-long clean help
help:
	@echo "make generate sae evaluate   run the pipeline into $(RUN) (set RUN=runs/NAME)"
	@echo "make sweep GRID=FILE         a grid of runs, cached per point (SWEEP_ARGS=--backend ray)"
	@echo "make paper                   reproduce Toy Models of Superposition into runs/paper (~4 min on cpu)"
	@echo "make test                    the test suite (with test-saelens first)"
	@echo "make test-fast               the suite without the tests marked slow (under 30 s)"
	@echo "make test-saelens            our SAELens export loaded in sae-lens $(SAELENS_VERSION), in a side venv"
	@echo "make lint                    ruff (configured in pyproject.toml)"
	@echo "make bench                   benchmarks/ (speed ratios against references)"
	@echo "make bench-long              recovery targets (toy, rare tail, SAE sample efficiency) and the SynthSAEBench-like world, ~1 h"

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

install: $(STAMP)

generate: $(STAMP)
	$(PY) -m unsuperpose generate --run-dir $(RUN) $(GENERATE_ARGS)

sae: $(STAMP)
	$(PY) -m unsuperpose sae --run-dir $(RUN) $(SAE_ARGS)

evaluate: $(STAMP)
	$(PY) -m unsuperpose evaluate --run-dir $(RUN) $(EVALUATE_ARGS)

sweep: $(STAMP)
	$(PY) -m unsuperpose sweep $(GRID) $(SWEEP_ARGS)

paper: $(STAMP)
	$(PY) -m unsuperpose paper --out runs/paper $(PAPER_ARGS)

# torch first, from the CPU wheel on disk, so that sae-lens's torch>=2.6 pulls no CUDA build;
# the project (editable, so the side venv tests the checkout) is reinstalled on every call
saelens-venv:
	@if $(SAELENS_PY) -c "import sys, sae_lens, pytest; from importlib.metadata import version as v; \
	  sys.exit(v('sae-lens') != '$(SAELENS_VERSION)' or v('torch') != '$(TORCH_VERSION)+cpu')" \
	  2>/dev/null; then \
	  echo "$(SAELENS_VENV): sae-lens $(SAELENS_VERSION) already there"; \
	else \
	  echo "$(SAELENS_VENV): building (sae-lens $(SAELENS_VERSION), $(TORCH_PIN))" && \
	  rm -rf "$(SAELENS_VENV)" && $(PYTHON) -m venv "$(SAELENS_VENV)" && \
	  $(SAELENS_PY) -m pip install -q --upgrade pip && \
	  $(SAELENS_PY) -m pip install -q "$(TORCH_PIN)" && \
	  $(SAELENS_PY) -m pip install -q "sae-lens==$(SAELENS_VERSION)" pytest; \
	fi
	$(SAELENS_PY) -m pip install -q -e . "sae-lens==$(SAELENS_VERSION)" "$(TORCH_PIN)" pytest
	$(SAELENS_PY) -c "import torch, sae_lens; print('$(SAELENS_VENV): sae-lens', sae_lens.__version__, \
	  'torch', torch.__version__); assert torch.__version__ == '$(TORCH_VERSION)+cpu'"

# fails, rather than skips, where sae_lens cannot be imported
test-saelens: saelens-venv
	UNSUPERPOSE_REQUIRE_SAELENS=1 $(SAELENS_PY) -m pytest -q $(SAELENS_TESTS)

# test-saelens first, so that the suite's own summary closes the output; the suite leaves out
# the tests test-saelens ran, which only skip (or, in CI, fail) without sae-lens
test: $(DEV_STAMP) test-saelens
	$(PY) -m pytest -q --deselect $(SAELENS_TESTS) $(PYTEST_ARGS)

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow" --deselect $(SAELENS_TESTS) $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_omp.py
	$(PY) benchmarks/bench_saes.py
	$(PY) benchmarks/bench_dictionaries.py

# the recovery targets and the SynthSAEBench-like world: ~1 hour on one thread
bench-long: $(STAMP)
	$(PY) benchmarks/bench_recovery.py all
	$(PY) benchmarks/bench_worlds.py

# runs/default and the test caches; the side venvs (.venv-saelens, .venv-wheel) are kept
clean:
	rm -rf runs/default .pytest_cache

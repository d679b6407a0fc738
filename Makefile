# The single entry point: `make generate sae evaluate` on a fresh machine, and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/default
# torch: the CPU build that lies on this machine's disk, installed only where the venv has
# no torch yet, so a user's CUDA build is kept.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

GRID ?= evaluate/sweep/grids/example.json

.PHONY: install generate sae evaluate sweep paper test test-fast lint bench bench-long clean help
help:
	@echo "make generate sae evaluate   run the pipeline into $(RUN) (set RUN=runs/NAME)"
	@echo "make sweep GRID=FILE         a grid of runs, cached per point (SWEEP_ARGS=--backend ray)"
	@echo "make paper                   reproduce Toy Models of Superposition into runs/paper (~4 min on cpu)"
	@echo "make test                    the test suite"
	@echo "make test-fast               the suite without the tests marked slow (under 30 s)"
	@echo "make lint                    ruff (configured in pyproject.toml)"
	@echo "make bench                   benchmarks/ (speed ratios against references)"
	@echo "make bench-long              recovery targets (toy, rare tail, SAE sample efficiency) and the SynthSAEBench-like world, ~1 h"

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

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

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
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

clean:
	rm -rf runs/default .pytest_cache

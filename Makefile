# Two front-door targets: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ZOO    := $(VENV)/bin/zoo
PRESET ?= quick
# The suite runs on two pytest-xdist workers of one torch thread each (tests/conftest.py), whole
# files per worker (module fixtures are built once). When that was chosen: 8.4 -> 5.5 minutes on the
# 2-core machine; the suite has grown since: 615 tests in 6 min 55 s there (2026-11-28).
TEST_WORKERS ?= 2

.PHONY: demo test venv clean gpu-check

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(ZOO) data fetch
	$(ZOO) run zoo --preset $(PRESET) --out runs/zoo
	@echo "results: runs/zoo/report.md and runs/zoo/table.csv"

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# On a machine with one GPU, by hand (never CI): no venv, no network; that machine's own torch.
# Bring the MNIST cache along and point ZOO_DATA at it. Summary: docs/results/gpu-check.md.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?= --device cuda
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS) --summary docs/results/gpu-check.md

clean:
	rm -rf $(VENV) runs .pytest_cache

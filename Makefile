# Two front-door targets: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ZOO    := $(VENV)/bin/zoo
PRESET ?= quick

.PHONY: demo test venv clean

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
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache

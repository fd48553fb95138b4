# Every target sets up what it needs: on a fresh clone `make test` alone installs and runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
ROWS ?= 20000
SEED ?= 42
DATA ?= data

export SAGEMAKER_SUPPRESS_V2_WARNING := 1

.PHONY: install test lint data

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)  ## create .venv and install the project with its dev tools

test: $(INSTALLED)  ## run the test suite
	$(BIN)/pytest

lint: $(INSTALLED)  ## ruff
	$(BIN)/ruff check .

data: $(INSTALLED)  ## synthetic claims.csv and customers.csv in $(DATA)/ (ROWS, SEED)
	$(BIN)/fraud-pipeline data --rows $(ROWS) --seed $(SEED) --out $(DATA)

# Every target sets up what it needs: on a fresh clone `make test` alone installs and runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CLI := $(BIN)/fraud-pipeline
ROWS ?= 20000
SEED ?= 42
DATA ?= data
PARAMS ?=

.PHONY: install test lint data definition upsert start schedule status deploy-infra

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
	$(CLI) data --rows $(ROWS) --seed $(SEED) --out $(DATA)

definition: $(INSTALLED)  ## the pipeline definition JSON, offline, to build/pipeline-definition.json
	$(CLI) definition --output build/pipeline-definition.json

upsert: $(INSTALLED)  ## create or update the pipeline in your AWS account (SAGEMAKER_ROLE_ARN, SAGEMAKER_BUCKET, FRAUD_IMAGE_URI)
	$(CLI) upsert

start: $(INSTALLED)  ## start an execution and follow it (PARAMS="--param MinAuc=0.8")
	$(CLI) start --wait $(PARAMS)

schedule: $(INSTALLED)  ## create or update (enabled) the EventBridge schedule (SCHEDULER_ROLE_ARN, SCHEDULE_DLQ_ARN)
	$(CLI) schedule

status: $(INSTALLED)  ## the latest executions and their steps
	$(CLI) status

deploy-infra: $(INSTALLED)  ## the roles, the schedule DLQ and the approved-model -> endpoint function (AWS); prints the exports
	$(BIN)/python deploy_lambda/deploy_infra.py

# The project image (docker/). By default on the offline base made with debootstrap (no registry needed;
# root and a Debian mirror are); where a registry is reachable: make image BASE_IMAGE=python:3.11-slim.
# CA_BUNDLE goes into the offline base so pip trusts a TLS-inspecting proxy (CA_BUNDLE= to leave it out).
# PLATFORM: what the instances run (ml.m5, ml.c5: linux/amd64), whatever this host is.
OFFLINE_BASE := fraud-detection-base:bookworm
BASE_IMAGE ?= $(OFFLINE_BASE)
IMAGE ?= fraud-detection:latest
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
PLATFORM ?= linux/amd64

.PHONY: image local
image:  ## build the project image $(IMAGE) (BASE_IMAGE, CA_BUNDLE, PLATFORM); installs and starts Docker if needed
	bash docker/ensure_engine.sh
ifeq ($(BASE_IMAGE),$(OFFLINE_BASE))
	bash docker/build_base_image.sh --name $(BASE_IMAGE) --platform $(PLATFORM) $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE))
endif
	docker build --platform $(PLATFORM) --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) docker/

CLAIMS ?=
CUSTOMERS ?=
local: $(INSTALLED)  ## the whole pipeline on this machine in containers (ROWS, PARAMS, CLAIMS + CUSTOMERS)
	$(CLI) local --rows $(ROWS) $(if $(CLAIMS),--claims $(CLAIMS) --customers $(CUSTOMERS)) $(PARAMS)

# The README's two commands: `make pipeline` and `make test`. Both set up .venv on a fresh machine.
SHELL := /bin/bash
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export DO_NOT_TRACK := 1

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc runs the stages' `msgfm ...` commands through the shell: the venv's commands must be on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup pipeline study test test-slow test-all lint format bench lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

## Run the whole pipeline on the embedded default (the simulated world).
pipeline: setup
	$(BIN)/dvc repro

## The study profile (params-study.yaml over params.yaml, docs/results.md) as the DVC experiment `study`, run in
## a temporary copy (the workspace keeps the default run); its report is copied to docs/study-report.md.
study: setup
	args=$$(mktemp); trap 'rm -f "$$args"' EXIT; \
	$(BIN)/python scripts/study_overrides.py params-study.yaml > "$$args" && \
	time xargs -0 -a "$$args" $(BIN)/dvc exp run --temp -f -n study
	sha=$$(git rev-parse HEAD); git show "refs/exps/$${sha:0:2}/$${sha:2}/study:data/reports/report.md" > docs/study-report.md

## Lint, then the test suite (without the tests marked slow).
test: setup lint
	$(BIN)/pytest -m "not slow"

## Only the tests marked slow (kill-and-resume, cluster joining, whole-pipeline runs).
test-slow: setup
	$(BIN)/pytest -m slow

## Every test, slow ones included.
test-all: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Speed and memory benchmarks; each prints JSON.
bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## Refresh requirements.lock from the current environment.
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^msgfm' > requirements.lock

clean:
	rm -rf $(VENV)

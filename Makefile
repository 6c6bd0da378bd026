# trashsorter - the README's quick start is `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
STAMP := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: install demo test test-fast lint format reliability bench build validate clean security

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trashsorter needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

## The whole pipeline offline: local AWS endpoint, ingest, threshold, CPU training, package, local device.
demo: install
	$(BIN)/trashsorter demo

## Everything offline, the fast tests first (a failure there stops the run), then the slow ones
## (training, the tiny model, e2e on the embedded local stack); both in TEST_WORKERS processes.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: install
	$(PYTEST) -m "not slow"
	$(PYTEST) -m slow

## The edit loop: unit, integration (moto), reliability and the fast edge tests; no training, no e2e.
test-fast: install
	$(PYTEST) -m "not slow"

reliability: install
	$(BIN)/python -m pytest tests/reliability

$(SAM_VENV)/bin/sam:
	$(PY) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q aws-sam-cli

lint: install $(SAM_VENV)/bin/sam
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	$(SAM_VENV)/bin/sam validate --lint

## checkov on template.yaml; every skipped check is justified in .checkov.yaml and docs/security.md.
$(CHECKOV_VENV)/bin/checkov:
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q "checkov==3.3.30"

security: $(CHECKOV_VENV)/bin/checkov
	$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## sam build needs python3.12 on PATH; with pyenv: `pyenv install 3.12 && make build`.
build: $(SAM_VENV)/bin/sam
	PATH="$$(pyenv prefix 3.12 2>/dev/null || pyenv prefix 3.12.1 2>/dev/null || echo /nonexistent)/bin:$$PATH" \
	  $(SAM_VENV)/bin/sam build

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .trashsorter .pytest_cache .mypy_cache .ruff_cache

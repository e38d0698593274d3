# Set-up and checks. `make install` then `make test` is all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU wheel by default; GPU users: `make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`
# or `make install TORCH_SPEC=` to keep a torch already present in the venv.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-fast lint format clean

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install $(TORCH_SPEC); fi
	$(BIN)/python -m pip install -e '.[dev]'

test:
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast:
	$(BIN)/python -m pytest -m "not slow and not distributed" $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check conformer conformer_bench tests
	$(BIN)/ruff format --check conformer conformer_bench tests
	$(BIN)/mypy conformer_bench

format:
	$(BIN)/ruff check --fix conformer conformer_bench tests
	$(BIN)/ruff format conformer conformer_bench tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

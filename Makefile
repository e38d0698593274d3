# Set-up and checks. `make profile` and `make test` are all a newcomer needs: each creates or updates .venv
# on first use, then runs the main job or the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch pin; GPU users: `make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`
# or `make install TORCH_SPEC=` to keep a torch already present in the venv.
TORCH_PIN := torch==2.13.0
TORCH_SPEC ?= $(TORCH_PIN)
# Options for `make profile` (`ARGS="--variant small --format md"`; a later --variant wins) and for pytest.
ARGS ?=
PYTEST_ARGS ?=
# The GPU check runs from the source tree and installs nothing: the venv's python when there is one, else
# e.g. `make gpu-check PYTHON_BIN=python3` with a CUDA torch already installed (or `make install TORCH_SPEC=...`).
PYTHON_BIN ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

# The environment is installed once per dependency set: the stamp's name hashes pyproject.toml and the
# torch pin, so editing either reinstalls on the next call and every other call goes straight to the job.
# A TORCH_SPEC given to `make install` is kept: later calls do not reinstall the pin over it.
INSTALL_KEY := $(shell { cat pyproject.toml; printf '%s\n' '$(TORCH_PIN)'; } | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(INSTALL_KEY)
# Exits 1 with one line naming the version needed; %-formatting so that even Python 2 can say it.
CHECK_PYTHON := import sys; v = sys.version_info; sys.exit(0 if v[:2] >= (3, 11) else \
	"error: conformer-bench needs Python >= 3.11, but %s is %d.%d.%d; install a newer one and run make with \
	PYTHON=python3.11 (or newer)" % (sys.executable, v[0], v[1], v[2]))

.PHONY: install profile test test-fast lint typecheck format clean gpu-check

install:
	@rm -f $(VENV)/.installed-*
	@$(MAKE) --no-print-directory $(STAMP)

$(STAMP):
	@if [ ! -x $(BIN)/python ]; then \
		command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python >= 3.11 or run make with PYTHON=/path/to/python3.11" >&2; exit 1; }; \
		$(PYTHON) -c '$(CHECK_PYTHON)' && echo "$(PYTHON) -m venv $(VENV)" && $(PYTHON) -m venv $(VENV); \
	fi
	@$(BIN)/python -c '$(CHECK_PYTHON)' || { echo "(.venv was made by an older Python: make clean, then run make again)" >&2; exit 1; }
	$(BIN)/python -m pip install --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then echo "$(BIN)/python -m pip install $(TORCH_SPEC)"; $(BIN)/python -m pip install $(TORCH_SPEC); fi
	$(BIN)/python -m pip install -e '.[dev,deploy]'
	@rm -f $(VENV)/.installed-*
	@touch $@

profile: $(STAMP)
	$(BIN)/conformer-bench profile --variant base $(ARGS)

# Two pytest processes: the tests that load ONNX Runtime and OpenVINO run apart from the rest. With both
# libraries loaded into one long test process, a later test crashed the interpreter (SIGSEGV in
# PyObject_GetAttr) in 6 of 6 full runs on a Zen 4, and in none of the runs without them. Exit 5 (nothing
# selected, e.g. PYTEST_ARGS naming one file) is not a failure.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not native_backends" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m native_backends $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not distributed" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check conformer conformer_bench tests
	$(BIN)/ruff format --check conformer conformer_bench tests
	$(BIN)/mypy conformer conformer_bench
	@$(MAKE) --no-print-directory typecheck

# The modules every record kind and consumer builds on are checked under --strict (the modules they import
# lend their types; their own errors are lint's above).
STRICT_TYPED := conformer_bench/records conformer_bench/readers.py conformer_bench/tables.py conformer_bench/api.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict --follow-imports=silent $(STRICT_TYPED)

format: $(STAMP)
	$(BIN)/ruff check --fix conformer conformer_bench tests
	$(BIN)/ruff format conformer conformer_bench tests

gpu-check:
	$(PYTHON_BIN) scripts/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

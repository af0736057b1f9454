# Two commands: `make run` (set-up + main job on the bundled survey) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= results
PYTEST_ARGS ?=
# make test: one pytest worker per core (CI has 2), whole files per worker (their shared
# quick runs stay in one process), and the compilers' optimizers off: the fast tests' fits
# use tiny draws, so compiling dominates (NUMBA_OPT=0 for nutpie's numba code; PyTensor's
# cmodule__remove_gxx_opt drops g++'s -O3 for its C code). --no-loadscope-reorder keeps
# conftest's order (heaviest files first); xdist otherwise sorts files by test count and
# started the main job's quick run 6 minutes late. See README, Development.
TEST_WORKERS ?= 2

.PHONY: run test test-all lint setup clean

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/pari-bayes run --out $(OUT) --force

test: $(STAMP)
	NUMBA_OPT=0 PYTENSOR_FLAGS="cmodule__remove_gxx_opt=True,$(PYTENSOR_FLAGS)" \
		$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

clean:
	rm -rf $(VENV) results .pytest_cache

# Two commands: `make run` and `make test`. Both create or refresh .venv first;
# the stamp file makes a second call skip pip when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= tiny
RUN_DIR ?= runs/$(PROFILE)
ARGS ?=

.PHONY: run test test-fast bench venv clean-runs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from the pinned releases (see stack-notes.md), then the kit with its dev extras
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kit run --profile $(PROFILE) --run-dir $(RUN_DIR) $(ARGS)

# two pytest workers, one thread each (tests/conftest.py); a file's tests stay on one worker
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean-runs:
	rm -rf runs/

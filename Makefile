# One entry point for people and CI.  `make demo` and `make test` are the two commands.
#
# PY: the first Python 3.11 or newer among python3.13, python3.12, python3.11 and python3;
# `make PY=/path/to/python test` names another.  `make demo` installs flora-batch alone
# (its runtime dependencies); `make test` adds the test tools, pinned in requirements-dev.lock.
PY ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: demo test lint bench docs clean setup lock

setup: $(DEV)

$(RUNTIME): pyproject.toml
	@test -n "$(PY)" || { echo "Python 3.11+ is needed: none of python3.13, python3.12, python3.11, python3 is one (set PY=...)"; exit 2; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PY) is older than Python 3.11 (set PY=...)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(DEV): $(RUNTIME) requirements-dev.lock
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

demo: $(RUNTIME)
	$(BIN)/flora-batch run manifests/demo.yaml --demo

test: $(DEV)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(DEV)
	$(BIN)/ruff check flora_batch tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(DEV)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench

docs: $(RUNTIME)  # docs/cli.md from --help (tests/toolbox/test_toolbox_docs.py checks it)
	$(BIN)/python -m flora_batch.cli.docs > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

lock:  # requirements-dev.lock: what `make test` installs, from a fresh venv (README, Development)
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q '.[test]'
	{ echo "# The development environment (\`make test\`), pinned: \`make lock\` rewrites it."; \
	  .venv-lock/bin/pip freeze --exclude flora-batch; } > requirements-dev.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) build dist *.egg-info

# The README's two commands: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv lock demo demo-long test test-fast lint gpu-check slurm-up slurm-down chromium clean

# The venv installs requirements.lock: every package pinned and hashed (torch 2.14.1 / torchvision
# 0.29.1: this machine kind has these wheels on disk), then the project itself without resolving.
$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install -q --no-deps -e '.[test]'
	$(BIN)/pip check
	touch $@

# Re-resolve requirements.lock after a dependency change in pyproject.toml (then commit it).
lock: venv
	$(BIN)/python tools/lock.py

venv: $(BIN)/.installed

# PATH is exported by make, not written into the command: a checkout path with spaces or quotes
# never becomes shell syntax.
demo demo-long test gpu-check: export PATH := $(CURDIR)/$(BIN):$(PATH)

demo: venv
	$(BIN)/snakemake --profile cluster/local all

# The demo with a BCM that uses u (workflow/config/demo_long.yaml over config.yaml; docs/u_use.md).
# --configfile last: it takes every word after it as another config file.
demo-long: venv
	$(BIN)/snakemake --profile cluster/local all --configfile workflow/config/demo_long.yaml

# Everything, slow and slurm tests included. Starts the dev Slurm cluster when it can (root + apt).
test: venv lint chromium
	bash cluster/dev/with_slurm.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

# Quick loop for developers: no slow, no slurm.
test-fast: venv lint
	$(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

# One-shot GPU acceptance check, one table (under 8 minutes on one GPU); ARGS=--cpu for tiny CPU sizes.
gpu-check: venv
	$(BIN)/python -m bcmcore check gpu $(ARGS)

# Headless Chromium for the report test (tests/report_browser.py): the Debian package, installed as
# root with apt-get like the dev Slurm cluster. Elsewhere the test skips; under CI=true it must be there.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "chromium: apt-get install chromium (the report test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	elif [ "$${CI:-}" = true ]; then \
	  echo "chromium: CI=true but it cannot be installed here (needs root and apt-get)" >&2; exit 1; \
	else echo "chromium: not root or no apt-get; the report test will be skipped"; fi

# ruff (lint + format, line length 100, rules in pyproject.toml) and snakefmt for the workflow.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check workflow/Snakefile workflow/rules

slurm-up:
	bash cluster/dev/slurm_up.sh

slurm-down:
	bash cluster/dev/slurm_down.sh

clean:
	rm -rf $(VENV) .snakemake results/demo-ci

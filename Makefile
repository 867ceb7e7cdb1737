# sslcourse: one command runs the course (`make lab`), one runs the tests (`make test`).
#
# Both bootstrap a virtual environment in .venv the first time and reuse it afterwards:
# the stamp .venv/.installed is rebuilt only when pyproject.toml changes (pip then installs
# what changed, the environment itself is kept).
#
#   make lab       JupyterLab on notebooks/ (the student release)
#   make test      the whole pytest suite, listing the 25 slowest tests (PYTEST_ARGS="-m 'not slow'" for the quick part)
#   make smoke     run every solution notebook end to end with SSLCOURSE_FAST=1
#   make release   pin the Colab install to v<version>, regenerate notebooks/ from solutions/ (nbgrader, no gradebook)
#   make bench     run the benchmarks in bench/
#
# Every recipe puts .venv/bin first on PATH: nbgrader's gradebook shells out to `alembic`,
# and `jupyter`/`nbgrader` must be the environment's own.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

# JupyterLab refuses to run as root without --allow-root (containers, CI).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=
PYTEST_ARGS ?= --durations=25
# The packages a working environment must hold; an existing .venv without a stamp that
# already has them is adopted as it is instead of being reinstalled.
REQUIRED := sslcourse torch torchvision nbgrader jupyterlab nbclient pytest

.PHONY: help venv lab test smoke release bench

help:
	@sed -n '1,/^$$/p' $(MAKEFILE_LIST) | sed 's/^# \{0,1\}//'

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(VENV)/bin/python ]; then \
	    echo "Creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	@if [ ! -f $@ ] && $(VENV)/bin/python -c "import importlib.metadata as m; [m.version(p) for p in '$(REQUIRED)'.split()]" 2>/dev/null; then \
	    echo "Reusing the existing $(VENV)"; \
	else \
	    $(VENV)/bin/python -m pip install -e '.[dev]'; \
	fi
	@touch $@

# Lab runs from the repository root so that nbgrader's Validate button reads
# nbgrader_config.py; students see only notebooks/.
lab: $(STAMP)
	jupyter lab --ServerApp.root_dir=notebooks $(ALLOW_ROOT) $(LAB_ARGS)

test: $(STAMP)
	python -m pytest $(PYTEST_ARGS)

smoke: $(STAMP)
	python -m pytest -m slow tests/test_notebooks.py $(PYTEST_ARGS)

# First `python -m sslcourse.colab` pins every solution's Colab install to the tag v<version> (and the
# README badges), and asks Colab for a GPU (sslcourse/colab.py). `--no-db` keeps the gradebook out of
# it; a gradebook.db that was not there before is removed.
release: $(STAMP)
	@python -m sslcourse.colab || exit 1; \
	had_db=$$([ -e gradebook.db ] && echo yes); \
	for dir in solutions/*/; do \
	    id=$$(basename "$$dir"); \
	    [ -f "$$dir/$$id.ipynb" ] || continue; \
	    nbgrader generate_assignment "$$id" --no-db --force || exit 1; \
	done; \
	if [ -z "$$had_db" ]; then rm -f gradebook.db; fi

bench: $(STAMP)
	@for script in bench/bench_*.py; do \
	    echo "== $$script"; python "$$script" || exit 1; \
	done

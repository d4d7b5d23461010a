# raysim developer entry points. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# every dependency's exact version and hashes: `make lock` writes it from pyproject.toml's ranges
LOCK   := requirements.lock
TOOLS  := .venv-tools
LATEST := .venv-latest
PIP_TOOLS := pip-tools==7.7.0
LATEST_ARGS ?= -m "not slow" -q
# name==version lines with the name as PEP 503 spells it (lower case, - for _ and .), sorted
NORMALIZE := awk -F'==' '{ n = tolower($$1); gsub(/[_.]+/, "-", n); print n "==" $$2 }' | sort
COMPILE := pip-compile --quiet --generate-hashes --extra dev --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links -o $(LOCK) pyproject.toml

.PHONY: help install lock lock-upgrade test-latest data run test test-runtime-slow test-slow test-all test-examples lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# The lock, then raysim itself without its dependencies (they are all in the lock); pip check fails
# when the lock no longer satisfies pyproject.toml (a range changed without `make lock`). Packages
# the lock no longer lists are removed, so .venv is the lock and nothing else. pip compiles the
# packages' bytecode at install (~43 CPU-seconds). Never --no-compile: where PYTHONDONTWRITEBYTECODE
# is set (it is on our machines) Python would then compile torch's ~2,300 modules from source again
# in every process that imports it, every Ray worker included (5 to 20 s each; CI took 73 minutes
# with --no-compile, 49 without).
$(BIN)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/pip freeze --exclude-editable | grep -v '^#' | sed 's/[ =@].*//' | tr 'A-Z_.' 'a-z--' | sort > $(VENV)/.have
	@sed -n 's/^\([A-Za-z0-9._-]*\)==.*/\1/p' $(LOCK) | tr 'A-Z_.' 'a-z--' | sort > $(VENV)/.want
	@stale=$$(comm -23 $(VENV)/.have $(VENV)/.want); if [ -n "$$stale" ]; then \
	  echo "removing what the lock no longer lists: $$stale"; $(BIN)/pip uninstall --quiet -y $$stale; fi
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed  ## create .venv from requirements.lock (exact versions, hashes checked) and raysim

$(TOOLS)/bin/pip-compile:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet $(PIP_TOOLS)

lock: $(TOOLS)/bin/pip-compile  ## rewrite requirements.lock after a pyproject.toml change (keeps the pins still allowed)
	CUSTOM_COMPILE_COMMAND="make lock  (= $(COMPILE), $(PIP_TOOLS))" $(TOOLS)/bin/$(COMPILE)

lock-upgrade: $(TOOLS)/bin/pip-compile  ## rewrite requirements.lock with the newest releases pyproject.toml allows
	CUSTOM_COMPILE_COMMAND="make lock  (= $(COMPILE), $(PIP_TOOLS))" $(TOOLS)/bin/$(COMPILE) --upgrade

# A venv of its own, upgraded eagerly each time to the newest releases the ranges allow (torch,
# torchvision and ray stay pinned): an upstream release that breaks raysim shows up here first.
test-latest: data  ## the default tests on the newest releases pyproject.toml allows, in .venv-latest
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	@$(LATEST)/bin/pip freeze --exclude-editable | grep -v '^#' | $(NORMALIZE) > $(LATEST)/.have
	@sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p' $(LOCK) | $(NORMALIZE) > $(LATEST)/.locked
	@echo "newer than (or missing from) $(LOCK):"; comm -23 $(LATEST)/.have $(LATEST)/.locked | sed 's/^/  /' | grep . || echo '  (none)'
	$(LATEST)/bin/pytest $(LATEST_ARGS)

data:  ## install Fashion-MNIST from Debian (dataset-fashion-mnist) when it is missing
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: run 'apt-get install -y dataset-fashion-mnist' as root, or put the four"; \
	  echo "*-ubyte.gz files in a folder and pass --set data.data_dir=FOLDER"; exit 2; fi

run: install data  ## set everything up and run the quick-start experiment (configs/quickstart.yaml)
	$(BIN)/raysim run configs/quickstart.yaml --report

test: install data  ## set everything up and run the default test suite (no slow tier)
	$(BIN)/pytest -m "not slow" -q

# What CI runs after `make test`: the slow tests of the runtime, the sweeps and the shipped configs
# (node loss, resume through the CLI on Ray, multi-node equality, sweep placement, every config in
# configs/ starting on this machine, the remaining pinned runs, a KubeRay job's contract, autoscaling).
# The paper reproductions, the 50-round Fashion-MNIST accuracy run (tests/runtime/test_slow_fmnist.py)
# and the tests marked `extended` (README's commands at tiny sizes, the autoscaler's v2 and Ray Client
# variants: CI's 45-minute budget) stay out; `make test-slow` runs them all.
SLOW_RUNTIME := tests/runtime tests/tuning tests/test_shipped_configs.py tests/test_reproducible.py \
	tests/test_readme.py --ignore=tests/runtime/test_slow_fmnist.py
test-runtime-slow: install data  ## the runtime's slow tests (CI runs them after `make test`; ~15 min on 2 cores)
	$(BIN)/pytest -m "slow and not extended" -q $(SLOW_RUNTIME)

test-slow: install data  ## the slow tier: real Fashion-MNIST runs, the bigger Ray runs (minutes)
	$(BIN)/pytest -m slow -q

test-all: install data  ## both tiers, the default suite and the slow one
	$(BIN)/pytest -q

# The plug-in example (examples/, docs/extending.md) the way a user installs it: a separate package
# in .venv (--no-deps: raysim's lock has its dependencies; --no-build-isolation: nothing downloads),
# then its tests: raysim.testing on it, its configs by import path and entry point on Ray and serial,
# the CLI, the Python API and a sweep. Rebuilt from the source each time (no stale copy in build/).
test-examples: install data  ## install the example package (examples/) into .venv and run its tests (~2 min)
	rm -rf examples/build examples/*.egg-info
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --force-reinstall ./examples
	$(BIN)/pytest -q examples/tests

lint: install  ## ruff and mypy on the packages
	$(BIN)/ruff check raysim actors tuning tests benchmarks examples
	$(BIN)/ruff format --check raysim actors tuning tests benchmarks examples
	$(BIN)/mypy raysim actors tuning

bench: install data  ## workload W1: raysim vs plain processes and a pure PyTorch loop (prints the ratios)
	$(BIN)/python benchmarks/fedavg_w1.py

clean:  ## remove runs and caches (not the venv)
	rm -rf runs report .pytest_cache .ruff_cache .mypy_cache examples/build examples/*.egg-info

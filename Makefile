# raysim developer entry points. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: help install data run test test-slow test-all lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed  ## create .venv and install raysim with its pinned dependencies

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

test-slow: install data  ## the slow tier: real Fashion-MNIST runs, the bigger Ray runs (minutes)
	$(BIN)/pytest -m slow -q

test-all: install data  ## both tiers, the default suite and the slow one
	$(BIN)/pytest -q

lint: install  ## ruff and mypy on the packages
	$(BIN)/ruff check raysim actors tuning tests benchmarks
	$(BIN)/ruff format --check raysim actors tuning tests benchmarks
	$(BIN)/mypy raysim actors tuning

bench: install data  ## workload W1: raysim vs plain processes and a pure PyTorch loop (prints the ratios)
	$(BIN)/python benchmarks/fedavg_w1.py

clean:  ## remove runs and caches (not the venv)
	rm -rf runs report .pytest_cache .ruff_cache .mypy_cache

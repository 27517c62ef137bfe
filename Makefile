# Two entry points for a fresh Debian/Ubuntu machine:
#   make demo   - installs everything, then runs the zero-setup demonstration
#   make test   - installs everything, then runs ruff, mypy --strict and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := libsystemd-dev pkg-config gcc python3-dev python3-venv

.PHONY: demo test lint typecheck unit system-deps venv bench clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(BIN)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,demo]'
	touch $@

venv: system-deps $(BIN)/.installed

demo: venv
	$(BIN)/agentctl demo

lint: venv
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

test: lint typecheck unit

bench: venv
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bandwidth.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info

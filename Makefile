# Two entry points for a fresh Debian/Ubuntu machine:
#   make demo   - installs everything, then runs the zero-setup demonstration
#   make test   - installs everything, then runs ruff, mypy --strict and the test suite
#   make systemd-test - (root) the unit under a real systemd booted in a container
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := libsystemd-dev pkg-config gcc python3-dev python3-venv systemd

.PHONY: demo test lint typecheck unit fast system-deps venv bench clean unit-check systemd-test soak

# $(call apt_install,PACKAGES): apt-get install only those not installed yet (sudo if not root).
define apt_install
@missing=""; for p in $(1); do \
  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
if [ -n "$$missing" ]; then \
  echo "installing system packages:$$missing"; \
  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
fi
endef

system-deps:
	$(call apt_install,$(APT_PACKAGES))

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

# The fast layer of the test pyramid alone: no server, no daemon (README, Development).
fast: venv
	$(BIN)/pytest -q -m "not slow"

test: lint typecheck unit

# The soak (README, Development): the daemon under random SIGKILLs, a fault-injecting proxy
# and a rolled-back state database, then every byte, manifest and upload checked. A few
# minutes by default; longer with e.g. make soak ARGS="--kills 60 --minutes 20".
ARGS ?=
soak: venv
	$(BIN)/python -m tests.soak $(ARGS)

# The agent against aws-cli, s5cmd and rclone on one loopback S3 server, one data set, one
# run (README, Performance), then the agent alone: idle daemon, completion latency, a growing
# recording, and flame graphs (py-spy, about half a minute; --no-profile skips them). Results
# in bench/results/. Options through BENCH_ARGS, e.g.
# make bench BENCH_ARGS="--scale 1 --endpoint http://minio:9000". The older single-purpose
# benchmarks (bench/run.py, bandwidth.py, scale.py; latency.py runs the latency phase alone)
# run on their own.
BENCH_APT := rclone time
BENCH_ARGS ?=
$(BIN)/.bench-installed: pyproject.toml | $(BIN)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: venv $(BIN)/.bench-installed
	$(call apt_install,$(BENCH_APT))
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

# deploy/ingest-agent.service checked on the host, without installing it: systemd-analyze
# verify (on a copy whose ExecStart names this venv's agentctl, as /opt is empty here) must
# print nothing, and the offline security exposure must be at most 2.0.
unit-check: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	sed 's|/opt/ingest-agent/bin/agentctl|$(abspath $(BIN))/agentctl|' deploy/ingest-agent.service \
	  >"$$tmp/ingest-agent.service" && \
	out=$$(systemd-analyze verify "$$tmp/ingest-agent.service" 2>&1); \
	if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; \
	systemd-analyze security --offline=true --threshold=20 --no-pager "$$tmp/ingest-agent.service" | tail -1

# Boots a Debian bookworm container with systemd (root only; the root file system is built
# once into /var/cache/ingest-agent-test) and tests the unit, install.sh, READY/STATUS,
# journald fields, the watchdog and a clean stop. Not part of `make test`.
SYSTEMD_TEST_APT := debootstrap systemd-container
systemd-test: venv
	$(call apt_install,$(SYSTEMD_TEST_APT))
	timeout 1800 $(BIN)/pytest -m systemd tests/systemd -v -p no:cacheprovider

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info

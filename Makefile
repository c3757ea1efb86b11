# waypoint-baggage: every entry point. `make demo` and `make test` set up what
# they need on a fresh machine (wasm targets, wasm-bindgen test runner, Envoy).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
ENVOY_BIN := $(CURDIR)/.venv/lib/python3.11/site-packages/envoy/_bin/envoy
WAYPOINT_WASM := $(CURDIR)/dist/waypoint.wasm
WAYPOINT_NATIVE_SO := $(CURDIR)/dist/libwaypoint_native.so
export ENVOY_BIN WAYPOINT_WASM WAYPOINT_NATIVE_SO

.PHONY: help setup build demo test test-native test-wasm-engine lint bench fuzz soak flood testbed testbed-down testbed-test clean

help:
	@echo "make demo    - the two-network mesh on loopback: traffic, then the two-sided metrics"
	@echo "make test    - every test (the Docker testbed too when Docker works)"
	@echo "make build   - dist/waypoint.wasm, dist/libwaypoint_native.so and dist/host-shim"
	@echo "make bench   - side-by-side benchmarks"
	@echo "make fuzz    - libFuzzer on every decoder (FUZZ_SECONDS each)"
	@echo "make soak    - the mesh under connection churn and hostile traffic for SOAK_SECONDS"
	@echo "make flood   - 20,000 forged peers and 20,000 churning pods through the real waypoint"
	@echo "make testbed - the two-cluster Docker testbed (make testbed-test, make testbed-down)"

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p waypoint --target wasm32-wasip1
	$(CARGO) build --release -p host-shim -p harness -p waypoint-native
	@mkdir -p dist
	# A new inode each time: a running host-shim keeps its old one ("text file busy").
	cp --remove-destination target/wasm32-wasip1/release/waypoint.wasm dist/waypoint.wasm
	cp --remove-destination target/release/host-shim dist/host-shim
	cp --remove-destination target/release/libwaypoint_native.so dist/libwaypoint_native.so
	@ls -l dist

# ENGINE=native or ENGINE=wasm picks the engine of the waypoint's filters; without it the
# demo runs the default engine, which only envoy_config's Engine::DEFAULT decides (make
# passes an ENGINE given on its command line or in the environment on to the demo).
demo: build
	$(CARGO) run --release -q -p harness --bin demo

test: build lint test-native test-wasm-engine testbed-test

# Clippy on every crate, natively and for the wasm module's own target; cargo deny on
# the dependency graph (offline: advisories need the network).
lint:
	$(CARGO) clippy -q --workspace --all-targets -- -D warnings
	@# cargo deny reads every platform's dependencies; a build fetches only this one's.
	$(CARGO) fetch -q
	$(CARGO) deny --offline check bans licenses sources
	$(CARGO) clippy -q -p waypoint --target wasm32-wasip1 -- -D warnings

# Unit, property, scenario (built .wasm and .so in their mocked hosts) and Envoy interop tests.
test-native:
	$(CARGO) test --workspace

# The codec tests again, compiled to wasm and run inside a wasm engine (node).
test-wasm-engine:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test -p waypoint-core --target wasm32-unknown-unknown --test codec

# The performance record (BENCHMARKS.md), not part of `make test`, about 20 minutes:
# every waypoint variant side by side in one run, instructions per request under
# valgrind's callgrind, then wall-clock CPU, requests/s and p99; then one HBONE
# tunnel's throughput vs a plain rustls stream.
bench: build
	@# From Debian: valgrind (callgrind counts the waypoint's instructions), h2load of
	@# nghttp2-client (the load generator: fixed rate, per-request latencies), and
	@# rsvg-convert of librsvg2-bin (the latency plot as PNG).
	@command -v callgrind_control >/dev/null && command -v h2load >/dev/null && command -v rsvg-convert >/dev/null || \
	  { sudo=$$([[ $$(id -u) == 0 ]] || echo sudo); $$sudo apt-get update -q >/dev/null && \
	    $$sudo apt-get install -y -q valgrind nghttp2-client librsvg2-bin >/dev/null; }
	$(CARGO) build --release -q -p noop-filter --target wasm32-wasip1
	@mkdir -p target/bench
	@# The tunnel first, on the quieter machine; the harness bench puts its figures in results.json.
	TUNNEL_RESULT=$(CURDIR)/target/bench/tunnel.json $(CARGO) bench -q -p host-shim --bench tunnel
	TUNNEL_RESULT=$(CURDIR)/target/bench/tunnel.json $(CARGO) run --release -q -p harness --bin bench
	@# Only when the wall phase wrote a new plot (BENCH_PHASES=callgrind writes none).
	if [[ bench/latency.svg -nt bench/latency.png ]]; then rsvg-convert bench/latency.svg -o bench/latency.png; fi

# libFuzzer on every decoder of network or host input, FUZZ_SECONDS each.
# cargo-fuzz passes nightly-only flags; the machine has stable 1.95 only, hence
# RUSTC_BOOTSTRAP, and no sanitizer (the code under test is safe Rust: panics are the bugs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := baggage legacy header_pairs config
fuzz: setup
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --quiet cargo-fuzz
	cd fuzz && for target in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target -s none -- -max_total_time=$(FUZZ_SECONDS) 2>&1 | grep -E '^(Done|==|SUMMARY)' || exit 1; \
	done

# The mesh under steady connection churn for SOAK_SECONDS, with forged peers, slow
# connections and distinct grpc-status mixed in: no legit failure, exact counts, legit
# labels kept, slow connections closed, memory and tunnels settle.
SOAK_SECONDS ?= 120
soak: build
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) run --release -q -p harness --bin soak

# The cardinality proof on real Envoy: FLOOD_PODS pods of one deployment, then FLOOD_PEERS
# distinct forged peers; series and the waypoint's RSS stay bounded, legit labels kept.
FLOOD_PEERS ?= 20000
FLOOD_PODS ?= 20000
flood: build
	FLOOD_PEERS=$(FLOOD_PEERS) FLOOD_PODS=$(FLOOD_PODS) $(CARGO) run --release -q -p harness --bin flood

# The Docker testbed (testbed/README.md): images built locally (no registry), then up.
testbed: build
	testbed/testbed.sh up

testbed-down:
	testbed/testbed.sh down

# Up, the checks, always down. One "testbed: SKIPPED" line when Docker is unusable;
# a failure instead under WAYPOINT_REQUIRE_TESTBED=1 (CI).
testbed-test: build
	testbed/testbed.sh test

clean:
	$(CARGO) clean
	rm -rf dist

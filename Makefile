# Signet: the two commands are `make run` and `make test`.
# Everything builds in the release profile, once: run, test and bench share it
# (RocksDB compiles from source, about 15 minutes on 2 cores the first time).

CARGO ?= cargo

.PHONY: deps build run test lint bench fmt clean-dev

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

fmt:
	$(CARGO) fmt --all

clean-dev:
	rm -rf dev-data

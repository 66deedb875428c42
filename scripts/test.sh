#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine: installs what
# the tests need (a nats-server >= 2.10, Debian's nats-server 2.9 for the
# old-server test, PostgreSQL binaries, cargo-fuzz, cargo-nextest), then
# formatting, lints, all tests (unit and integration against real
# nats-server processes and clusters with cargo-nextest, then doc tests), the quick-start example and a short run of each fuzz
# target from its committed corpus (FUZZ_SECONDS each, default 15; 0 skips).
# KAFKA_TESTS=1 also lints and tests the `kafka` feature (KafkaBus on a tansu
# broker; `./scripts/install-test-deps.sh kafka` builds tansu once, 20-40 min):
# off by default: librdkafka's C build and the Kafka tests would push CI past
# its time budget.
set -euo pipefail
cd "$(dirname "$0")/.."

# What git says of the tree now: a test run must leave it as it found it
# (a test or build that rewrites a tracked file, e.g. a lock file, fails).
tree_before=$(git status --porcelain 2>/dev/null || true)

# Each phase's heading carries the time since the start (CI keeps the whole
# run under 20 minutes; this shows where the time goes).
phase() { printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

eval "$(./scripts/install-test-deps.sh)"
export NATS_SERVER_BIN
phase "using nats-server $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
phase "a backend author's build: event-bus without default features (no NATS, no network dependency)"
cargo clippy -q -p event-bus --no-default-features -- -D warnings
# cargo-nextest runs every test of the workspace in a process of its own,
# tests of different binaries side by side (`cargo test` runs one binary
# after the other: ~8 minutes against ~5 here); it does not run doc tests,
# hence the second command.
phase "cargo nextest run --workspace (unit and integration tests)"
cargo nextest run --workspace --no-fail-fast
phase "cargo test --workspace --doc"
cargo test --workspace --doc --no-fail-fast
if [ "${KAFKA_TESTS:-0}" = 1 ]; then
	eval "$(./scripts/install-test-deps.sh kafka | grep "^TANSU_BIN=")"
	export TANSU_BIN
	phase "kafka feature: clippy, unit tests, conformance on tansu ($TANSU_BIN)"
	cargo clippy -p event-bus -p event-bus-testkit -p event-bus-postgres -p event-bus-http -p event-bus-cli \
		--features event-bus/kafka,event-bus-testkit/kafka,event-bus-postgres/kafka,event-bus-http/kafka,event-bus-cli/kafka \
		--all-targets -- -D warnings
	cargo test -p event-bus --features kafka --lib --test spec_examples kafka
	# kafka_durability: a broker kill on tansu's PostgreSQL storage; its
	# ignored test fails on tansu 0.6.0 (README, "On Kafka").
	cargo test -p event-bus-testkit --features kafka --lib --test conformance_kafka --test kafka_behaviour --test kafka_durability
	phase "kafka: outbox → Kafka → runner → PgInbox, a consumer group losing a runner, bus --url kafka://, /readyz"
	cargo test -p event-bus-postgres --features kafka --test kafka_chain --test tracing
	cargo test -p event-bus-cli --features kafka --test kafka_cli
	cargo test -p event-bus-http --features kafka --test readyz_kafka
else
	phase "kafka feature: NOT RUN (KAFKA_TESTS=1 runs it)"
fi
# The examples and the demo run from the binaries the test build made (with the workspace's features): `cargo run -p <crate>` would build
# each crate again with that crate's features alone.
cargo build -q --workspace --examples --bins
bin="${CARGO_TARGET_DIR:-target}/debug"
phase "quick-start example (in-memory default)"
"$bin/examples/quickstart"
phase "a user-written layer example (a correlation id on a span around each attempt)"
"$bin/examples/correlation_layer"
phase "outbox chain example (in-memory bus, throwaway PostgreSQL)"
"$bin/examples/outbox_chain"
phase "platform demo, --once (in-memory bus, throwaway PostgreSQL)"
"$bin/platform-demo" --once

phase "bench-peers (a crate of its own): formatted, lint-free, compiles"
# In the workspace's target directory: the dependencies both share are
# checked once.
(cd bench-peers && cargo fmt --check &&
	CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}" cargo clippy -q --all-targets -- -D warnings)
fuzz_seconds=${FUZZ_SECONDS:-15}
if [ "$fuzz_seconds" -le 0 ]; then phase "fuzz targets: NOT RUN (FUZZ_SECONDS=$fuzz_seconds)"; fi
if [ "$fuzz_seconds" -gt 0 ]; then
	phase "fuzz targets: ${fuzz_seconds}s each from fuzz/corpus (cargo-fuzz, stable toolchain, no sanitizer)"
	# --dev: a quick build with debug assertions (overflow is a crash).
	# New inputs go to a scratch directory; the committed corpus is only read.
	(cd fuzz && cargo fmt --check && cargo fuzz build --dev -s none)
	scratch=$(mktemp -d)
	trap 'rm -rf "$scratch"' EXIT
	for target in $(cd fuzz && cargo fuzz list); do
		mkdir -p "$scratch/$target"
		if ! (cd fuzz && cargo fuzz run --dev -s none "$target" "$scratch/$target" "corpus/$target" -- \
			-max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
			>"$scratch/$target.log" 2>&1; then
			tail -n 60 "$scratch/$target.log"
			echo "fuzz target $target failed (input in fuzz/artifacts/$target/)" >&2
			exit 1
		fi
		echo "fuzz $target: $(grep -E '^Done' "$scratch/$target.log"), no crash"
	done
fi

tree_after=$(git status --porcelain 2>/dev/null || true)
if [ "$tree_after" != "$tree_before" ]; then
	echo "the test run changed the work tree (a build or test rewrote or left files):" >&2
	diff <(printf '%s\n' "$tree_before") <(printf '%s\n' "$tree_after") >&2 || true
	exit 1
fi
phase "work tree unchanged by the run"

#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine: installs what
# the tests need (a nats-server >= 2.10, Debian's nats-server 2.9 for the
# old-server test, PostgreSQL binaries), then formatting, lints, all tests
# (unit, integration against real nats-server processes and clusters, doc
# tests) and the quick-start example.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(./scripts/install-test-deps.sh)"
export NATS_SERVER_BIN
echo "== using nats-server $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test --workspace"
cargo test --workspace --no-fail-fast
echo "== quick-start example (in-memory default)"
cargo run -q -p event-bus --example quickstart

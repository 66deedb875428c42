#!/usr/bin/env bash
# The platform demo on a fresh machine with only the Rust toolchain:
# installs what is missing (PostgreSQL binaries for a throwaway server, a
# nats-server for EVENT_BUS_TYPE=nats) with ./scripts/install-test-deps.sh,
# then runs it. Arguments go to the demo (`--once` exits after the scenario).
#
#   ./scripts/demo.sh                       # in-memory bus
#   EVENT_BUS_TYPE=nats ./scripts/demo.sh   # NATS JetStream (a throwaway server)
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN="$(./scripts/install-test-deps.sh | tail -n1 | sed 's/^NATS_SERVER_BIN=//')"
export NATS_SERVER_BIN
exec cargo run -q -p event-bus-demo -- "$@"

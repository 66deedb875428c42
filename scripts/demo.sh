#!/usr/bin/env bash
# The platform demo on a fresh machine with only the Rust toolchain:
# installs only what the demo needs and is missing (PostgreSQL server binaries
# for a throwaway server; a nats-server for EVENT_BUS_TYPE=nats without
# EVENT_BUS_NATS_URL) with ./scripts/install-test-deps.sh, then runs it.
# Installing Debian packages needs root (or sudo). Arguments go to the demo
# (`--once` exits after the scenario).
#
#   ./scripts/demo.sh                       # in-memory bus
#   EVENT_BUS_TYPE=nats ./scripts/demo.sh   # NATS JetStream (a throwaway server)
set -euo pipefail
cd "$(dirname "$0")/.."
needs=(postgres)
if [ "${EVENT_BUS_TYPE:-}" = nats ] && [ -z "${EVENT_BUS_NATS_URL:-}" ]; then
	needs+=(nats)
fi
NATS_SERVER_BIN="$(./scripts/install-test-deps.sh "${needs[@]}" | tail -n1 | sed 's/^NATS_SERVER_BIN=//')"
if [ -n "$NATS_SERVER_BIN" ]; then
	export NATS_SERVER_BIN
fi
exec cargo run -q -p event-bus-demo -- "$@"

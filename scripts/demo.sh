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
#   EVENT_BUS_TYPE=kafka ./scripts/demo.sh  # Kafka (a throwaway tansu broker; the first
#                                           # run builds tansu: 20-40 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
needs=(postgres)
features=()
if [ "${EVENT_BUS_TYPE:-}" = nats ] && [ -z "${EVENT_BUS_NATS_URL:-}" ]; then
	needs+=(nats)
fi
if [ "${EVENT_BUS_TYPE:-}" = kafka ]; then
	features=(--features kafka)
	if [ -z "${EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
		needs+=(kafka)
	fi
fi
deps="$(./scripts/install-test-deps.sh "${needs[@]}")"
NATS_SERVER_BIN="$(printf '%s\n' "$deps" | sed -n 's/^NATS_SERVER_BIN=//p')"
TANSU_BIN="$(printf '%s\n' "$deps" | sed -n 's/^TANSU_BIN=//p')"
if [ -n "$NATS_SERVER_BIN" ]; then
	export NATS_SERVER_BIN
fi
if [ -n "$TANSU_BIN" ]; then
	export TANSU_BIN
fi
exec cargo run -q -p event-bus-demo "${features[@]}" -- "$@"

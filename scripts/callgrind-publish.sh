#!/usr/bin/env bash
# Client instructions per published message, NatsBus beside raw async-nats,
# counted by callgrind (independent of the machine's load).
#
#   scripts/callgrind-publish.sh [side ...]
#
# Sides: those of nats_compare's NATS_BENCH_ONLY (bus, raw, bus-tp, raw-tp,
# bus-ce, raw-ce; default: all six). Each side runs twice under callgrind,
# with SMALL and LARGE messages (64 publishers, each awaiting its publish);
# instructions per message = (instructions of the large run - of the small
# run) / (LARGE - SMALL): start-up, connection and stream set-up cancel out.
# Needs NATS_SERVER_BIN (a nats-server >= 2.10) and valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${SMALL:-6400}
LARGE=${LARGE:-25600}
sides=("$@")
[ ${#sides[@]} -gt 0 ] || sides=(bus raw bus-tp raw-tp bus-ce raw-ce)
bin=$(cargo bench -p event-bus-testkit --bench nats_compare --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # side messages -> total instructions (Ir) of the client process
    NATS_BENCH_ONLY=$1 NATS_BENCH_MESSAGES=$2 NATS_BENCH_REPS=1 \
        valgrind --tool=callgrind --callgrind-out-file="$out/$1.$2" "$bin" >/dev/null 2>"$out/log"
    sed -n 's/^summary: //p' "$out/$1.$2"
}
printf '%-8s %14s\n' side 'Ir/message'
for side in "${sides[@]}"; do
    small=$(count "$side" "$SMALL")
    large=$(count "$side" "$LARGE")
    printf '%-8s %14d\n' "$side" $(((large - small) / (LARGE - SMALL)))
done

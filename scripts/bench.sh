#!/usr/bin/env bash
# The fleet benchmark: every figure of issue 16's targets in one table (see BENCHMARKS.md).
#
#   scripts/bench.sh                 # 1,000 simulated hosts × 100 VMs, plus real QEMU
#   SKIP_QEMU=1 scripts/bench.sh     # the simulator's figures only
#   scripts/bench.sh --hosts 200     # extra arguments go to `vmm-sim bench`
#
# Builds the release binaries, runs the real-QEMU benchmark (tests/examples/bench-qemu.rs:
# needs root and libvirtd, see scripts/setup-host.sh) and then the fleet simulator
# (sim/: 1,000 in-memory agents in one process against a real coordinator, `wrk` for the
# authenticated GET /api/vms figures), which prints the table with the QEMU figures folded
# in. Rate limiting is off in the benchmark's coordinator. Everything runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null
fi
ulimit -n 20000 2>/dev/null || true

cargo build --release --bins -p vmm-coordinator -p vmm-agent -p vmm-sim
report=$(mktemp)
trap 'rm -f "$report"' EXIT
args=()
if [ -z "${SKIP_QEMU:-}" ]; then
    VMM_E2E_BIN_DIR="$PWD/target/release" \
        cargo run --release -p vmm-e2e --example bench-qemu | tee "$report"
    args+=(--qemu-report "$report")
fi
target/release/vmm-sim bench "${args[@]}" "$@"

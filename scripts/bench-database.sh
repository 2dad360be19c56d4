#!/usr/bin/env bash
# Create throughput of the coordinator on SQLite and on PostgreSQL, side by side: the fleet
# simulator (sim/) runs the same small fleet twice against the real coordinator binary, once
# on its embedded SQLite file and once on a fresh database of a throw-away PostgreSQL server
# on loopback (scripts/start-postgres.sh), and prints each run's `creates:` figure.
#
#   scripts/bench-database.sh                  # debug binaries (quick to build)
#   PROFILE=release scripts/bench-database.sh  # release binaries (the figures to quote)
#   scripts/bench-database.sh --hosts 100      # extra arguments go to `vmm-sim bench`
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-debug}
flags=()
[[ $profile == release ]] && flags=(--release)
# The whole workspace, as scripts/test.sh builds it: the same features, so nothing is built twice.
cargo build "${flags[@]}" --workspace --bins
sim=target/$profile/vmm-sim
args=(bench --hosts 20 --vms-per-host 50 --storms 0 --no-wrk "$@")

pg_dir=$(mktemp -d /tmp/vmm-bench-postgres.XXXXXX)
trap 'scripts/stop-postgres.sh "$pg_dir" 2>/dev/null; rm -rf "$pg_dir"' EXIT
server=$(scripts/start-postgres.sh "$pg_dir")
database="vmm_bench_$$"
psql "$server" -q -c "CREATE DATABASE $database"

echo "== SQLite ($profile build)"
sqlite_out=$("$sim" "${args[@]}" 2>&1) || { echo "$sqlite_out"; exit 1; }
echo "$sqlite_out" | grep -E '^creates:|creates failed' || true
echo "== PostgreSQL ($profile build)"
pg_out=$(DATABASE_URL="${server%/*}/$database" "$sim" "${args[@]}" 2>&1) || { echo "$pg_out"; exit 1; }
echo "$pg_out" | grep -E '^creates:|creates failed' || true

#!/usr/bin/env bash
# What a claim's placement read costs as the fleet grows: the statement
# `hosts::store::placement_candidates` runs inside the create's write transaction (spread
# placement, a VM of 1 vCPU / 64 MiB / 1 GB without an image), timed on a SQLite file made
# from the coordinator's own migrations and filled with N connected hosts, half-full at
# random. Beside it the same statement without its ORDER BY (what the filter and the join
# cost) and the bare host–allocation join, to show where the time goes.
#
#   scripts/bench-placement.sh              # 100, 1,000 and 5,000 hosts
#   scripts/bench-placement.sh 1000 20000   # host counts of your own
#
# Needs the `sqlite3` command and python3 (Debian: sqlite3, python3). Each figure is the
# median of 7 rounds of 200 statements, in µs per statement.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || apt-get install -y sqlite3 >/dev/null

counts=("$@")
[[ ${#counts[@]} -eq 0 ]] && counts=(100 1000 5000)
dir=$(mktemp -d /tmp/vmm-bench-placement.XXXXXX)
trap 'rm -rf "$dir"' EXIT

printf '%8s %14s %16s %12s\n' hosts "claim read µs" "without order µs" "join only µs"
for hosts in "${counts[@]}"; do
    db="$dir/coordinator-$hosts.db"
    for migration in coordinator/migrations/sqlite/*.sql; do
        sqlite3 "$db" <"$migration"
    done
    sqlite3 "$db" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $hosts)
INSERT INTO hosts (id, status, cpus, memory_mib, disk_gb, libvirt_version, hypervisor,
                   kvm_usable, agent_version, last_seen_at)
SELECT printf('host-%06d', i), 'connected', 64, 16384, 10000, '11.3.0', 'QEMU', 1, '0.1.0',
       '2026-12-03T00:00:00Z' FROM n;
INSERT INTO host_allocations (host_id, vms, cpu, memory_mib, disk_gb)
SELECT id, 50 + abs(random()) % 3, 50, 64 * (50 + abs(random()) % 3), 50 FROM hosts;
ANALYZE;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
    python3 - "$db" "$hosts" <<'PY'
import sqlite3, statistics, sys, time

db, hosts = sys.argv[1], sys.argv[2]
# As hosts::store::placement_candidates writes it (placeable_host_loads! and its spread
# order), for a VM of 1 vCPU, 64 MiB and 1 GB without an image, the allocation ratio 4.
claim = """
SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
       COALESCE(a.cpu, 0) AS allocated_cpu,
       COALESCE(a.memory_mib, 0) AS allocated_memory_mib,
       COALESCE(a.disk_gb, 0) AS allocated_disk_gb,
       COALESCE(a.vms, 0) AS vm_count,
       CASE WHEN EXISTS (SELECT 1 FROM host_images hi
                         WHERE hi.host_id = h.id AND hi.image_id = ?1)
            THEN 1 ELSE 0 END AS caches_image
FROM hosts h LEFT JOIN host_allocations a ON a.host_id = h.id
WHERE h.status = 'connected' AND h.drained_at IS NULL
  AND COALESCE(a.cpu, 0) + 1 <= h.cpus * 4.0
  AND COALESCE(a.memory_mib, 0) + 64 <= h.memory_mib
  AND COALESCE(a.disk_gb, 0) + 1 <= h.disk_gb
{order}
LIMIT 8"""
order = """ORDER BY h.memory_mib - COALESCE(a.memory_mib, 0) DESC, caches_image DESC,
         vm_count ASC, h.id COLLATE BINARY ASC"""
statements = [
    claim.format(order=order),
    claim.format(order=""),
    "SELECT count(*) FROM hosts h LEFT JOIN host_allocations a ON a.host_id = h.id "
    "WHERE ?1 IS NULL",
]
connection = sqlite3.connect(db)


def micros(sql):
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(200):
            connection.execute(sql, (None,)).fetchall()
        rounds.append((time.perf_counter() - start) / 200 * 1e6)
    return statistics.median(rounds)


figures = [micros(sql) for sql in statements]
print(f"{hosts:>8} {figures[0]:>14.0f} {figures[1]:>16.0f} {figures[2]:>12.0f}")
PY
done

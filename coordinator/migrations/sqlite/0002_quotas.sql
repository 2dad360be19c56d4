-- Per-user quota limits set by an administrator. A NULL column means "the configured
-- default", so changing a default reaches every user who has no explicit limit.
-- Usage is not stored: it is summed from the resources that exist (each VM row is the
-- ledger entry for its resources, keyed by the VM's ID), so it cannot drift.
CREATE TABLE quotas (
    user_id       TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    max_vms       INTEGER,
    max_cpu       INTEGER,
    max_memory    INTEGER,
    max_disk_gb   INTEGER,
    max_snapshots INTEGER
);

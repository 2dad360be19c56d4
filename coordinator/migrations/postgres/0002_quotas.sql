-- PostgreSQL version of migrations/sqlite/0002_quotas.sql: the same schema; integers are BIGINT (SQLite's
-- INTEGER is 64-bit), timestamps stay RFC 3339 UTC text so both databases order them alike.

-- Per-user quota limits set by an administrator. A NULL column means "the configured
-- default", so changing a default reaches every user who has no explicit limit.
-- Usage is not stored: it is summed from the resources that exist (each VM row is the
-- ledger entry for its resources, keyed by the VM's ID), so it cannot drift.
CREATE TABLE quotas (
    user_id       TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    max_vms       BIGINT,
    max_cpu       BIGINT,
    max_memory    BIGINT,
    max_disk_gb   BIGINT,
    max_snapshots BIGINT
);

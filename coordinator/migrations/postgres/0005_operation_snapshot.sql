-- PostgreSQL version of migrations/sqlite/0005_operation_snapshot.sql: the same schema; integers are BIGINT (SQLite's
-- INTEGER is 64-bit), timestamps stay RFC 3339 UTC text so both databases order them alike.

-- The snapshot an operation acts on (snapshot create and delete), so that an operation's
-- outcome can be applied from its record alone: when its answer comes after the request
-- timed out, when its host's session ends, or when the coordinator restarts.
ALTER TABLE operations ADD COLUMN snapshot_id TEXT;

-- Settling what a lost session or a restart left pending reads pending operations by host.
CREATE INDEX operations_pending_by_host ON operations (host_id) WHERE status = 'pending';

-- A fleet of a thousand hosts and a hundred thousand VMs: host sessions that cannot undo
-- each other, running totals that make a claim cost the same however many VMs exist, and
-- the indexes that pagination and settling read by.

-- Every registration of a host's agent takes the next epoch. A session's clean-up (marking
-- its host unreachable) applies only while its epoch is still the host's, and heartbeats
-- only from the current epoch: a stale session can never undo a newer registration.
ALTER TABLE hosts ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;

-- What the VMs recorded on each host take, kept current in the transaction that inserts or
-- deletes a VM row (`ledger` module). A VM row is the ledger entry: it is charged when it
-- is inserted and released only by the delete that removes it, so charging or releasing
-- the same VM twice changes nothing.
CREATE TABLE host_allocations (
    host_id    TEXT PRIMARY KEY NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    vms        INTEGER NOT NULL DEFAULT 0,
    cpu        INTEGER NOT NULL DEFAULT 0,
    memory_mib INTEGER NOT NULL DEFAULT 0,
    disk_gb    INTEGER NOT NULL DEFAULT 0
);

-- What each user's VMs and snapshots take, kept the same way (a snapshot row is the ledger
-- entry of one snapshot).
CREATE TABLE user_usage (
    user_id    TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    vms        INTEGER NOT NULL DEFAULT 0,
    cpu        INTEGER NOT NULL DEFAULT 0,
    memory_mib INTEGER NOT NULL DEFAULT 0,
    disk_gb    INTEGER NOT NULL DEFAULT 0,
    snapshots  INTEGER NOT NULL DEFAULT 0
);

INSERT INTO host_allocations (host_id, vms, cpu, memory_mib, disk_gb)
SELECT host_id, COUNT(*), SUM(cpu), SUM(memory_mib), SUM(disk_gb)
FROM vms GROUP BY host_id;

INSERT INTO user_usage (user_id, vms, cpu, memory_mib, disk_gb, snapshots)
SELECT u.id,
       (SELECT COUNT(*) FROM vms v WHERE v.owner_id = u.id),
       (SELECT COALESCE(SUM(v.cpu), 0) FROM vms v WHERE v.owner_id = u.id),
       (SELECT COALESCE(SUM(v.memory_mib), 0) FROM vms v WHERE v.owner_id = u.id),
       (SELECT COALESCE(SUM(v.disk_gb), 0) FROM vms v WHERE v.owner_id = u.id),
       (SELECT COUNT(*) FROM snapshots s WHERE s.owner_id = u.id)
FROM users u;

-- Lists in keyset order (`created_at`, `id`), whole or by owner, host or status.
CREATE INDEX vms_by_created ON vms (created_at, id);
CREATE INDEX vms_by_owner_created ON vms (owner_id, created_at, id);
CREATE INDEX vms_by_host_created ON vms (host_id, created_at, id);
CREATE INDEX vms_by_status_created ON vms (status, created_at, id);
DROP INDEX vms_by_host;
CREATE INDEX snapshots_by_vm_created ON snapshots (vm_id, created_at, id);
CREATE INDEX operations_by_created ON operations (created_at, id);
CREATE INDEX operations_by_user_created ON operations (user_id, created_at, id);
-- Whether a VM's create was acknowledged, when its host's inventory lacks it.
CREATE INDEX operations_by_vm ON operations (vm_id, kind, status);
CREATE INDEX users_by_created ON users (created_at, id);

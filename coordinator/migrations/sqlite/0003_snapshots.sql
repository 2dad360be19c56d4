-- VM snapshots. The snapshot's data lives inside its VM's disk image on the host (internal
-- qcow2 snapshot named after the snapshot's ID); this row is the record of it.
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY NOT NULL,
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    owner_id    TEXT NOT NULL REFERENCES users (id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- Whether the VM was running or stopped when the snapshot was taken; a restore brings
    -- it back to that.
    vm_status   TEXT NOT NULL CHECK (vm_status IN ('running', 'stopped')),
    status      TEXT NOT NULL CHECK (status IN ('creating', 'ready', 'deleting', 'error')),
    created_at  TEXT NOT NULL,
    UNIQUE (vm_id, name)
);

CREATE INDEX snapshots_by_owner ON snapshots (owner_id);

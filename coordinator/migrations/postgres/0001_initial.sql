-- PostgreSQL version of migrations/sqlite/0001_initial.sql: the same schema; integers are BIGINT (SQLite's
-- INTEGER is 64-bit), timestamps stay RFC 3339 UTC text so both databases order them alike.

-- Users, hosts, VMs and operations. Timestamps are RFC 3339 UTC text; IDs are UUID text.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at    TEXT NOT NULL
);

-- One row per host that has ever registered. `status` is 'connected' while its agent's
-- stream is up, 'unreachable' otherwise.
CREATE TABLE hosts (
    id                TEXT PRIMARY KEY NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('connected', 'unreachable')),
    cpus              BIGINT NOT NULL,
    memory_mib        BIGINT NOT NULL,
    disk_gb           BIGINT NOT NULL,
    libvirt_version   TEXT NOT NULL,
    hypervisor        TEXT NOT NULL,
    kvm_usable        BIGINT NOT NULL,
    agent_version     TEXT NOT NULL,
    libvirt_connected BIGINT NOT NULL DEFAULT 1,
    last_seen_at      TEXT NOT NULL
);

CREATE TABLE vms (
    id            TEXT PRIMARY KEY NOT NULL,
    owner_id      TEXT NOT NULL REFERENCES users (id),
    name          TEXT NOT NULL,
    host_id       TEXT NOT NULL REFERENCES hosts (id),
    cpu           BIGINT NOT NULL,
    memory_mib    BIGINT NOT NULL,
    disk_gb       BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN
                      ('creating', 'running', 'paused', 'stopped', 'deleting', 'unknown', 'error')),
    status_reason TEXT,
    -- The newest state-report generation applied from the host; reports with a generation
    -- not above it are stale and change nothing.
    generation    BIGINT NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE INDEX vms_by_host ON vms (host_id);

CREATE TABLE operations (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    vm_id       TEXT NOT NULL,
    host_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    error       TEXT,
    created_at  TEXT NOT NULL,
    finished_at TEXT
);

-- At most one operation in flight per VM: the insert of a second one fails, atomically.
CREATE UNIQUE INDEX operations_one_pending_per_vm ON operations (vm_id) WHERE status = 'pending';

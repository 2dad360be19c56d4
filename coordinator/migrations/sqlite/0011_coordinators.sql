-- Several coordinators on one database (PostgreSQL): who they are, which one holds each
-- host's session, which one carries each operation, and the commands one coordinator asks
-- another to send to a host whose session that other one holds. A coordinator alone on its
-- database (SQLite) writes the same columns and never needs the rest.

-- Every running coordinator, with a lease it renews every second: a coordinator whose lease
-- has expired is dead, and what it left (operations in flight, host sessions) is settled by
-- the living ones. A restarted coordinator is a new row.
CREATE TABLE coordinators (
    id               TEXT PRIMARY KEY NOT NULL,
    grpc_addr        TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    lease_expires_at TEXT NOT NULL
);

-- The coordinator holding the host's current session (NULL: none since this migration).
-- The host's own lease is `last_seen_at` (renewed by each heartbeat of that session) plus
-- the configured HOST_DEAD_AFTER: only once it has expired may another coordinator mark the
-- host unreachable, so a coordinator's death alone never marks its hosts down.
ALTER TABLE hosts ADD COLUMN coordinator_id TEXT;

-- The coordinator whose request started the operation, which applies its outcome.
ALTER TABLE operations ADD COLUMN coordinator_id TEXT;

-- A command for a host whose session another coordinator holds: the requesting coordinator
-- inserts it `queued` and notifies the holder (`NOTIFY vmm_routed`); the holder sends it
-- down the session (`sent`), writes the host's answer back (`answered`, the encoded
-- CommandResult), `undeliverable` when it no longer holds the session, or `lost` when the
-- session ended before the host answered, and notifies
-- the requester, which applies the outcome as for a local command and deletes the row.
-- `command` is the encoded Command, which for a create may carry cloud-init user data:
-- the row lives only while the command is in flight.
CREATE TABLE routed_commands (
    operation_id TEXT PRIMARY KEY NOT NULL,
    host_id      TEXT NOT NULL,
    holder       TEXT NOT NULL,
    requester    TEXT NOT NULL,
    command      BLOB NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'answered', 'undeliverable', 'lost')),
    result       BLOB,
    created_at   TEXT NOT NULL
);

CREATE INDEX routed_commands_by_holder ON routed_commands (holder, status);

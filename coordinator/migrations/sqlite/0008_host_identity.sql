-- Host identity: host IDs without case, hosts an admin drains, join tokens, the certificates
-- issued to agents, and generations no host can push beyond reach.

-- Host IDs are case-insensitive from now on (`HostId` parses to lower case). Every row keeps
-- its host under the lower-case spelling. Where two spellings of one ID exist (`HOST-A` made
-- by an impostor beside the real `host-a`), the row already in lower case keeps the name (or,
-- if none is, the one seen last); every other one becomes `<id>.case-variant-<n>`, a name no
-- agent registers unless an admin enrols it, so that it can be inspected and deleted with
-- `DELETE /api/hosts/{id}` once its VMs are gone. Children follow their host: foreign keys
-- are checked at commit, when parents and children agree again.
PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE host_renames AS
SELECT old_id, new_id FROM (
    SELECT id AS old_id,
           CASE WHEN spelling = 1 THEN lower(id)
                ELSE lower(id) || '.case-variant-' || (spelling - 1) END AS new_id
    FROM (
        SELECT id, ROW_NUMBER() OVER (
                   PARTITION BY lower(id)
                   ORDER BY (id = lower(id)) DESC, last_seen_at DESC, id
               ) AS spelling
        FROM hosts
    )
)
WHERE old_id <> new_id;

UPDATE hosts SET id = (SELECT new_id FROM host_renames WHERE old_id = hosts.id)
WHERE id IN (SELECT old_id FROM host_renames);
UPDATE vms SET host_id = (SELECT new_id FROM host_renames WHERE old_id = vms.host_id)
WHERE host_id IN (SELECT old_id FROM host_renames);
UPDATE host_images SET host_id = (SELECT new_id FROM host_renames WHERE old_id = host_images.host_id)
WHERE host_id IN (SELECT old_id FROM host_renames);
-- Operations are history (no foreign key): their host is written the way hosts are now.
UPDATE operations SET host_id = COALESCE(
    (SELECT new_id FROM host_renames WHERE old_id = operations.host_id), lower(host_id))
WHERE host_id <> lower(host_id);

DROP TABLE host_renames;

-- A generation is the reporting agent's clock in microseconds. One further ahead than a day
-- was not written by a working clock (a report of 2^63-1 wedged its VM for good): such VMs
-- start over, and the next report of their host settles them. From now on a report beyond
-- the coordinator's clock plus a small allowance is refused (`vms::reports`).
UPDATE vms SET generation = 0
WHERE generation > (CAST(strftime('%s', 'now') AS INTEGER) + 86400) * 1000000;

-- Set while an admin has drained the host: no new VM is placed on it; its VMs stay.
ALTER TABLE hosts ADD COLUMN drained_at TEXT;

-- Single-use join tokens an admin made for a host ID. Only the SHA-256 of the secret is
-- kept; the secret was shown once, when the token was made.
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    host_id    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    -- When an agent enrolled with it; a used token never works again.
    used_at    TEXT
);

CREATE INDEX join_tokens_by_host ON join_tokens (host_id);

-- Every certificate the coordinator's CA issued to an agent, by serial number (lower-case
-- hex). An agent is accepted only with a certificate recorded here for its host and not
-- revoked; deleting a host revokes all of its certificates. No foreign key to `hosts`: a
-- certificate is issued at enrolment, before the host's first registration makes its row.
CREATE TABLE host_certificates (
    serial     TEXT PRIMARY KEY NOT NULL,
    host_id    TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    revoked_at TEXT
);

CREATE INDEX host_certificates_by_host ON host_certificates (host_id);

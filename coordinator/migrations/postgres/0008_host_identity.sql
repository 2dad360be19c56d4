-- PostgreSQL version of migrations/sqlite/0008_host_identity.sql: the same schema and data
-- changes. Host renames need the foreign keys to `hosts` checked at commit, as SQLite's
-- `defer_foreign_keys` does: they are made deferrable (PostgreSQL's default names) and
-- deferred for this transaction. `host_allocations` exists only where 0009 ran first (a
-- database made before this migration existed); its rows follow their host too.

ALTER TABLE vms ALTER CONSTRAINT vms_host_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE host_images ALTER CONSTRAINT host_images_host_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
DO $$
BEGIN
    IF to_regclass('host_allocations') IS NOT NULL THEN
        EXECUTE 'ALTER TABLE host_allocations ALTER CONSTRAINT host_allocations_host_id_fkey '
             || 'DEFERRABLE INITIALLY IMMEDIATE';
    END IF;
END
$$;
SET CONSTRAINTS ALL DEFERRED;

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
    ) AS spellings
) AS renames
WHERE old_id <> new_id;

UPDATE hosts SET id = (SELECT new_id FROM host_renames WHERE old_id = hosts.id)
WHERE id IN (SELECT old_id FROM host_renames);
UPDATE vms SET host_id = (SELECT new_id FROM host_renames WHERE old_id = vms.host_id)
WHERE host_id IN (SELECT old_id FROM host_renames);
UPDATE host_images SET host_id = (SELECT new_id FROM host_renames WHERE old_id = host_images.host_id)
WHERE host_id IN (SELECT old_id FROM host_renames);
DO $$
BEGIN
    IF to_regclass('host_allocations') IS NOT NULL THEN
        EXECUTE 'UPDATE host_allocations SET host_id = '
             || '(SELECT new_id FROM host_renames WHERE old_id = host_allocations.host_id) '
             || 'WHERE host_id IN (SELECT old_id FROM host_renames)';
    END IF;
END
$$;
-- Operations are history (no foreign key): their host is written the way hosts are now.
UPDATE operations SET host_id = COALESCE(
    (SELECT new_id FROM host_renames WHERE old_id = operations.host_id), lower(host_id))
WHERE host_id <> lower(host_id);

DROP TABLE host_renames;

-- A generation is the reporting agent's clock in microseconds. One further ahead than a day
-- was not written by a working clock: such VMs start over (see the SQLite version).
UPDATE vms SET generation = 0
WHERE generation > (CAST(EXTRACT(EPOCH FROM now()) AS BIGINT) + 86400) * 1000000;

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
-- hex). No foreign key to `hosts`: a certificate is issued at enrolment, before the host's
-- first registration makes its row.
CREATE TABLE host_certificates (
    serial     TEXT PRIMARY KEY NOT NULL,
    host_id    TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    revoked_at TEXT
);

CREATE INDEX host_certificates_by_host ON host_certificates (host_id);

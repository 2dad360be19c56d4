-- PostgreSQL version of migrations/sqlite/0012_console_routing.sql: the same schema.
-- Consoles with several coordinators: a console relays bytes through the coordinator holding
-- its host's session, so a ticket asked for at another coordinator is written here for the
-- holder to redeem, and points the client at the holder's public URL.

-- The URL clients reach this coordinator at directly (PUBLIC_URL), if it has one.
ALTER TABLE coordinators ADD COLUMN public_url TEXT;

-- A console ticket issued by one coordinator for a host whose session another holds. Only
-- the SHA-256 of the ticket is kept; redeeming deletes the row, so a ticket is used once
-- whichever coordinator it reaches. Rows live for the ticket's lifetime (seconds).
CREATE TABLE console_tickets (
    ticket_sha256 TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    vm_id         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    take_over     BIGINT NOT NULL,
    expires_at    TEXT NOT NULL
);

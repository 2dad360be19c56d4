-- PostgreSQL version of migrations/sqlite/0010_api_tokens.sql: the same schema.
-- Personal API tokens for scripts and automation. The secret itself is never stored: only
-- its SHA-256 (hex), which is enough for a random 256-bit secret (no dictionary to try, so a
-- slow password hash would add nothing), and its first characters to recognise it by.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    owner_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    token_sha256 TEXT NOT NULL UNIQUE,
    -- `vmm_pat_` and the first characters of the secret, shown in lists.
    prefix       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    -- NULL: never expires.
    expires_at   TEXT,
    -- Updated at most once a minute.
    last_used_at TEXT,
    UNIQUE (owner_id, name)
);

CREATE INDEX api_tokens_by_owner ON api_tokens (owner_id, created_at, id);
CREATE INDEX api_tokens_by_created ON api_tokens (created_at, id);

-- PostgreSQL version of migrations/sqlite/0004_idempotency_keys.sql: the same schema; integers are BIGINT (SQLite's
-- INTEGER is 64-bit), timestamps stay RFC 3339 UTC text so both databases order them alike.

-- Client retries: a create sent again with the same `Idempotency-Key` by the same user gets
-- the first request's answer instead of creating something new. The key row is written in
-- the same transaction that records the new resource, so concurrent duplicates cannot both
-- create. `response_status`/`response_body` stay NULL until the first request has answered.
CREATE TABLE idempotency_keys (
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    -- What the key was first used for (method, path and body digest): reusing a key for a
    -- different request is refused.
    request_digest  TEXT NOT NULL,
    response_status BIGINT,
    response_body   TEXT,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);

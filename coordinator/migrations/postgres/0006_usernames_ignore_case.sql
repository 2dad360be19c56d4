-- PostgreSQL version of migrations/sqlite/0006_usernames_ignore_case.sql: the same schema; integers are BIGINT (SQLite's
-- INTEGER is 64-bit), timestamps stay RFC 3339 UTC text so both databases order them alike.

-- Usernames are unique regardless of case: `Admin` and `admin` are one account. Each user
-- keeps the name as registered (`username`, shown everywhere) and gets `username_key`, the
-- name in lower case (usernames are ASCII), which login looks up and which is unique.
--
-- Accounts that existed before and differ only in case: the oldest keeps the name (it was
-- there first; a later look-alike is the likelier impersonation). Each later one keeps its
-- row, its resources and its displayed name, but its key becomes `<name>#<id>`, which no
-- login name can match (`#` is not allowed in usernames): it can no longer log in until an
-- administrator deals with it (`GET /api/admin/users` lists it; delete it, or have its VMs
-- deleted first). The coordinator logs each such account at start.
ALTER TABLE users ADD COLUMN username_key TEXT NOT NULL DEFAULT '';

UPDATE users SET username_key = lower(username);

UPDATE users SET username_key = lower(username) || '#' || id
WHERE EXISTS (
    SELECT 1 FROM users AS older
    WHERE lower(older.username) = lower(users.username)
      AND (older.created_at < users.created_at
           OR (older.created_at = users.created_at AND older.id < users.id))
);

CREATE UNIQUE INDEX users_by_username_key ON users (username_key);

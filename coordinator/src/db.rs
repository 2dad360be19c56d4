//! The coordinator's database: opening it and running the versioned migrations in
//! `coordinator/migrations/` at start. SQLite in the data directory is the embedded default.
//!
//! Writers that read-then-write (placement, starting an operation) open their transaction
//! with `BEGIN IMMEDIATE`, which takes SQLite's write lock up front, so two of them can never
//! interleave between the read and the write.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub type Db = sqlx::SqlitePool;
pub type DbTransaction = sqlx::Transaction<'static, sqlx::Sqlite>;

/// The `DATABASE_URL` used when none is configured: `coordinator.db` in the data dir.
pub fn default_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("coordinator.db").display())
}

pub async fn connect(url: &str) -> anyhow::Result<Db> {
    if !url.starts_with("sqlite:") {
        anyhow::bail!(
            "DATABASE_URL {url:?} is not supported: this build stores its data in SQLite \
             (use a sqlite:// URL or leave DATABASE_URL unset)"
        );
    }
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("DATABASE_URL {url:?} is not a valid SQLite URL"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the database at {url}"))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("cannot apply the database migrations")?;
    Ok(pool)
}

/// Opens a transaction that holds SQLite's write lock from its first statement.
pub async fn begin_write(db: &Db) -> Result<DbTransaction, sqlx::Error> {
    db.begin_with("BEGIN IMMEDIATE").await
}

/// True when `err` is a violation of a UNIQUE constraint or index.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The current time as stored in the database.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A count or size as stored: SQL integers are signed 64-bit.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored status or role that names none of its enum's values (the enums are the API's,
/// stored as their text: see `vmm_shared::api`).
pub use vmm_shared::api::UnknownValue;

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 0006 on a database whose users differ only in case: the oldest keeps the
    /// name and logs in, the later look-alikes keep their rows but no login name reaches
    /// them, and from then on no such pair can be created.
    #[tokio::test]
    async fn usernames_equal_but_for_case_keep_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let url = default_url(dir.path());
        let before = dir.path().join("migrations-before-0006");
        std::fs::create_dir(&before).unwrap();
        let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for entry in std::fs::read_dir(&all).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.as_str() < "0006" {
                std::fs::copy(&path, before.join(&name)).unwrap();
            }
        }
        {
            let options = SqliteConnectOptions::from_str(&url)
                .unwrap()
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .connect_with(options)
                .await
                .unwrap();
            sqlx::migrate::Migrator::new(before.as_path())
                .await
                .unwrap()
                .run(&pool)
                .await
                .unwrap();
            for (id, name, created) in [
                (
                    "00000000-0000-4000-8000-000000000002",
                    "Admin",
                    "2025-01-02T00:00:00.000Z",
                ),
                (
                    "00000000-0000-4000-8000-000000000001",
                    "admin",
                    "2025-01-01T00:00:00.000Z",
                ),
                (
                    "00000000-0000-4000-8000-000000000003",
                    "ADMIN",
                    "2025-01-03T00:00:00.000Z",
                ),
                (
                    "00000000-0000-4000-8000-000000000004",
                    "bob",
                    "2025-01-01T00:00:00.000Z",
                ),
            ] {
                sqlx::query(
                    "INSERT INTO users (id, username, password_hash, role, created_at)
                     VALUES (?, ?, 'hash', 'user', ?)",
                )
                .bind(id)
                .bind(name)
                .bind(created)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }

        let db = connect(&url).await.unwrap();
        let found = crate::users::store::find_by_username(&db, "ADMIN")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.username, "admin", "the oldest keeps the name");
        assert_eq!(
            crate::users::store::find_by_username(&db, "Bob")
                .await
                .unwrap()
                .unwrap()
                .username,
            "bob"
        );
        assert_eq!(
            crate::users::store::shadowed_by_case(&db).await.unwrap(),
            ["ADMIN", "Admin"],
            "the later look-alikes are kept, and named for the operator"
        );
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(users, 4, "no row is lost");
        let taken = crate::users::store::insert(&db, "BOB", "hash", crate::users::Role::User)
            .await
            .unwrap_err();
        assert!(
            matches!(taken, crate::users::store::Error::UsernameTaken(_)),
            "{taken}"
        );
        crate::users::store::insert(&db, "carol", "hash", crate::users::Role::User)
            .await
            .unwrap();
    }
}

//! The coordinator's database: opening it and running the versioned migrations at start.
//! SQLite in the data directory is the embedded default (`migrations/sqlite/`); PostgreSQL
//! when `DATABASE_URL` is a `postgres://` URL (`migrations/postgres/`), which is what several
//! coordinators share. Both run the same SQL through sqlx's `Any` driver: placeholders are
//! `$N` (which both read), integers are 64-bit, booleans are stored as 0/1 integers
//! ([`Flag`]) and timestamps as RFC 3339 text, so no query depends on the database.
//!
//! Writers that read-then-write (placement, starting an operation) open their transaction
//! with [`begin_write`]: `BEGIN IMMEDIATE` on SQLite, which takes SQLite's write lock up
//! front; on PostgreSQL a transaction-scoped advisory lock ([`WRITE_LOCK`]) taken as the
//! transaction's first statement, the same guarantee among every coordinator on the
//! database: two of them can never interleave between the read and the write.
//!
//! Before either, a writer of this process waits for its turn at the database's write gate
//! (first come, first served, without holding a pooled connection), so the writers of one
//! process never contend for the database's lock among themselves: SQLite's busy handler
//! would otherwise poll for it with growing sleeps (up to 100 ms), leaving the lock idle
//! between writers and pooled connections held by sleepers, and PostgreSQL would hold one
//! pooled connection per waiting writer.
//!
//! Small writes that come many at a time (heartbeats, registrations and their clean-ups,
//! claims, operation answers) share one transaction per turn at the gate instead:
//! [`group_write`] (see [`group_commit`]).
//!
//! The reads that answer the most requests go through [`Reads`]: on a SQLite file they run on
//! the calling thread with connections of their own, without sqlx's hand-off to a
//! connection's thread (`db/direct_reads.rs`); the same SQL and row decoding serve both paths.
//!
//! This module must never hold a database-specific query outside [`Backend`] branches.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions};
use sqlx::{Arguments, ConnectOptions, Executor};

mod direct_reads;
mod group_commit;
pub use direct_reads::{Columns, FromColumns, Reads, from_any_row};
pub use group_commit::group_write;

pub type Db = sqlx::AnyPool;
pub type DbTransaction = sqlx::Transaction<'static, sqlx::Any>;
pub type DbConnection = sqlx::AnyConnection;

/// The advisory lock key every [`begin_write`] transaction on PostgreSQL takes: the
/// analogue of SQLite's single write lock, shared by all coordinators on the database.
pub const WRITE_LOCK: i64 = 0x766d_6d5f_7772_6974; // "vmm_writ"

/// Which database a [`Db`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a `DATABASE_URL`, or a message saying which ones are supported.
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!(
                "DATABASE_URL {:?} is not supported: use a sqlite:// URL (the default, a file in \
                 the data directory) or a postgres:// URL",
                redact_url(url)
            )
        }
    }

    /// The collation that orders text by its bytes, as Rust orders strings (`ORDER BY x
    /// COLLATE <this>`): PostgreSQL's default follows the database's locale.
    pub fn bytewise_collation(self) -> &'static str {
        match self {
            Backend::Sqlite => "BINARY",
            Backend::Postgres => "\"C\"",
        }
    }

    /// The backend of an open pool.
    pub fn of(db: &Db) -> Self {
        if db.connect_options().database_url.scheme() == "sqlite" {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

/// `url` without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The `DATABASE_URL` used when none is configured: `coordinator.db` in the data dir.
pub fn default_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("coordinator.db").display())
}

/// Opens the database at `url` and brings its schema up to date.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let pool = open(url).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Opens the database at `url` without touching its schema.
pub async fn open(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url)?;
    let shown = redact_url(url);
    let mut url = url.to_owned();
    if backend == Backend::Sqlite && !url.contains("mode=") {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("mode=rwc");
    }
    let options = AnyConnectOptions::from_str(&url)
        .with_context(|| format!("DATABASE_URL {shown:?} is not a valid database URL"))?
        .disable_statement_logging();
    let pool = match backend {
        Backend::Sqlite => AnyPoolOptions::new()
            .max_connections(8)
            // A connection to a local file does not go stale the way a network connection
            // can: no ping (a round trip to the connection's thread) before every use.
            .test_before_acquire(false)
            // Savepoints' journals in memory, not temporary files (every grouped write is a
            // savepoint, see `group_commit`); 8 MiB of page cache per connection rather than
            // 2, for the indexes a reconnect storm's updates walk; the write-ahead log copied
            // back by [`checkpoints`], the writer's commits doing it only past 32 MiB.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192; \
                         PRAGMA wal_autocheckpoint = 8192;",
                    )
                    .await?;
                    Ok(())
                })
            }),
        Backend::Postgres => AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30)),
    }
    .connect_with(options)
    .await
    .with_context(|| format!("cannot open the database at {shown}"))?;
    Ok(pool)
}

/// How often [`checkpoints`] copies SQLite's write-ahead log back into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// SQLite: copies the write-ahead log back into the database file every [`CHECKPOINT_EVERY`]
/// until `stop` turns true, from a pooled connection (a thread) of its own, in a passive
/// checkpoint, which never waits for the writer nor holds it up. Otherwise the commit that
/// takes the log past `wal_autocheckpoint` copies it, and the one writer waits meanwhile.
/// Nothing to do on PostgreSQL.
pub async fn checkpoints(db: Db, mut stop: tokio::sync::watch::Receiver<bool>) {
    if Backend::of(&db) != Backend::Sqlite {
        return;
    }
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&db)
            .await
        {
            tracing::warn!(error = %err, "cannot checkpoint the database's write-ahead log");
        }
    }
}

/// Applies the migrations of the database's kind that it has not applied yet.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    let migrator = match Backend::of(db) {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    };
    migrator
        .run(db)
        .await
        .context("cannot apply the database migrations")
}

/// A transaction that holds the database's write lock from its first statement (see
/// [`begin_write`]), and this process's turn at the write gate until it ends. Used as the
/// connection it runs on (`&mut *tx`); ends with [`WriteTransaction::commit`], or rolls back
/// when dropped.
pub struct WriteTransaction {
    // Declared first, so that a dropped transaction starts its rollback before the next
    // writer of this process gets its turn.
    tx: DbTransaction,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTransaction {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl Deref for WriteTransaction {
    type Target = DbConnection;

    fn deref(&self) -> &DbConnection {
        &self.tx
    }
}

impl DerefMut for WriteTransaction {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.tx
    }
}

/// What the writers of this process share per database: the write gate and the writes
/// queued at it for a group commit.
#[derive(Default)]
struct Writers {
    gate: Arc<tokio::sync::Mutex<()>>,
    queue: group_commit::Queue,
}

/// The writers of the database `db` opens, shared by every pool of this process on the same
/// database (the same URL).
fn writers(db: &Db) -> Arc<Writers> {
    static WRITERS: OnceLock<Mutex<HashMap<String, Arc<Writers>>>> = OnceLock::new();
    let url = db.connect_options().database_url.to_string();
    let mut writers = WRITERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(writers.entry(url).or_default())
}

/// The write gate of the database `db` opens (see [`writers`]).
fn write_gate(db: &Db) -> Arc<tokio::sync::Mutex<()>> {
    Arc::clone(&writers(db).gate)
}

/// This process's turn to write to `db`, for a single statement written outside a
/// [`begin_write`] transaction (a heartbeat, say): held while the statement runs, it keeps
/// the statement from contending with this process's other writers for the database's
/// lock. Never held while opening a [`begin_write`] transaction (that waits for the turn
/// itself).
pub async fn write_turn(db: &Db) -> tokio::sync::OwnedMutexGuard<()> {
    write_gate(db).lock_owned().await
}

/// Opens a transaction that holds the database's write lock from its first statement,
/// after this process's earlier writers (the write gate, see the module docs).
pub async fn begin_write(db: &Db) -> Result<WriteTransaction, sqlx::Error> {
    let turn = write_gate(db).lock_owned().await;
    let tx = begin_transaction(db).await?;
    Ok(WriteTransaction { tx, _turn: turn })
}

/// Opens a transaction that holds the database's write lock from its first statement; the
/// caller holds this process's turn at the write gate.
async fn begin_transaction(db: &Db) -> Result<DbTransaction, sqlx::Error> {
    Ok(match Backend::of(db) {
        Backend::Sqlite => db.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => {
            let mut tx = db.begin().await?;
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            tx
        }
    })
}

/// A query assembled from pieces, whose values are bound as `$1`, `$2`, … in order (sqlx's
/// `QueryBuilder` writes `?` for the `Any` driver, which PostgreSQL does not read).
pub struct SqlBuilder {
    sql: String,
    arguments: AnyArguments,
    /// The values bound so far, while every one came through [`SqlBuilder::push_value`]
    /// (what [`Reads`] can bind without sqlx).
    values: Option<Vec<SqlValue>>,
    error: Option<sqlx::error::BoxDynError>,
}

/// A value both sqlx and [`Reads`]' direct path can bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlValue {
    Int(i64),
    Text(String),
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> Self {
        SqlValue::Int(value)
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        SqlValue::Text(value)
    }
}

impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        SqlValue::Text(value.to_owned())
    }
}

impl SqlBuilder {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            arguments: AnyArguments::default(),
            values: Some(Vec::new()),
            error: None,
        }
    }

    /// The statement's text so far.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The values bound, in order; `None` once one was bound by [`SqlBuilder::push_bind`].
    pub fn values(&self) -> Option<&[SqlValue]> {
        self.values.as_deref()
    }

    /// Appends a placeholder bound to `value`, which any read path can bind.
    pub fn push_value(&mut self, value: impl Into<SqlValue>) -> &mut Self {
        let value = value.into();
        let added = match &value {
            SqlValue::Int(int) => self.arguments.add(*int),
            SqlValue::Text(text) => self.arguments.add(text.clone()),
        };
        if let Err(err) = added {
            self.error.get_or_insert(err);
        }
        if let Some(values) = &mut self.values {
            values.push(value);
        }
        let index = self.arguments.len();
        self.push(format_args!("${index}"))
    }

    /// Appends SQL text as is; never a value from a request (use [`SqlBuilder::push_bind`]).
    pub fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.sql, "{sql}");
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn push_bind<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + 'q,
    {
        if let Err(err) = self.arguments.add(value) {
            self.error.get_or_insert(err);
        }
        self.values = None;
        let index = self.arguments.len();
        self.push(format_args!("${index}"))
    }

    /// The statement, or the error of a value that could not be bound.
    pub fn build_query(
        self,
    ) -> Result<sqlx::query::Query<'static, sqlx::Any, AnyArguments>, sqlx::Error> {
        match self.error {
            Some(err) => Err(sqlx::Error::Encode(err)),
            None => Ok(sqlx::query_with(
                sqlx::AssertSqlSafe(self.sql),
                self.arguments,
            )),
        }
    }

    /// The query, or the error of a value that could not be bound.
    pub fn build_query_as<O>(
        self,
    ) -> Result<sqlx::query::QueryAs<'static, sqlx::Any, O, AnyArguments>, sqlx::Error>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        match self.error {
            Some(err) => Err(sqlx::Error::Encode(err)),
            None => Ok(sqlx::query_as_with(
                sqlx::AssertSqlSafe(self.sql),
                self.arguments,
            )),
        }
    }
}

/// A boolean stored as a 0/1 integer (SQLite has no boolean type; the `Any` driver reads
/// PostgreSQL's `boolean` but not SQLite's integers as `bool`). Bind `i64::from(flag)`; read
/// a column into `bool` with `#[sqlx(try_from = "Flag")]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(flag: Flag) -> bool {
        flag.0
    }
}

impl sqlx::Type<sqlx::Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        ty.kind().is_integer() || ty.kind() == sqlx::any::AnyTypeInfoKind::Bool
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if <i64 as sqlx::Type<sqlx::Any>>::compatible(&sqlx::ValueRef::type_info(&value)) {
            Ok(Flag(<i64 as sqlx::Decode<sqlx::Any>>::decode(value)? != 0))
        } else {
            Ok(Flag(<bool as sqlx::Decode<sqlx::Any>>::decode(value)?))
        }
    }
}

/// The database a test whose files live in `dir` uses: a fresh PostgreSQL database on the
/// server `VMM_TEST_POSTGRES_URL` names (an administrative URL, e.g. the one
/// `scripts/start-postgres.sh` prints), or SQLite in `dir` when that is unset. The same
/// `dir` always gets the same database (its URL is kept in `dir`), so a test can reopen it.
pub async fn test_database_url(dir: &Path) -> String {
    let Ok(server) = std::env::var("VMM_TEST_POSTGRES_URL") else {
        return default_url(dir);
    };
    let kept = dir.join(".postgres-url");
    if let Ok(url) = std::fs::read_to_string(&kept) {
        return url;
    }
    let url = create_test_database(&server)
        .await
        .unwrap_or_else(|err| panic!("cannot create a test database on {server}: {err:#}"));
    std::fs::write(&kept, &url).expect("cannot record the test database's URL");
    url
}

/// Creates an empty database with a new name on the PostgreSQL server at `server` and
/// returns its URL.
pub async fn create_test_database(server: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!("vmm_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let mut url = url::Url::parse(server)?;
    url.set_path(&name);
    Ok(url.to_string())
}

/// True when `err` is a violation of a UNIQUE constraint or index.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The current time as stored in the database.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A moment as stored, in the same form as [`now`] (so that stored times compare as text).
pub fn timestamp(at: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    /// Migration 0006 on a database whose users differ only in case: the oldest keeps the
    /// name and logs in, the later look-alikes keep their rows but no login name reaches
    /// them, and from then on no such pair can be created.
    #[tokio::test]
    async fn usernames_equal_but_for_case_keep_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let url = default_url(dir.path());
        let before = dir.path().join("migrations-before-0006");
        std::fs::create_dir(&before).unwrap();
        let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
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
                     VALUES ($1, $2, 'hash', 'user', $3)",
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

    /// A directory in `dir` holding a copy of the migrations of `backend` (`sqlite` or
    /// `postgres`) whose names sort before `first_left_out`.
    fn migrations_before(dir: &Path, backend: &str, first_left_out: &str) -> std::path::PathBuf {
        let before = dir.join(format!("migrations-before-{first_left_out}"));
        std::fs::create_dir(&before).unwrap();
        let all = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        for entry in std::fs::read_dir(&all).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.as_str() < first_left_out {
                std::fs::copy(&path, before.join(&name)).unwrap();
            }
        }
        before
    }

    /// A SQLite database migrated up to (not including) the migration whose name starts
    /// with `first_left_out`, and its URL.
    async fn migrated_before(dir: &Path, first_left_out: &str) -> (String, sqlx::SqlitePool) {
        let url = default_url(dir);
        let before = migrations_before(dir, "sqlite", first_left_out);
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(true);
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
        (url, pool)
    }

    /// The test database ([`test_database_url`]: SQLite in `dir`, or PostgreSQL) migrated
    /// up to (not including) the migration whose name starts with `first_left_out`, and
    /// its URL.
    async fn test_database_migrated_before(dir: &Path, first_left_out: &str) -> (String, Db) {
        let url = test_database_url(dir).await;
        let db = open(&url).await.unwrap();
        let backend = match Backend::of(&db) {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let before = migrations_before(dir, backend, first_left_out);
        sqlx::migrate::Migrator::new(before.as_path())
            .await
            .unwrap()
            .run(&db)
            .await
            .unwrap();
        (url, db)
    }

    /// Migration 0008 on hosts recorded in several spellings (an impostor's `HOST-A` beside
    /// the real `host-a`) and a VM wedged by a generation of 2^63-1: every host ends up
    /// under a lower-case ID that the API can name, with its VMs, cached images and
    /// operations, and the wedged VM takes reports again.
    #[tokio::test]
    async fn host_ids_lose_their_case_and_wedged_generations_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let (url, pool) = migrated_before(dir.path(), "0008").await;
        let user = "00000000-0000-4000-8000-000000000001";
        sqlx::query(
            "INSERT INTO users (id, username, username_key, password_hash, role, created_at)
             VALUES (?, 'u', 'u', 'hash', 'user', '2025-01-01T00:00:00.000Z')",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        for (host, seen) in [
            ("host-a", "2025-01-01T00:00:00.000Z"),
            ("HOST-A", "2025-01-03T00:00:00.000Z"),
            ("Host-A", "2025-01-02T00:00:00.000Z"),
            ("KVM-1", "2025-01-01T00:00:00.000Z"),
        ] {
            sqlx::query(
                "INSERT INTO hosts (id, status, cpus, memory_mib, disk_gb, libvirt_version,
                                    hypervisor, kvm_usable, agent_version, last_seen_at)
                 VALUES (?, 'unreachable', 4, 4096, 100, '11', 'Test', 0, 't', ?)",
            )
            .bind(host)
            .bind(seen)
            .execute(&pool)
            .await
            .unwrap();
        }
        for (vm, host, generation) in [
            ("00000000-0000-4000-8000-00000000000a", "host-a", 5_i64),
            ("00000000-0000-4000-8000-00000000000b", "HOST-A", i64::MAX),
            ("00000000-0000-4000-8000-00000000000c", "KVM-1", 7),
        ] {
            sqlx::query(
                "INSERT INTO vms (id, owner_id, name, host_id, cpu, memory_mib, disk_gb, status,
                                  generation, created_at)
                 VALUES (?, ?, ?, ?, 1, 128, 1, 'running', ?, '2025-01-01T00:00:00.000Z')",
            )
            .bind(vm)
            .bind(user)
            .bind(vm)
            .bind(host)
            .bind(generation)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO operations (id, kind, vm_id, host_id, user_id, status, created_at)
                 VALUES (?, 'create', ?, ?, ?, 'succeeded', '2025-01-01T00:00:00.000Z')",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(vm)
            .bind(host)
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let db = connect(&url).await.unwrap();
        let hosts: Vec<String> = sqlx::query_scalar("SELECT id FROM hosts ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(
            hosts,
            [
                "host-a",
                "host-a.case-variant-1",
                "host-a.case-variant-2",
                "kvm-1"
            ],
            "the lower-case row keeps the name; the others get names the API can delete"
        );
        for name in &hosts {
            assert!(name.parse::<vmm_shared::HostId>().is_ok(), "{name}");
        }
        let vms: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT id, host_id, generation FROM vms ORDER BY id")
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(
            vms.iter()
                .map(|(_, host, generation)| (host.as_str(), *generation))
                .collect::<Vec<_>>(),
            [("host-a", 5), ("host-a.case-variant-1", 0), ("kvm-1", 7)],
            "VMs follow their host; the wedged generation starts over"
        );
        let operation_hosts: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT host_id FROM operations ORDER BY host_id")
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(
            operation_hosts,
            ["host-a", "host-a.case-variant-1", "kvm-1"]
        );
        let violations = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&db)
            .await
            .unwrap();
        assert!(violations.is_empty(), "no foreign key is left dangling");
    }

    /// Migration 0014 on a fleet recorded before it: a host that never had a VM (no totals
    /// row) gets one, every host's free memory is its memory less its VMs', and the ledger
    /// then holds; a create and a delete keep it holding.
    #[tokio::test]
    async fn every_host_gets_its_free_memory_for_the_placement_index() {
        let dir = tempfile::tempdir().unwrap();
        let (url, pool) = migrated_before(dir.path(), "0014").await;
        let user = "00000000-0000-4000-8000-000000000001";
        sqlx::query(
            "INSERT INTO users (id, username, username_key, password_hash, role, created_at)
             VALUES (?, 'u', 'u', 'hash', 'user', '2025-01-01T00:00:00.000Z')",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        for host in ["busy", "idle"] {
            sqlx::query(
                "INSERT INTO hosts (id, status, cpus, memory_mib, disk_gb, libvirt_version,
                                    hypervisor, kvm_usable, agent_version, last_seen_at)
                 VALUES (?, 'connected', 4, 4096, 100, '11', 'Test', 0, 't', '2025-01-01T00:00:00.000Z')",
            )
            .bind(host)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO vms (id, owner_id, name, host_id, cpu, memory_mib, disk_gb, status,
                              created_at)
             VALUES ('00000000-0000-4000-8000-00000000000a', ?, 'a', 'busy', 1, 1000, 1,
                     'running', '2025-01-01T00:00:00.000Z')",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO host_allocations (host_id, vms, cpu, memory_mib, disk_gb)
             VALUES ('busy', 1, 1, 1000, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO user_usage (user_id, vms, cpu, memory_mib, disk_gb) VALUES (?, 1, 1, 1000, 1)",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let db = connect(&url).await.unwrap();
        let free: Vec<(String, i64)> = sqlx::query_as(
            "SELECT host_id, free_memory_mib FROM host_allocations ORDER BY host_id",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert_eq!(free, [("busy".to_owned(), 3096), ("idle".to_owned(), 4096)]);
        let mut conn = db.acquire().await.unwrap();
        assert_eq!(
            crate::ledger::discrepancies(&mut conn).await.unwrap(),
            Vec::<(String, String)>::new()
        );
        let deleted = crate::ledger::delete_vm(
            &mut conn,
            "00000000-0000-4000-8000-00000000000a".parse().unwrap(),
        )
        .await
        .unwrap();
        assert!(deleted);
        let busy: i64 = sqlx::query_scalar(
            "SELECT free_memory_mib FROM host_allocations WHERE host_id = 'busy'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(busy, 4096, "the delete gave the memory back");
        assert_eq!(
            crate::ledger::discrepancies(&mut conn).await.unwrap(),
            Vec::<(String, String)>::new()
        );
    }

    /// Migration 0015 on hosts already recorded, on either backend: each allocation row is
    /// placeable exactly when its host is connected and not drained, and the triggers keep
    /// it so afterwards.
    #[tokio::test]
    async fn allocations_of_recorded_hosts_become_placeable_as_their_hosts_are() {
        let dir = tempfile::tempdir().unwrap();
        let (url, db) = test_database_migrated_before(dir.path(), "0015").await;
        for (host, status, drained_at) in [
            ("connected", "connected", None),
            ("drained", "connected", Some("2025-01-02T00:00:00.000Z")),
            ("lost", "unreachable", None),
        ] {
            sqlx::query(
                "INSERT INTO hosts (id, status, cpus, memory_mib, disk_gb, libvirt_version,
                                    hypervisor, kvm_usable, agent_version, last_seen_at,
                                    drained_at)
                 VALUES ($1, $2, 4, 4096, 100, '11', 'Test', 0, 't',
                         '2025-01-01T00:00:00.000Z', $3)",
            )
            .bind(host)
            .bind(status)
            .bind(drained_at)
            .execute(&db)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO host_allocations (host_id, vms, cpu, memory_mib, disk_gb)
                 VALUES ($1, 0, 0, 0, 0)",
            )
            .bind(host)
            .execute(&db)
            .await
            .unwrap();
        }
        db.close().await;

        let db = connect(&url).await.unwrap();
        let placeable = || async {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT host_id, CAST(placeable AS BIGINT) FROM host_allocations ORDER BY host_id",
            )
            .fetch_all(&db)
            .await
            .unwrap()
        };
        let flags = |connected, drained, lost| {
            vec![
                ("connected".to_owned(), connected),
                ("drained".to_owned(), drained),
                ("lost".to_owned(), lost),
            ]
        };
        assert_eq!(placeable().await, flags(1, 0, 0));
        sqlx::query(
            "UPDATE hosts SET status = CASE id WHEN 'connected' THEN 'unreachable'
                                               ELSE 'connected' END,
                              drained_at = NULL",
        )
        .execute(&db)
        .await
        .unwrap();
        assert_eq!(placeable().await, flags(0, 1, 1));
    }

    /// Writes below `wal_autocheckpoint` stay in the write-ahead log until [`checkpoints`]
    /// copies them into the database file, with no commit doing it.
    #[tokio::test]
    async fn the_write_ahead_log_is_copied_back_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&default_url(dir.path())).await.unwrap();
        let file = dir.path().join("coordinator.db");
        sqlx::query("CREATE TABLE filler (payload TEXT NOT NULL)")
            .execute(&db)
            .await
            .unwrap();
        for _ in 0..64 {
            sqlx::query("INSERT INTO filler (payload) VALUES ($1)")
                .bind("x".repeat(32 * 1024))
                .execute(&db)
                .await
                .unwrap();
        }
        let written = 64 * 32 * 1024;
        let before = std::fs::metadata(&file).unwrap().len();
        assert!(before < written / 4, "already in the file: {before} bytes");

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(checkpoints(db.clone(), stopped));
        let mut after = before;
        for _ in 0..100 {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            after = std::fs::metadata(&file).unwrap().len();
            if after >= written {
                break;
            }
        }
        assert!(
            after >= written,
            "the database file holds {after} bytes of {written}"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}

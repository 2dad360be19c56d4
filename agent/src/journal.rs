//! The operation journal: a small SQLite file (`<data-dir>/journal.db`) in which the agent
//! records every command it accepts *before* acting on it, and the command's result once it
//! is done. It is what makes commands exactly-once across restarts of either side:
//!
//! - A command whose operation ID is journaled with a result is answered with that stored
//!   result (the encoded `CommandResult`), byte for byte, and nothing is done again — also
//!   after the agent restarted.
//! - A command journaled as `accepted` but without a result was interrupted: the agent died
//!   while carrying it out. It is never simply redone; see [`crate::commands`] for how each
//!   kind resumes (a create first looks for the domain with the VM's UUID, and so on).
//! - The journal stays bounded: finished entries older than [`RETENTION`] are pruned, and
//!   beyond [`MAX_ENTRIES`] the oldest go first. The coordinator never re-sends an operation
//!   that old.
//!
//! Every write is committed with `synchronous=FULL` before the caller goes on, so an
//! `accepted` record survives a `kill -9` (and a power cut) that happens right after it.
//! rusqlite blocks: every call runs on the blocking thread pool, never on an async worker.
//!
//! Operations are recorded by their [`OperationKind`] (`snapshot_create`, ...). Rows written
//! before the agent shared that vocabulary with the coordinator name the snapshot kinds
//! `create_snapshot`, `restore_snapshot` and `delete_snapshot`; they are read as the same
//! kinds, so the repeat of such an operation after an upgrade is still recognised.
//!
//! The journal never decides anything about libvirt; it only remembers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use vmm_proto::CommandResult;
use vmm_shared::OperationKind;

/// The journal's file name inside the agent's data directory.
pub const JOURNAL_FILE: &str = "journal.db";
/// How long a finished operation is remembered.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How many operations are remembered at most.
pub const MAX_ENTRIES: u64 = 10_000;
/// Pruning runs at open and after every this many finished operations.
const PRUNE_EVERY: u64 = 256;

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS operations (
        operation_id TEXT PRIMARY KEY NOT NULL,
        vm_id        TEXT NOT NULL,
        kind         TEXT NOT NULL,
        -- accepted: being carried out (or cut short by the agent's death);
        -- interrupted: accepted by an earlier run that died, found at start;
        -- done: finished, with its result.
        state        TEXT NOT NULL CHECK (state IN ('accepted', 'interrupted', 'done')),
        -- The encoded vmm.agent.v1.CommandResult, once state = 'done'.
        result       BLOB,
        accepted_at  INTEGER NOT NULL,  -- Unix milliseconds
        finished_at  INTEGER            -- Unix milliseconds, once state = 'done'
    ) STRICT;
    CREATE INDEX IF NOT EXISTS operations_by_age ON operations (accepted_at);
";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the operation journal {path} cannot be opened (move it aside to start with an empty \
         journal; operations it remembers may then be repeated)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the operation journal cannot {action}")]
    Sql {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the stored result of operation {operation_id} cannot be decoded")]
    Decode {
        operation_id: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("operation {operation_id} is journaled with an unknown kind {kind:?}")]
    UnknownKind { operation_id: String, kind: String },
    #[error("the operation journal's worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
    move |source| JournalError::Sql { action, source }
}

/// What the journal knows of one operation.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalEntry {
    /// Accepted, no result yet: running now, or cut short by the death of this or an
    /// earlier run of the agent.
    Accepted { vm_id: String, kind: OperationKind },
    /// Done, with the result that was sent (boxed: a result is many times the size of the
    /// other variant).
    Done {
        vm_id: String,
        kind: OperationKind,
        result: Box<CommandResult>,
    },
}

impl JournalEntry {
    pub fn vm_id(&self) -> &str {
        match self {
            Self::Accepted { vm_id, .. } | Self::Done { vm_id, .. } => vm_id,
        }
    }

    pub fn kind(&self) -> OperationKind {
        match self {
            Self::Accepted { kind, .. } | Self::Done { kind, .. } => *kind,
        }
    }
}

/// An operation accepted by an earlier run of the agent that never got its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedOperation {
    pub operation_id: String,
    pub vm_id: String,
    /// As stored (see the module docs for older names).
    pub kind: String,
    pub accepted_at_unix_ms: i64,
}

/// Cheap-to-clone handle to the journal.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Mutex<Connection>,
    finished_since_prune: AtomicU64,
    retention: Duration,
    max_entries: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (or creates) `<data_dir>/journal.db` and prunes it. Blocks: call it before the
    /// agent serves anything, or from a blocking thread.
    pub fn open(data_dir: &Path) -> Result<Self, JournalError> {
        let path = data_dir.join(JOURNAL_FILE);
        let open_error = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let connection = Connection::open(&path).map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        let journal = Self::with_connection(connection, RETENTION, MAX_ENTRIES).map_err(
            |error| match error {
                JournalError::Sql { source, .. } => open_error(source),
                other => other,
            },
        )?;
        Ok(journal)
    }

    /// A journal that lives only as long as the process: for tests, and for simulated
    /// agents that never restart.
    pub fn in_memory() -> Result<Self, JournalError> {
        let connection = Connection::open_in_memory().map_err(sql("be created in memory"))?;
        Self::with_connection(connection, RETENTION, MAX_ENTRIES)
    }

    fn with_connection(
        connection: Connection,
        retention: Duration,
        max_entries: u64,
    ) -> Result<Self, JournalError> {
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous=FULL"))?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(sql("set its busy timeout"))?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sql("read its schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::Sql {
                action: "be read by this agent version (it was written by a newer one)",
                source: rusqlite::Error::InvalidQuery,
            });
        }
        connection
            .execute_batch(SCHEMA)
            .map_err(sql("create its table"))?;
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql("record its schema version"))?;
        let pruned = prune(&connection, now_unix_ms(), retention, max_entries)?;
        if pruned > 0 {
            tracing::info!(pruned, "pruned old operations from the journal");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                connection: Mutex::new(connection),
                finished_since_prune: AtomicU64::new(0),
                retention,
                max_entries,
            }),
        })
    }

    /// Runs `work` with the connection on the blocking thread pool.
    async fn with<R, F>(&self, work: F) -> Result<R, JournalError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, JournalError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-done SQLite statement
            // behind: every call below is one statement or one transaction.
            let connection = inner
                .connection
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&connection)
        })
        .await
        .map_err(JournalError::Worker)?
    }

    /// What the journal knows of `operation_id`, if anything.
    pub async fn lookup(&self, operation_id: &str) -> Result<Option<JournalEntry>, JournalError> {
        let operation_id = operation_id.to_owned();
        self.with(move |connection| {
            let row = connection
                .query_row(
                    "SELECT vm_id, kind, state, result FROM operations WHERE operation_id = ?1",
                    params![operation_id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, Option<Vec<u8>>>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql("look an operation up"))?;
            let Some((vm_id, stored_kind, state, result)) = row else {
                return Ok(None);
            };
            let kind = read_kind(&stored_kind).ok_or_else(|| JournalError::UnknownKind {
                operation_id: operation_id.clone(),
                kind: stored_kind,
            })?;
            match (state.as_str(), result) {
                ("done", Some(bytes)) => {
                    let result = CommandResult::decode(bytes.as_slice()).map_err(|source| {
                        JournalError::Decode {
                            operation_id: operation_id.clone(),
                            source,
                        }
                    })?;
                    Ok(Some(JournalEntry::Done {
                        vm_id,
                        kind,
                        result: Box::new(result),
                    }))
                }
                _ => Ok(Some(JournalEntry::Accepted { vm_id, kind })),
            }
        })
        .await
    }

    /// Records that `operation_id` was accepted and is about to be carried out. Durable when
    /// this returns. An operation already journaled keeps its record.
    pub async fn accept(
        &self,
        operation_id: &str,
        vm_id: &str,
        kind: OperationKind,
    ) -> Result<bool, JournalError> {
        let (operation_id, vm_id, kind) =
            (operation_id.to_owned(), vm_id.to_owned(), kind.as_str());
        self.with(move |connection| {
            let inserted = connection
                .execute(
                    "INSERT INTO operations (operation_id, vm_id, kind, state, accepted_at)
                     VALUES (?1, ?2, ?3, 'accepted', ?4)
                     ON CONFLICT (operation_id) DO NOTHING",
                    params![operation_id, vm_id, kind, now_unix_ms()],
                )
                .map_err(sql("record an accepted operation"))?;
            Ok(inserted == 1)
        })
        .await
    }

    /// Stores the result of `operation_id`; from now on it answers every repeat.
    pub async fn finish(
        &self,
        operation_id: &str,
        result: &CommandResult,
    ) -> Result<(), JournalError> {
        let operation_id = operation_id.to_owned();
        let bytes = result.encode_to_vec();
        let prune_now = self
            .inner
            .finished_since_prune
            .fetch_add(1, Ordering::Relaxed)
            + 1
            >= PRUNE_EVERY;
        let (retention, max_entries) = (self.inner.retention, self.inner.max_entries);
        if prune_now {
            self.inner.finished_since_prune.store(0, Ordering::Relaxed);
        }
        self.with(move |connection| {
            connection
                .execute(
                    "UPDATE operations SET state = 'done', result = ?2, finished_at = ?3
                     WHERE operation_id = ?1",
                    params![operation_id, bytes, now_unix_ms()],
                )
                .map_err(sql("record an operation's result"))?;
            if prune_now {
                let pruned = prune(connection, now_unix_ms(), retention, max_entries)?;
                tracing::debug!(pruned, "pruned old operations from the journal");
            }
            Ok(())
        })
        .await
    }

    /// Operations that the last run of the agent accepted and never finished, oldest first,
    /// marked `interrupted` so that a later start does not count them again (a repeat still
    /// resumes them). Only at start, before any command is accepted: later, `accepted`
    /// operations are simply running.
    pub async fn take_interrupted(&self) -> Result<Vec<InterruptedOperation>, JournalError> {
        self.with(|connection| {
            let action = "list interrupted operations";
            let transaction = connection.unchecked_transaction().map_err(sql(action))?;
            let interrupted = {
                let mut statement = transaction
                    .prepare(
                        "SELECT operation_id, vm_id, kind, accepted_at FROM operations
                         WHERE state = 'accepted' ORDER BY accepted_at, operation_id",
                    )
                    .map_err(sql(action))?;
                let rows = statement
                    .query_map([], |row| {
                        Ok(InterruptedOperation {
                            operation_id: row.get(0)?,
                            vm_id: row.get(1)?,
                            kind: row.get(2)?,
                            accepted_at_unix_ms: row.get(3)?,
                        })
                    })
                    .map_err(sql(action))?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sql(action))?
            };
            transaction
                .execute(
                    "UPDATE operations SET state = 'interrupted' WHERE state = 'accepted'",
                    [],
                )
                .map_err(sql("mark interrupted operations"))?;
            transaction
                .commit()
                .map_err(sql("mark interrupted operations"))?;
            Ok(interrupted)
        })
        .await
    }

    /// How many operations the journal remembers.
    #[cfg(test)]
    pub async fn entry_count(&self) -> u64 {
        self.with(|connection| {
            connection
                .query_row("SELECT COUNT(*) FROM operations", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|count| u64::try_from(count).unwrap_or_default())
                .map_err(sql("count operations"))
        })
        .await
        .unwrap()
    }
}

/// The kind of a stored row, also under the names older agents wrote.
fn read_kind(stored: &str) -> Option<OperationKind> {
    match stored {
        "create_snapshot" => Some(OperationKind::SnapshotCreate),
        "restore_snapshot" => Some(OperationKind::SnapshotRestore),
        "delete_snapshot" => Some(OperationKind::SnapshotDelete),
        other => other.parse().ok(),
    }
}

/// Forgets operations older than `retention`, then the oldest beyond `max_entries`.
/// Interrupted operations age out the same way: after a week no coordinator re-sends them.
fn prune(
    connection: &Connection,
    now_unix_ms: i64,
    retention: Duration,
    max_entries: u64,
) -> Result<usize, JournalError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_unix_ms.saturating_sub(retention_ms);
    let aged = connection
        .execute(
            "DELETE FROM operations WHERE COALESCE(finished_at, accepted_at) < ?1",
            params![cutoff],
        )
        .map_err(sql("prune old operations"))?;
    let keep = i64::try_from(max_entries).unwrap_or(i64::MAX);
    let surplus = connection
        .execute(
            "DELETE FROM operations WHERE operation_id IN (
                 SELECT operation_id FROM operations
                 ORDER BY accepted_at DESC, operation_id DESC LIMIT -1 OFFSET ?1)",
            params![keep],
        )
        .map_err(sql("prune surplus operations"))?;
    Ok(aged + surplus)
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use vmm_proto::{DomainReport, PowerState, command_result};

    use super::*;

    fn result(operation_id: &str) -> CommandResult {
        CommandResult {
            operation_id: operation_id.into(),
            outcome: Some(command_result::Outcome::Domain(DomainReport {
                vm_id: "vm".into(),
                state: PowerState::Running.into(),
                generation: 42,
                ..DomainReport::default()
            })),
            snapshot: None,
        }
    }

    #[tokio::test]
    async fn accepted_then_done_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.lookup("op-1").await.unwrap(), None);

        assert!(
            journal
                .accept("op-1", "vm-a", OperationKind::Create)
                .await
                .unwrap()
        );
        assert!(
            journal
                .accept("op-2", "vm-b", OperationKind::Stop)
                .await
                .unwrap()
        );
        journal.finish("op-1", &result("op-1")).await.unwrap();
        // Accepting again keeps the first record and its result, and says it was taken.
        assert!(
            !journal
                .accept("op-1", "vm-a", OperationKind::Create)
                .await
                .unwrap()
        );
        assert!(
            !journal
                .accept("op-1", "vm-z", OperationKind::Delete)
                .await
                .unwrap()
        );
        drop(journal);

        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(
            reopened.lookup("op-1").await.unwrap(),
            Some(JournalEntry::Done {
                vm_id: "vm-a".into(),
                kind: OperationKind::Create,
                result: Box::new(result("op-1")),
            })
        );
        assert_eq!(
            reopened.lookup("op-2").await.unwrap(),
            Some(JournalEntry::Accepted {
                vm_id: "vm-b".into(),
                kind: OperationKind::Stop
            })
        );
        let interrupted = reopened.take_interrupted().await.unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(interrupted[0].operation_id, "op-2");
        assert_eq!(interrupted[0].kind, "stop");
        drop(reopened);

        // Counted once: the next start finds nothing new, and a repeat still resumes it.
        let again = Journal::open(dir.path()).unwrap();
        assert!(again.take_interrupted().await.unwrap().is_empty());
        assert!(matches!(
            again.lookup("op-2").await.unwrap(),
            Some(JournalEntry::Accepted { .. })
        ));
    }

    #[tokio::test]
    async fn the_journal_stays_bounded() {
        let journal = Journal::in_memory().unwrap();
        for n in 0..30 {
            let op = format!("op-{n:02}");
            journal
                .accept(&op, "vm", OperationKind::Start)
                .await
                .unwrap();
            journal.finish(&op, &result(&op)).await.unwrap();
        }
        {
            let connection = journal.inner.connection.lock().unwrap();
            // Make op-00..op-04 look three weeks old.
            connection
                .execute(
                    "UPDATE operations SET accepted_at = accepted_at - ?1,
                                           finished_at = finished_at - ?1
                     WHERE operation_id < 'op-05'",
                    params![21_i64 * 24 * 60 * 60 * 1000],
                )
                .unwrap();
            let pruned = prune(&connection, now_unix_ms(), RETENTION, 20).unwrap();
            assert_eq!(pruned, 10, "5 too old, then 5 beyond the bound of 20");
        }
        assert_eq!(journal.entry_count().await, 20);
        assert_eq!(journal.lookup("op-09").await.unwrap(), None);
        assert!(journal.lookup("op-10").await.unwrap().is_some());
        assert!(journal.lookup("op-29").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_garbled_result_is_an_error_not_a_panic() {
        let journal = Journal::in_memory().unwrap();
        journal
            .accept("op-1", "vm", OperationKind::Start)
            .await
            .unwrap();
        {
            let connection = journal.inner.connection.lock().unwrap();
            connection
                .execute(
                    "UPDATE operations SET state = 'done', result = X'FFFFFFFF' WHERE operation_id = 'op-1'",
                    [],
                )
                .unwrap();
        }
        assert!(matches!(
            journal.lookup("op-1").await,
            Err(JournalError::Decode { .. })
        ));
    }

    #[tokio::test]
    async fn rows_of_older_agents_are_read_in_the_one_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        {
            let connection = journal.inner.connection.lock().unwrap();
            for (operation_id, kind) in [
                ("op-1", "create_snapshot"),
                ("op-2", "restore_snapshot"),
                ("op-3", "delete_snapshot"),
                ("op-4", "snapshot_create"),
                ("op-5", "unheard_of"),
            ] {
                connection
                    .execute(
                        "INSERT INTO operations (operation_id, vm_id, kind, state, accepted_at)
                         VALUES (?1, 'vm', ?2, 'accepted', 0)",
                        params![operation_id, kind],
                    )
                    .unwrap();
            }
        }
        for (operation_id, kind) in [
            ("op-1", OperationKind::SnapshotCreate),
            ("op-2", OperationKind::SnapshotRestore),
            ("op-3", OperationKind::SnapshotDelete),
            ("op-4", OperationKind::SnapshotCreate),
        ] {
            let entry = journal.lookup(operation_id).await.unwrap().unwrap();
            assert_eq!(entry.kind(), kind, "{operation_id}");
        }
        assert!(matches!(
            journal.lookup("op-5").await,
            Err(JournalError::UnknownKind { .. })
        ));
    }
}

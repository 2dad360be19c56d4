//! Group commit: many small writes of this process in one write transaction.
//!
//! A write made with [`group_write`] is a job queued at the database's write gate. Whoever's
//! turn comes at the gate takes every job queued so far (up to [`MAX_JOBS`]) and runs them
//! one after another in a single write transaction (see [`super::begin_write`]), each inside
//! its own savepoint, then commits once. Each job sees what the jobs before it wrote, under
//! the same lock, so a read-then-write (a placement claim) keeps exactly the isolation it
//! has in a transaction of its own; a job that fails is rolled back to its savepoint alone
//! and gets its error, the others commit. Nobody is told their write happened before the
//! commit did.
//!
//! Why: a write transaction costs its commit (on SQLite, every page it dirtied is written to
//! the WAL again; on PostgreSQL, a round trip and a turn at the advisory lock) more than its
//! statements when it is small. A reconnect storm is a thousand registrations and clean-ups
//! at once, and concurrent creates are tens of claims at once: grouped, the pages they share
//! (the hosts table, the VMs' indexes, the ledger) are written once per group.
//!
//! Each job is run by a task of its own at the gate, so a caller that goes away (a client
//! that hung up) never cancels a group, nor its own write once queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::{Db, DbConnection};

/// Most jobs one transaction takes; the rest wait for the next turn.
pub const MAX_JOBS: usize = 256;

/// A job as queued: runs inside the group's transaction and says whether it succeeded, with
/// what delivers its outcome once the group's fate (commit or not) is known.
type Job = Box<dyn for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Ran> + Send>;

/// Hands a job's outcome to its caller, told whether the group committed.
type Deliver = Box<dyn FnOnce(Result<(), &sqlx::Error>) + Send>;

/// What a job left to do after it ran.
struct Ran {
    succeeded: bool,
    deliver: Deliver,
}

/// The jobs waiting for a turn at a database's write gate, and how many groups committed.
#[derive(Default)]
pub(super) struct Queue {
    jobs: Mutex<Vec<Job>>,
    commits: AtomicU64,
}

/// How many groups of writes committed on `db` so far in this process.
#[cfg(test)]
fn group_commits(db: &Db) -> u64 {
    super::writers(db).queue.commits.load(Ordering::Relaxed)
}

/// Runs `job` inside a write transaction shared with the other writes queued at the same
/// time, and answers its result once that transaction committed (or the job's error, its
/// writes undone). The job must write only through the connection it is given: it runs
/// while this process's write gate is held, so waiting for the gate inside it would never
/// end.
pub async fn group_write<T, E, F>(db: &Db, job: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
    F: for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
{
    let (answer, answered) = oneshot::channel::<Result<T, E>>();
    let job: Job = Box::new(move |conn| {
        Box::pin(async move {
            let outcome = job(conn).await;
            Ran {
                succeeded: outcome.is_ok(),
                deliver: Box::new(move |committed| {
                    let outcome = match (outcome, committed) {
                        (Ok(_), Err(err)) => Err(E::from(group_failed(err))),
                        (outcome, _) => outcome,
                    };
                    let _ = answer.send(outcome);
                }),
            }
        })
    });
    let writers = super::writers(db);
    writers
        .queue
        .jobs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(job);
    let db = db.clone();
    // This job's turn at the gate. By then an earlier turn may have taken it along: the
    // turn then finds nothing to do.
    tokio::spawn(async move {
        let turn = Arc::clone(&writers.gate).lock_owned().await;
        let queue = &writers.queue;
        let jobs = {
            let mut queued = (queue.jobs.lock()).unwrap_or_else(std::sync::PoisonError::into_inner);
            let take = queued.len().min(MAX_JOBS);
            queued.drain(..take).collect::<Vec<_>>()
        };
        if !jobs.is_empty() && run_group(&db, jobs).await {
            queue.commits.fetch_add(1, Ordering::Relaxed);
        }
        drop(turn);
    });
    answered
        .await
        .unwrap_or_else(|_| Err(E::from(sqlx::Error::WorkerCrashed)))
}

/// Runs `jobs` in one write transaction, each in its savepoint, and delivers every outcome
/// after the commit. Returns whether it committed.
async fn run_group(db: &Db, jobs: Vec<Job>) -> bool {
    let mut ran = Vec::with_capacity(jobs.len());
    let committed = async {
        let mut tx = super::begin_transaction(db).await?;
        for job in jobs {
            sqlx::query("SAVEPOINT group_job").execute(&mut *tx).await?;
            let outcome = job(&mut tx).await;
            if !outcome.succeeded {
                sqlx::query("ROLLBACK TO SAVEPOINT group_job")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT group_job")
                .execute(&mut *tx)
                .await?;
            ran.push(outcome);
        }
        tx.commit().await?;
        crate::telemetry::record_group_commit(ran.len());
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(err) = &committed {
        tracing::error!(error = %err, jobs = ran.len(), "a group of writes failed; none of it was recorded");
    }
    for outcome in ran {
        (outcome.deliver)(committed.as_ref().map(|_| ()));
    }
    committed.is_ok()
}

fn group_failed(err: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(format!("the write could not be committed: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    /// A write of a row `name`, failing after it wrote when `fail` is set.
    async fn write(db: &Db, name: String, fail: bool) -> Result<String, sqlx::Error> {
        group_write(db, move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO group_commit_test (name) VALUES ($1)")
                    .bind(&name)
                    .execute(&mut *conn)
                    .await?;
                if fail {
                    // A statement that fails: a duplicate of the row just written.
                    sqlx::query("INSERT INTO group_commit_test (name) VALUES ($1)")
                        .bind(&name)
                        .execute(&mut *conn)
                        .await?;
                }
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM group_commit_test")
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(format!("{name} saw {count}"))
            })
        })
        .await
    }

    #[tokio::test]
    async fn concurrent_writes_share_transactions_and_a_failed_one_is_undone_alone() {
        let test = TestDb::new().await;
        let db = &test.db;
        sqlx::query("CREATE TABLE group_commit_test (name TEXT PRIMARY KEY)")
            .execute(db)
            .await
            .unwrap();
        let before = group_commits(db);
        // 200 writes at once, every tenth of which fails after writing.
        let outcomes =
            futures::future::join_all((0..200).map(|n| write(db, format!("w{n:03}"), n % 10 == 0)))
                .await;
        let mut seen = Vec::new();
        for (n, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(text) => {
                    assert!(n % 10 != 0, "write {n} should have failed: {text}");
                    let count: i64 = text.rsplit(' ').next().unwrap().parse().unwrap();
                    seen.push(count);
                }
                Err(err) => {
                    assert!(n % 10 == 0, "write {n} failed: {err}");
                    assert!(crate::db::is_unique_violation(err), "{err}");
                }
            }
        }
        // Every write saw each earlier successful write and nothing of a failed one: the
        // counts they saw are 1..=180, each once.
        seen.sort_unstable();
        assert_eq!(seen, (1..=180).collect::<Vec<i64>>());
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM group_commit_test ORDER BY name")
                .fetch_all(db)
                .await
                .unwrap();
        let expected: Vec<String> = (0..200)
            .filter(|n| n % 10 != 0)
            .map(|n| format!("w{n:03}"))
            .collect();
        assert_eq!(names, expected);
        // And they were grouped: fewer commits than writes.
        let commits = group_commits(db) - before;
        assert!(commits < 200, "{commits} commits for 200 writes");
    }
}

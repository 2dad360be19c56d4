//! Operation records in the database. Finishing is guarded by `status = 'pending'`: an
//! operation's outcome is recorded once, by whichever of its answer, its session's end or a
//! restart comes first.

use sqlx::{AnyConnection, AnyExecutor};
use vmm_shared::{HostId, OperationId, OperationKind, SnapshotId, UserId, VmId};

use super::{OperationRecord, OperationStatus};
use crate::db;
use crate::http::page::{Cursor, Page, Paged, push_keyset};

/// The columns of [`OperationRecord`], in a `SELECT`.
macro_rules! operation_columns {
    () => {
        "id, kind, vm_id, snapshot_id, host_id, user_id, status, error, created_at, finished_at"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("another operation on this VM is in progress; try again when it has finished")]
    Busy,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An operation about to start.
#[derive(Clone, Copy, Debug)]
pub struct NewOperation<'a> {
    pub id: OperationId,
    pub kind: OperationKind,
    pub vm: VmId,
    pub snapshot: Option<SnapshotId>,
    pub host: &'a HostId,
    pub user: UserId,
}

/// Records a pending operation, inside the caller's transaction; a second one in flight on
/// the same VM is refused with [`Error::Busy`].
pub async fn insert_pending(conn: &mut AnyConnection, new: &NewOperation<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO operations (id, kind, vm_id, snapshot_id, host_id, user_id, status, created_at,
                                 coordinator_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(new.id)
    .bind(new.kind)
    .bind(new.vm)
    .bind(new.snapshot)
    .bind(new.host)
    .bind(new.user)
    .bind(OperationStatus::Pending)
    .bind(db::now())
    .bind(crate::cluster::this_coordinator())
    .execute(conn)
    .await
    .map_err(|err| {
        if db::is_unique_violation(&err) {
            Error::Busy
        } else {
            err.into()
        }
    })?;
    Ok(())
}

pub async fn find<'e>(
    executor: impl AnyExecutor<'e>,
    id: OperationId,
) -> Result<Option<OperationRecord>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        operation_columns!(),
        " FROM operations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Which operations a list shows (every given filter applies).
#[derive(Clone, Debug, Default)]
pub struct OperationFilter {
    pub user: Option<UserId>,
    pub vm: Option<VmId>,
    pub status: Option<OperationStatus>,
    pub kind: Option<OperationKind>,
}

/// One page of the operations `filter` selects, oldest first.
pub async fn list(
    db: &crate::db::Db,
    filter: &OperationFilter,
    page: &Page,
) -> Result<Paged<OperationRecord>, sqlx::Error> {
    let mut query = crate::db::SqlBuilder::new(concat!(
        "SELECT ",
        operation_columns!(),
        " FROM operations WHERE 1 = 1"
    ));
    if let Some(user) = filter.user {
        query.push(" AND user_id = ").push_bind(user);
    }
    if let Some(vm) = filter.vm {
        query.push(" AND vm_id = ").push_bind(vm);
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    if let Some(kind) = filter.kind {
        query.push(" AND kind = ").push_bind(kind);
    }
    push_keyset(&mut query, page, "", true);
    let rows: Vec<OperationRecord> = query.build_query_as()?.fetch_all(db).await?;
    Ok(Paged::from_rows(rows, page, |operation| Cursor {
        created_at: operation.created_at.clone(),
        id: operation.id.to_string(),
    }))
}

/// Every pending operation, oldest first.
pub async fn pending<'e>(
    executor: impl AnyExecutor<'e>,
) -> Result<Vec<OperationRecord>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        operation_columns!(),
        " FROM operations WHERE status = 'pending' ORDER BY created_at, id"
    ))
    .fetch_all(executor)
    .await
}

/// Records the outcome of a pending operation (`Ok(())`: succeeded, `Err(reason)`: failed).
/// Returns false, changing nothing, when it is no longer pending.
pub async fn finish<'e>(
    executor: impl AnyExecutor<'e>,
    id: OperationId,
    outcome: Result<(), &str>,
) -> Result<bool, sqlx::Error> {
    let (status, error) = match outcome {
        Ok(()) => (OperationStatus::Succeeded, None),
        Err(reason) => (OperationStatus::Failed, Some(reason)),
    };
    let done = sqlx::query(
        "UPDATE operations SET status = $1, error = $2, finished_at = $3 WHERE id = $4 AND status = $5",
    )
    .bind(status)
    .bind(error)
    .bind(db::now())
    .bind(id)
    .bind(OperationStatus::Pending)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the VM's create was ever acknowledged by its host.
pub async fn create_acknowledged<'e>(
    executor: impl AnyExecutor<'e>,
    vm: VmId,
) -> Result<bool, sqlx::Error> {
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE vm_id = $1 AND kind = $2 AND status = $3",
    )
    .bind(vm)
    .bind(OperationKind::Create)
    .bind(OperationStatus::Succeeded)
    .fetch_one(executor)
    .await?;
    Ok(succeeded > 0)
}

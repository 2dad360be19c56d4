//! Snapshots in the database. Every status written here comes from `lifecycle`, through
//! `operations::runner` or a host's inventory.

use std::collections::HashMap;

use sqlx::{AnyConnection, AnyExecutor};
use vmm_shared::{HostId, OperationId, OperationKind, SnapshotId, UserId, VmId, VmStatus};

use super::{CapturedState, Snapshot, SnapshotStatus};
use crate::db::{self, Db};
use crate::http::page::{Cursor, Page, Paged, push_keyset};
use crate::idempotency::{self, IdempotentRequest};
use crate::lifecycle::{self, Refused};
use crate::operations::store::{self as operation_store, NewOperation};
use crate::quotas::{self, Claim, QuotaExceeded, QuotaLimits, store as quota_store};
use crate::vms::store::{self as vm_store, Recorded};

/// The columns of [`Snapshot`], in a `SELECT`.
macro_rules! snapshot_columns {
    () => {
        "id, vm_id, owner_id, name, description, vm_status, status, created_at"
    };
}

/// Why a snapshot could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this VM already has a snapshot named {0:?}")]
    NameTaken(String),
    #[error("no VM with ID {0}")]
    VmGone(VmId),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    QuotaExceeded(#[from] QuotaExceeded),
    #[error(transparent)]
    Operation(#[from] operation_store::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn find<'e>(
    executor: impl AnyExecutor<'e>,
    id: SnapshotId,
) -> Result<Option<Snapshot>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        snapshot_columns!(),
        " FROM snapshots WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// The VM's snapshots, oldest first.
pub async fn list_for_vm<'e>(
    executor: impl AnyExecutor<'e>,
    vm: VmId,
) -> Result<Vec<Snapshot>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        snapshot_columns!(),
        " FROM snapshots WHERE vm_id = $1 ORDER BY created_at, id"
    ))
    .bind(vm)
    .fetch_all(executor)
    .await
}

/// One page of the VM's snapshots (of `status`, if given), oldest first.
pub async fn list_page(
    db: &Db,
    vm: VmId,
    status: Option<SnapshotStatus>,
    page: &Page,
) -> Result<Paged<Snapshot>, sqlx::Error> {
    let mut query = crate::db::SqlBuilder::new(concat!(
        "SELECT ",
        snapshot_columns!(),
        " FROM snapshots WHERE vm_id = "
    ));
    query.push_bind(vm);
    if let Some(status) = status {
        query.push(" AND status = ").push_bind(status);
    }
    push_keyset(&mut query, page, "", true);
    let rows: Vec<Snapshot> = query.build_query_as()?.fetch_all(db).await?;
    Ok(Paged::from_rows(rows, page, |snapshot| Cursor {
        created_at: snapshot.created_at.clone(),
        id: snapshot.id.to_string(),
    }))
}

/// What a user asked to snapshot.
#[derive(Clone, Debug)]
pub struct NewSnapshot {
    pub id: SnapshotId,
    pub name: String,
    pub description: String,
}

/// Checks that the VM may be snapshotted now, claims its owner's snapshot quota and records
/// the snapshot (as its create starts it) and its operation, in one write transaction. A
/// second operation in flight on the VM, or a name already used on the VM, answers 409 and
/// records nothing.
pub async fn record_new(
    db: &Db,
    vm: VmId,
    new: &NewSnapshot,
    operation: OperationId,
    user: UserId,
    default_quota: &QuotaLimits,
    idempotency: Option<&IdempotentRequest>,
) -> Result<Recorded<Snapshot>, Error> {
    let mut tx = db::begin_write(db).await?;
    if idempotency::is_repeat(&mut tx, idempotency).await? {
        return Ok(Recorded::Repeat);
    }
    let vm = vm_store::find(&mut *tx, vm)
        .await?
        .ok_or(Error::VmGone(vm))?;
    lifecycle::check(OperationKind::SnapshotCreate, vm.status, None)?;
    let limits = quota_store::limits(&mut *tx, vm.owner_id, default_quota).await?;
    let usage = quota_store::usage(&mut *tx, vm.owner_id).await?;
    quotas::check_claim(
        &limits,
        &usage,
        &Claim {
            snapshots: 1,
            ..Claim::default()
        },
    )
    .inspect_err(|exceeded| crate::telemetry::record_quota_rejection(exceeded.resource))?;

    let snapshot = Snapshot {
        id: new.id,
        vm_id: vm.id,
        owner_id: vm.owner_id,
        name: new.name.clone(),
        description: new.description.clone(),
        // What the VM is now is what the snapshot will capture; the host's answer says for
        // certain.
        vm_status: if vm.status == VmStatus::Running {
            CapturedState::Running
        } else {
            CapturedState::Stopped
        },
        status: lifecycle::SNAPSHOT_CREATED_AS,
        created_at: db::now(),
    };
    let inserted = sqlx::query(
        "INSERT INTO snapshots (id, vm_id, owner_id, name, description, vm_status, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(snapshot.id)
    .bind(snapshot.vm_id)
    .bind(snapshot.owner_id)
    .bind(&snapshot.name)
    .bind(&snapshot.description)
    .bind(snapshot.vm_status)
    .bind(snapshot.status)
    .bind(&snapshot.created_at)
    .execute(&mut *tx)
    .await;
    if let Err(err) = inserted {
        return Err(if db::is_unique_violation(&err) {
            Error::NameTaken(snapshot.name)
        } else {
            err.into()
        });
    }
    crate::ledger::charge_snapshot(&mut tx, snapshot.owner_id).await?;
    operation_store::insert_pending(
        &mut tx,
        &NewOperation {
            id: operation,
            kind: OperationKind::SnapshotCreate,
            vm: vm.id,
            snapshot: Some(snapshot.id),
            host: &vm.host_id,
            user,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Recorded::New(snapshot))
}

pub async fn set_status<'e>(
    executor: impl AnyExecutor<'e>,
    id: SnapshotId,
    status: SnapshotStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET status = $1 WHERE id = $2")
        .bind(status)
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}

/// The host made the snapshot: it is ready, and (when the host says) captured `captured`.
pub async fn mark_ready<'e>(
    executor: impl AnyExecutor<'e>,
    id: SnapshotId,
    captured: Option<CapturedState>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE snapshots SET status = $1, vm_status = COALESCE($2, vm_status) WHERE id = $3",
    )
    .bind(SnapshotStatus::Ready)
    .bind(captured)
    .bind(id)
    .execute(executor)
    .await?;
    Ok(())
}

/// Removes the snapshot's record, which releases its quota (see `ledger`). Inside the
/// caller's transaction.
pub async fn delete(conn: &mut AnyConnection, id: SnapshotId) -> Result<(), sqlx::Error> {
    crate::ledger::delete_snapshot(conn, id).await?;
    Ok(())
}

/// Snapshots left `creating` or `deleting` by an operation that no longer exists (written
/// by an older version) are `error` until their host's inventory settles them.
pub async fn mark_orphaned_operations(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE snapshots SET status = $1 WHERE status IN ($2, $3)
           AND NOT EXISTS (SELECT 1 FROM operations o
                           WHERE o.snapshot_id = snapshots.id AND o.status = 'pending')",
    )
    .bind(SnapshotStatus::Error)
    .bind(SnapshotStatus::Creating)
    .bind(SnapshotStatus::Deleting)
    .execute(conn)
    .await?;
    Ok(())
}

/// The snapshots of every VM recorded on `host`, by VM.
pub async fn list_on_host<'e>(
    executor: impl AnyExecutor<'e>,
    host: &HostId,
) -> Result<HashMap<VmId, Vec<Snapshot>>, sqlx::Error> {
    let rows: Vec<Snapshot> = sqlx::query_as(
        "SELECT s.id, s.vm_id, s.owner_id, s.name, s.description, s.vm_status, s.status, s.created_at
         FROM snapshots s JOIN vms v ON v.id = s.vm_id WHERE v.host_id = $1
         ORDER BY s.created_at, s.id",
    )
    .bind(host)
    .fetch_all(executor)
    .await?;
    let mut by_vm: HashMap<VmId, Vec<Snapshot>> = HashMap::new();
    for snapshot in rows {
        by_vm.entry(snapshot.vm_id).or_default().push(snapshot);
    }
    Ok(by_vm)
}

/// Settles the VM's snapshot records (`recorded`, as read in the caller's transaction)
/// against the snapshots its host reports, as the lifecycle says
/// ([`lifecycle::snapshot_after_inventory`]).
pub async fn reconcile(
    conn: &mut AnyConnection,
    vm: VmId,
    recorded: Vec<Snapshot>,
    present: &[SnapshotId],
) -> Result<(), sqlx::Error> {
    for snapshot in recorded {
        let on_host = present.contains(&snapshot.id);
        if let Some(status) = lifecycle::snapshot_after_inventory(snapshot.status, on_host) {
            tracing::info!(vm_id = %vm, snapshot_id = %snapshot.id, on_host, %status, "snapshot settled by its host's inventory");
            set_status(&mut *conn, snapshot.id, status).await?;
        }
    }
    Ok(())
}

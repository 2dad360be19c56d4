//! Snapshots in the database.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use vmm_shared::{OperationId, OperationKind, SnapshotId, UserId, VmId};

use super::{Snapshot, SnapshotStatus};
use crate::db::{self, Db, decode};
use crate::error::ApiError;
use crate::idempotency::{self, IdempotentRequest};
use crate::operations;
use crate::quotas::{self, Claim, QuotaLimits, store as quota_store};
use crate::vms::Vm;
use crate::vms::store::Recorded;

fn from_row(row: &SqliteRow) -> Result<Snapshot, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let vm_id: String = row.try_get("vm_id")?;
    let owner_id: String = row.try_get("owner_id")?;
    let status: String = row.try_get("status")?;
    Ok(Snapshot {
        id: decode(id.parse())?,
        vm_id: decode(vm_id.parse())?,
        owner_id: decode(owner_id.parse())?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        vm_status: row.try_get("vm_status")?,
        status: SnapshotStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("bad snapshot status {status:?}").into()))?,
        created_at: row.try_get("created_at")?,
    })
}

pub async fn find(db: &Db, id: SnapshotId) -> Result<Option<Snapshot>, sqlx::Error> {
    sqlx::query("SELECT * FROM snapshots WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The VM's snapshots, oldest first.
pub async fn list_for_vm(db: &Db, vm: VmId) -> Result<Vec<Snapshot>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM snapshots WHERE vm_id = ? ORDER BY created_at, rowid")
        .bind(vm.to_string())
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// What a user asked to snapshot.
#[derive(Clone, Debug)]
pub struct NewSnapshot {
    pub id: SnapshotId,
    pub name: String,
    pub description: String,
    /// The VM's state now, which the snapshot will capture.
    pub vm_status: &'static str,
}

/// Claims the VM owner's snapshot quota and records the snapshot (`creating`) and its
/// operation, in one write transaction. A second operation in flight on the VM, or a name
/// already used on the VM, answers 409 and records nothing.
pub async fn record_new(
    db: &Db,
    vm: &Vm,
    new: &NewSnapshot,
    operation: OperationId,
    user: UserId,
    default_quota: &QuotaLimits,
    idempotency: Option<&IdempotentRequest>,
) -> Result<Recorded<Snapshot>, ApiError> {
    let mut tx = db::begin_write(db).await?;
    if idempotency::is_repeat(&mut tx, idempotency).await? {
        return Ok(Recorded::Repeat);
    }
    let limits = quota_store::limits(&mut tx, vm.owner_id, default_quota).await?;
    let usage = quota_store::usage(&mut tx, vm.owner_id).await?;
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
        vm_status: new.vm_status.to_owned(),
        status: SnapshotStatus::Creating,
        created_at: db::now(),
    };
    let inserted = sqlx::query(
        "INSERT INTO snapshots (id, vm_id, owner_id, name, description, vm_status, status, created_at)
         VALUES (?, ?, ?, ?, ?, ?, 'creating', ?)",
    )
    .bind(snapshot.id.to_string())
    .bind(snapshot.vm_id.to_string())
    .bind(snapshot.owner_id.to_string())
    .bind(&snapshot.name)
    .bind(&snapshot.description)
    .bind(&snapshot.vm_status)
    .bind(&snapshot.created_at)
    .execute(&mut *tx)
    .await;
    if let Err(err) = inserted {
        return Err(if db::is_unique_violation(&err) {
            ApiError::Conflict(format!(
                "this VM already has a snapshot named {:?}",
                snapshot.name
            ))
        } else {
            err.into()
        });
    }
    operations::insert_pending(
        &mut tx,
        operation,
        OperationKind::SnapshotCreate,
        vm.id,
        &vm.host_id,
        user,
    )
    .await?;
    tx.commit().await?;
    Ok(Recorded::New(snapshot))
}

/// Starts deleting a snapshot: in one write transaction, moves it from `ready` or `error`
/// to `deleting` and records the pending operation on its VM. A snapshot that is gone
/// answers 404, one being made or deleted 409, as does another operation on the VM.
pub async fn begin_delete(
    db: &Db,
    vm: &Vm,
    snapshot: SnapshotId,
    operation: OperationId,
    user: UserId,
) -> Result<(), ApiError> {
    let mut tx = db::begin_write(db).await?;
    let moved = sqlx::query(
        "UPDATE snapshots SET status = 'deleting' WHERE id = ? AND status IN ('ready', 'error')",
    )
    .bind(snapshot.to_string())
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM snapshots WHERE id = ?")
                .bind(snapshot.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match status {
            None => ApiError::NotFound(format!("no snapshot with ID {snapshot}")),
            Some(status) => {
                ApiError::Conflict(format!("cannot delete the snapshot: it is {status}"))
            }
        });
    }
    operations::insert_pending(
        &mut tx,
        operation,
        OperationKind::SnapshotDelete,
        vm.id,
        &vm.host_id,
        user,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn set_status(
    db: &Db,
    id: SnapshotId,
    status: SnapshotStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET status = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// The host made the snapshot: it is ready, and the host says what state it captured.
pub async fn mark_ready(db: &Db, id: SnapshotId, vm_status: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET status = 'ready', vm_status = ? WHERE id = ?")
        .bind(vm_status)
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

pub async fn delete(db: &Db, id: SnapshotId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM snapshots WHERE id = ?")
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Settles the VM's snapshot records against the snapshots its host reports: a `ready`
/// snapshot the host no longer has is marked `error` (its owner can delete the record); an
/// `error` snapshot the host does have (its operation was cut off, but it was made) is
/// `ready`. Snapshots with an operation in flight are left to it.
pub async fn reconcile(db: &Db, vm: VmId, present: &[SnapshotId]) -> Result<(), sqlx::Error> {
    for snapshot in list_for_vm(db, vm).await? {
        let on_host = present.contains(&snapshot.id);
        match snapshot.status {
            SnapshotStatus::Ready if !on_host => {
                tracing::warn!(vm_id = %vm, snapshot_id = %snapshot.id, "snapshot missing on its host");
                set_status(db, snapshot.id, SnapshotStatus::Error).await?;
            }
            SnapshotStatus::Error if on_host => {
                tracing::info!(vm_id = %vm, snapshot_id = %snapshot.id, "snapshot found on its host; ready");
                set_status(db, snapshot.id, SnapshotStatus::Ready).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

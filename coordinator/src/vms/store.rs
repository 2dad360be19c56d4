//! VMs in the database.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use vmm_shared::{HostId, OperationId, OperationKind, UserId, VmId, VmSize, VmStatus};

use super::Vm;
use crate::config::Placement;
use crate::db::{self, Db, decode};
use crate::error::ApiError;
use crate::hosts::{scheduler, store as host_store};
use crate::idempotency::{self, IdempotentRequest};
use crate::operations;
use crate::quotas::{self, Claim, QuotaLimits, store as quota_store};

fn from_row(row: &SqliteRow) -> Result<Vm, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let owner_id: String = row.try_get("owner_id")?;
    let host_id: String = row.try_get("host_id")?;
    let status: String = row.try_get("status")?;
    Ok(Vm {
        id: decode(id.parse())?,
        owner_id: decode(owner_id.parse())?,
        name: row.try_get("name")?,
        host_id: decode(host_id.parse())?,
        cpu: row.try_get::<i64, _>("cpu")? as u32,
        memory_mib: row.try_get::<i64, _>("memory_mib")? as u64,
        disk_gb: row.try_get::<i64, _>("disk_gb")? as u64,
        status: decode(status.parse::<VmStatus>())?,
        status_reason: row.try_get("status_reason")?,
        generation: row.try_get::<i64, _>("generation")? as u64,
        created_at: row.try_get("created_at")?,
    })
}

pub async fn find(db: &Db, id: VmId) -> Result<Option<Vm>, sqlx::Error> {
    sqlx::query("SELECT * FROM vms WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// VMs owned by `owner`, or every VM when `owner` is `None`; oldest first.
pub async fn list(db: &Db, owner: Option<UserId>) -> Result<Vec<Vm>, sqlx::Error> {
    let rows = match owner {
        Some(owner) => {
            sqlx::query("SELECT * FROM vms WHERE owner_id = ? ORDER BY created_at, id")
                .bind(owner.to_string())
                .fetch_all(db)
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM vms ORDER BY created_at, id")
                .fetch_all(db)
                .await?
        }
    };
    rows.iter().map(from_row).collect()
}

pub async fn list_on_host(db: &Db, host: &HostId) -> Result<Vec<Vm>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM vms WHERE host_id = ?")
        .bind(host.as_str())
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// What recording a create came to.
#[derive(Debug)]
pub enum Recorded<T> {
    /// Recorded now; the caller carries the create out.
    New(T),
    /// An earlier request with the same idempotency key recorded it; the caller answers
    /// with that request's answer.
    Repeat,
}

/// What a user asked to create.
#[derive(Clone, Debug)]
pub struct NewVm {
    pub id: VmId,
    pub owner_id: UserId,
    pub name: String,
    pub size: VmSize,
}

/// Checks the owner's quota, chooses a host and records the VM (`creating`) and its create
/// operation, all in one write transaction: the quota and capacity reads and the insert
/// cannot interleave with another create.
pub async fn place_and_record(
    db: &Db,
    new: &NewVm,
    operation: OperationId,
    placement: Placement,
    cpu_allocation_ratio: f64,
    default_quota: &QuotaLimits,
    idempotency: Option<&IdempotentRequest>,
) -> Result<Recorded<Vm>, ApiError> {
    let mut tx = db::begin_write(db).await?;
    if idempotency::is_repeat(&mut tx, idempotency).await? {
        return Ok(Recorded::Repeat);
    }
    let limits = quota_store::limits(&mut tx, new.owner_id, default_quota).await?;
    let usage = quota_store::usage(&mut tx, new.owner_id).await?;
    let claim = Claim {
        vms: 1,
        cpu: u64::from(new.size.cpu),
        memory: new.size.memory_mib,
        disk_gb: new.size.disk_gb,
        snapshots: 0,
    };
    quotas::check_claim(&limits, &usage, &claim)
        .inspect_err(|exceeded| crate::telemetry::record_quota_rejection(exceeded.resource))?;
    let loads = host_store::connected_loads(&mut tx).await?;
    if loads.is_empty() {
        return Err(ApiError::Unavailable(
            "no hypervisor host is connected; the VM cannot be placed anywhere".into(),
        ));
    }
    let host = scheduler::choose_host(&loads, &new.size, placement, cpu_allocation_ratio)
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "no connected host has room for {} vCPUs, {} MiB of memory and {} GB of disk",
                new.size.cpu, new.size.memory_mib, new.size.disk_gb
            ))
        })?;
    let vm = Vm {
        id: new.id,
        owner_id: new.owner_id,
        name: new.name.clone(),
        host_id: host.id.clone(),
        cpu: new.size.cpu,
        memory_mib: new.size.memory_mib,
        disk_gb: new.size.disk_gb,
        status: VmStatus::Creating,
        status_reason: None,
        generation: 0,
        created_at: db::now(),
    };
    let inserted = sqlx::query(
        "INSERT INTO vms (id, owner_id, name, host_id, cpu, memory_mib, disk_gb, status, generation, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', 0, ?)",
    )
    .bind(vm.id.to_string())
    .bind(vm.owner_id.to_string())
    .bind(&vm.name)
    .bind(vm.host_id.as_str())
    .bind(i64::from(vm.cpu))
    .bind(vm.memory_mib as i64)
    .bind(vm.disk_gb as i64)
    .bind(&vm.created_at)
    .execute(&mut *tx)
    .await;
    if let Err(err) = inserted {
        return Err(if db::is_unique_violation(&err) {
            ApiError::Conflict(format!("you already have a VM named {:?}", vm.name))
        } else {
            err.into()
        });
    }
    operations::insert_pending(
        &mut tx,
        operation,
        OperationKind::Create,
        vm.id,
        &vm.host_id,
        new.owner_id,
    )
    .await?;
    tx.commit().await?;
    Ok(Recorded::New(vm))
}

/// Starts `kind` on an existing VM: records the pending operation (refused with 409 when
/// another one is in flight) and, when given, moves the VM to `new_status`.
pub async fn begin_operation(
    db: &Db,
    vm: &Vm,
    operation: OperationId,
    kind: OperationKind,
    user: UserId,
    new_status: Option<VmStatus>,
) -> Result<(), ApiError> {
    let mut tx = db::begin_write(db).await?;
    operations::insert_pending(&mut tx, operation, kind, vm.id, &vm.host_id, user).await?;
    if let Some(status) = new_status {
        set_status(&mut *tx, vm.id, status, None).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn set_status<'e, E>(
    executor: E,
    id: VmId,
    status: VmStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query("UPDATE vms SET status = ?, status_reason = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(reason)
        .bind(id.to_string())
        .execute(executor)
        .await?;
    Ok(())
}

pub async fn delete(db: &Db, id: VmId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM vms WHERE id = ?")
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Operations that were in flight when the coordinator stopped can no longer be answered:
/// they are failed, and VMs and snapshots left `creating` or `deleting` are marked `error`
/// until their host's next inventory settles them.
pub async fn settle_after_restart(db: &Db) -> Result<(), sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    let failed = operations::fail_all_pending(
        &mut tx,
        "the coordinator restarted before the host answered",
    )
    .await?;
    sqlx::query(
        "UPDATE vms SET status = 'error',
                status_reason = 'the coordinator restarted during an operation; waiting for the host to report'
         WHERE status IN ('creating', 'deleting')",
    )
    .execute(&mut *tx)
    .await?;
    // Snapshots whose operation was cut off likewise wait for their host's inventory.
    sqlx::query("UPDATE snapshots SET status = 'error' WHERE status IN ('creating', 'deleting')")
        .execute(&mut *tx)
        .await?;
    // A create cut off before it answered can never answer its key's repeats. Its record
    // stays and is settled by its host; a repeat is told so at once, instead of waiting for
    // an answer that will not come, and never creates a second one.
    let interrupted = ApiError::Unavailable(
        "the first request with this Idempotency-Key was interrupted by a coordinator restart; \
         see GET /api/vms for what it created"
            .into(),
    );
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = ?, response_body = ? WHERE response_status IS NULL",
    )
    .bind(i64::from(interrupted.status().as_u16()))
    .bind(interrupted.body().to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if failed > 0 {
        tracing::warn!(
            failed,
            "failed the operations left pending by the previous run"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{SMALL_VM, TestDb};

    const UNLIMITED: QuotaLimits = QuotaLimits {
        max_vms: u64::MAX,
        max_cpu: u64::MAX,
        max_memory: u64::MAX,
        max_disk_gb: u64::MAX,
        max_snapshots: u64::MAX,
    };

    /// Twenty concurrent creates against a host with room for exactly five: placement and
    /// record happen in one write transaction, so exactly five are admitted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_overfill_a_host() {
        let t = TestDb::with_host_memory(5 * SMALL_VM.memory_mib).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let db = t.db.clone();
            let new = NewVm {
                id: VmId::new_random(),
                owner_id: t.user,
                name: format!("vm-{i}"),
                size: SMALL_VM,
            };
            tasks.push(tokio::spawn(async move {
                place_and_record(
                    &db,
                    &new,
                    OperationId::new_random(),
                    Placement::Spread,
                    4.0,
                    &UNLIMITED,
                    None,
                )
                .await
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(ApiError::Unavailable(message)) => {
                    assert!(message.contains("room"), "{message}")
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(admitted, 5);
        assert_eq!(t.count_vms().await, 5);
    }

    /// Fifty concurrent creates by one user with a limit of ten VMs: exactly ten are
    /// admitted and every refusal names the resource, usage and limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_exceed_a_quota() {
        let t = TestDb::new().await;
        let quota = QuotaLimits {
            max_vms: 10,
            ..UNLIMITED
        };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let db = t.db.clone();
            let new = NewVm {
                id: VmId::new_random(),
                owner_id: t.user,
                name: format!("vm-{i}"),
                size: SMALL_VM,
            };
            tasks.push(tokio::spawn(async move {
                place_and_record(
                    &db,
                    &new,
                    OperationId::new_random(),
                    Placement::Spread,
                    4.0,
                    &quota,
                    None,
                )
                .await
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(ApiError::QuotaExceeded(exceeded)) => {
                    assert_eq!(
                        (
                            exceeded.resource,
                            exceeded.current,
                            exceeded.limit,
                            exceeded.requested
                        ),
                        ("vms", 10, 10, 1)
                    );
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(admitted, 10);
        assert_eq!(t.count_vms().await, 10);
    }

    #[tokio::test]
    async fn one_operation_per_vm_at_a_time() {
        let t = TestDb::new().await;
        let id = t.vm_with_status(VmStatus::Running, 1).await;
        let vm = find(&t.db, id).await.unwrap().unwrap();
        begin_operation(
            &t.db,
            &vm,
            OperationId::new_random(),
            OperationKind::Stop,
            t.user,
            None,
        )
        .await
        .unwrap();
        let second = begin_operation(
            &t.db,
            &vm,
            OperationId::new_random(),
            OperationKind::Reboot,
            t.user,
            None,
        )
        .await;
        assert!(matches!(second, Err(ApiError::Conflict(_))), "{second:?}");
    }

    /// Twenty concurrent creates with one idempotency key: one records, nineteen repeat.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_idempotency_key_records_once() {
        let t = TestDb::new().await;
        let request = IdempotentRequest {
            user: t.user,
            key: "retry-1".into(),
            fingerprint: "POST /api/vms {}".into(),
        };
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (db, request) = (t.db.clone(), request.clone());
            let new = NewVm {
                id: VmId::new_random(),
                owner_id: t.user,
                name: "once".into(),
                size: SMALL_VM,
            };
            tasks.push(tokio::spawn(async move {
                let op = OperationId::new_random();
                place_and_record(
                    &db,
                    &new,
                    op,
                    Placement::Spread,
                    4.0,
                    &UNLIMITED,
                    Some(&request),
                )
                .await
            }));
        }
        let mut new = 0;
        for task in tasks {
            if let Recorded::New(_) = task.await.unwrap().unwrap() {
                new += 1;
            }
        }
        assert_eq!(new, 1);
        assert_eq!(t.count_vms().await, 1);
    }

    #[tokio::test]
    async fn a_users_vm_names_are_unique() {
        let t = TestDb::new().await;
        let new = NewVm {
            id: VmId::new_random(),
            owner_id: t.user,
            name: "web".into(),
            size: SMALL_VM,
        };
        place_and_record(
            &t.db,
            &new,
            OperationId::new_random(),
            Placement::Spread,
            4.0,
            &UNLIMITED,
            None,
        )
        .await
        .unwrap();
        let again = NewVm {
            id: VmId::new_random(),
            ..new
        };
        let err = place_and_record(
            &t.db,
            &again,
            OperationId::new_random(),
            Placement::Spread,
            4.0,
            &UNLIMITED,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    }
}
